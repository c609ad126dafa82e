"""Message <-> numpy conversions (Image, CompressedImage, CameraInfo, PointCloud2, transforms)
without cv_bridge. Images live in ``images.py`` and are re-exported here.

cv_bridge and sensor_msgs_py are not installable from PyPI, so these are plain numpy. Functions
take and return rclpy message objects but only touch their plain fields, so they also accept the
``rosbags`` message classes (used when recording bags) as long as the field names match.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..core.camera import Intrinsics
from .images import (  # noqa: F401  (re-exported: the node and tests import them from here)
    COLOR_ENCODINGS, DEPTH_ENCODINGS, ConversionError, _as_uint8, _set_bytes,
    compressed_to_depth, compressed_to_rgb, depth_to_compressed_depth, depth_to_image,
    image_to_depth, image_to_rgb, rgb_to_compressed, rgb_to_image)

if TYPE_CHECKING:
    from scipy.spatial.transform import Rotation
# scipy.spatial is imported where it is used: it takes ~1 s, which would double the node's
# start-up (ros/inputs.py loads it in the background once the node is up).


# -- camera info -----------------------------------------------------------------------------------
def camera_info_to_intrinsics(msg, width: int | None = None, height: int | None = None
                              ) -> Intrinsics:
    """CameraInfo -> Intrinsics, rescaled to ``width`` x ``height`` when an image of another size
    uses it (e.g. a depth image at half the colour resolution, or binning)."""
    try:
        K = np.asarray(msg.k, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ConversionError(f"CameraInfo k is not numeric ({exc})") from None
    if K.size != 9:
        raise ConversionError(f"CameraInfo k has {K.size} values, expected 9")
    K = K.reshape(3, 3)
    if not np.all(np.isfinite(K)) or K[0, 0] <= 0 or K[1, 1] <= 0:
        raise ConversionError(f"CameraInfo has no valid K matrix (k = {list(np.ravel(K))})")
    w, h = int(msg.width), int(msg.height)
    bx, by = int(getattr(msg, "binning_x", 0) or 0), int(getattr(msg, "binning_y", 0) or 0)
    if w <= 0 or h <= 0:
        if width is None or height is None:
            raise ConversionError("CameraInfo has no image size and none was given")
        w, h = int(width), int(height)
    if (bx > 1 and w // bx == 0) or (by > 1 and h // by == 0):
        raise ConversionError(f"CameraInfo binning {bx}x{by} leaves no pixels of {w}x{h}")
    if width is not None and height is not None and (int(width) <= 0 or int(height) <= 0):
        raise ConversionError(f"image size {width}x{height} has no pixels")
    try:
        with np.errstate(over="ignore", invalid="ignore"):
            intr = Intrinsics(K, w, h)
            if bx > 1 or by > 1:
                intr = intr.scaled(w // max(bx, 1), h // max(by, 1))
            if width is not None and height is not None and \
                    (intr.width, intr.height) != (width, height):
                intr = intr.scaled(int(width), int(height))
    except ValueError as exc:   # e.g. rescaling overflows a huge K to inf
        raise ConversionError(f"CameraInfo: {exc}") from None
    return intr


def intrinsics_to_camera_info(intr: Intrinsics, msg=None):
    """Intrinsics -> CameraInfo (plumb_bob with zero distortion, identity R, P = [K | 0])."""
    if msg is None:
        from sensor_msgs.msg import CameraInfo
        msg = CameraInfo()
    K = np.asarray(intr.K, dtype=np.float64)
    msg.width, msg.height = int(intr.width), int(intr.height)
    msg.distortion_model = "plumb_bob"
    P = np.zeros((3, 4))
    P[:3, :3] = K
    _set_floats(msg, "d", np.zeros(5))
    _set_floats(msg, "k", K.ravel())
    _set_floats(msg, "r", np.eye(3).ravel())
    _set_floats(msg, "p", P.ravel())
    return msg


def _set_floats(msg, field: str, values: np.ndarray) -> None:
    current = getattr(msg, field)
    if isinstance(current, np.ndarray):
        setattr(msg, field, np.asarray(values, dtype=np.float64))
    else:
        setattr(msg, field, [float(v) for v in np.ravel(values)])


# -- point clouds ----------------------------------------------------------------------------------
# sensor_msgs/PointField datatypes
_PF_DTYPES = {1: np.int8, 2: np.uint8, 3: np.int16, 4: np.uint16, 5: np.int32, 6: np.uint32,
              7: np.float32, 8: np.float64}
FLOAT32 = 7
UINT8 = 2


def _field_dtype(msg) -> np.dtype:
    names, formats, offsets = [], [], []
    endian = ">" if msg.is_bigendian else "<"
    step = int(msg.point_step)
    for f in msg.fields:
        if f.datatype not in _PF_DTYPES:
            raise ConversionError(f"PointCloud2 field '{f.name}' has unknown datatype {f.datatype}")
        if f.name in names:
            raise ConversionError(f"PointCloud2 field '{f.name}' appears twice")
        base = np.dtype(_PF_DTYPES[f.datatype]).newbyteorder(endian)
        count = int(f.count) if f.count else 1
        if int(f.offset) + base.itemsize * count > step:
            raise ConversionError(f"PointCloud2 field '{f.name}' (offset {f.offset}, {count} x "
                                  f"{base.itemsize} bytes) does not fit in point_step {step}")
        names.append(f.name)
        formats.append(base if count == 1 else (base, (count,)))
        offsets.append(int(f.offset))
    return np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": step})


def cloud_to_arrays(msg) -> tuple[np.ndarray, np.ndarray | None]:
    """PointCloud2 -> points (N, 3) float32 and colours (N, 3) uint8 or None.

    Colour comes from a packed ``rgb``/``rgba`` field (float32 or uint32 holding 0x00RRGGBB) or
    from separate ``r``/``g``/``b`` fields. Points with non-finite coordinates are dropped (the
    remaining points keep their order). ``data`` must hold exactly ``row_step * height`` bytes.
    """
    fields = {f.name: f for f in msg.fields}
    for axis in "xyz":
        if axis not in fields:
            raise ConversionError(f"PointCloud2 has no '{axis}' field (fields: {list(fields)})")
    for name in ("x", "y", "z", "rgb", "rgba", "r", "g", "b"):
        if name in fields and int(fields[name].count or 1) != 1:
            raise ConversionError(f"PointCloud2 field '{name}' has count {fields[name].count}, "
                                  "expected 1")
    width, height, step = int(msg.width), int(msg.height), int(msg.point_step)
    if width < 0 or height < 0:
        raise ConversionError(f"PointCloud2 size {width}x{height} is negative")
    n = width * height
    buf = _as_uint8(msg.data)
    if n == 0:
        return np.zeros((0, 3), np.float32), None
    if step <= 0:
        raise ConversionError(f"PointCloud2 point_step is {step}")
    dtype = _field_dtype(msg)
    row_step = int(msg.row_step) or step * width
    if row_step < step * width:
        raise ConversionError(f"PointCloud2 row_step {row_step} is smaller than point_step x "
                              f"width = {step * width}")
    if buf.size != row_step * height:
        raise ConversionError(f"PointCloud2 data holds {buf.size} bytes, expected row_step x "
                              f"height = {row_step} x {height} = {row_step * height}")
    rows = buf.reshape(height, row_step)[:, :step * width]
    rec = np.frombuffer(np.ascontiguousarray(rows).tobytes(), dtype=dtype, count=n)
    pts = np.stack([rec[a].astype(np.float32) for a in "xyz"], axis=1)
    colors = None
    packed = next((c for c in ("rgb", "rgba") if c in fields), None)
    if packed is not None:
        raw = rec[packed]
        if raw.dtype.kind == "f":
            raw = raw.astype(raw.dtype.newbyteorder("="), copy=False).astype(np.float32)
            raw = raw.view(np.uint32)
        else:
            raw = raw.astype(np.uint32)
        colors = np.stack([(raw >> 16) & 255, (raw >> 8) & 255, raw & 255], axis=1).astype(np.uint8)
    elif all(c in fields for c in ("r", "g", "b")):
        chans = []
        for c in ("r", "g", "b"):
            v = rec[c]
            if v.dtype.kind == "f":   # float channels in 0..1
                with np.errstate(invalid="ignore", over="ignore"):
                    v = np.clip(np.nan_to_num(np.round(v * 255.0)), 0, 255)
            chans.append(v.astype(np.uint8))
        colors = np.stack(chans, axis=1)
    ok = np.all(np.isfinite(pts), axis=1)     # reconstructions mark empty cells with NaN
    if not ok.all():
        pts = pts[ok]
        colors = colors[ok] if colors is not None else None
    return np.ascontiguousarray(pts), colors


def arrays_to_cloud(points: np.ndarray, colors: np.ndarray | None = None, frame_id: str = "",
                    stamp=None, msg=None, field_cls=None):
    """points (N, 3) [+ colours (N, 3) uint8] -> PointCloud2 (x, y, z float32, rgb packed float32).

    ``msg``/``field_cls`` let callers pass another message implementation (rosbags).
    """
    if msg is None:
        from sensor_msgs.msg import PointCloud2
        msg = PointCloud2()
    if field_cls is None:
        from sensor_msgs.msg import PointField
        field_cls = PointField
    pts = np.asarray(points, dtype=np.float32).reshape(-1, 3)
    n = len(pts)
    fields = [("x", 0), ("y", 4), ("z", 8)]
    if colors is not None:
        fields.append(("rgb", 12))
    dtype = np.dtype({"names": [f for f, _ in fields],
                      "formats": ["<f4"] * 3 + (["<u4"] if colors is not None else []),
                      "offsets": [o for _, o in fields],
                      "itemsize": 16 if colors is not None else 12})
    rec = np.zeros(n, dtype=dtype)
    rec["x"], rec["y"], rec["z"] = pts[:, 0], pts[:, 1], pts[:, 2]
    if colors is not None:
        c = np.asarray(colors).reshape(-1, 3).astype(np.uint32)
        if len(c) != n:
            raise ConversionError(f"{n} points but {len(c)} colours")
        rec["rgb"] = (c[:, 0] << 16) | (c[:, 1] << 8) | c[:, 2]
    msg.header.frame_id = frame_id
    if stamp is not None:
        msg.header.stamp = stamp
    msg.height, msg.width = 1, n
    msg.fields = [field_cls(name=name, offset=off, datatype=FLOAT32, count=1)
                  for name, off in fields]
    msg.is_bigendian = False
    msg.point_step = dtype.itemsize
    msg.row_step = dtype.itemsize * n
    msg.is_dense = True
    _set_bytes(msg, "data", rec.view(np.uint8))
    return msg


# -- time and transforms ---------------------------------------------------------------------------
def stamp_to_ns(stamp) -> int:
    """builtin_interfaces/Time -> integer nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(getattr(stamp, "nanosec", 0))


def ns_to_stamp(ns: int, msg=None):
    if msg is None:
        from builtin_interfaces.msg import Time
        msg = Time()
    msg.sec, msg.nanosec = int(ns // 1_000_000_000), int(ns % 1_000_000_000)
    return msg


def quat_to_rotation(q, what: str = "quaternion") -> Rotation:
    """(x, y, z, w) -> scipy Rotation (normalised). scipy turns NaN into a garbage rotation and
    overflows huge components to zeros, so a quaternion with a NaN/inf component or (almost)
    zero norm is rejected here first, saying which; ``what`` names it in the message."""
    x, y, z, w = (float(v) for v in q)
    if not all(np.isfinite((x, y, z, w))):
        raise ConversionError(f"{what} has a non-finite component (x={x}, y={y}, z={z}, w={w})")
    n = np.sqrt(x * x + y * y + z * z + w * w)
    if not np.isfinite(n) or n < 1e-6:
        raise ConversionError(f"{what} has zero norm (x={x}, y={y}, z={z}, w={w}); the identity "
                              "rotation is (0, 0, 0, 1)")
    from scipy.spatial.transform import Rotation
    return Rotation.from_quat([x / n, y / n, z / n, w / n])


def quat_to_matrix(q, what: str = "quaternion") -> np.ndarray:
    """(x, y, z, w) -> 3x3 rotation; errors as ``quat_to_rotation``."""
    return quat_to_rotation(q, what).as_matrix()


def matrix_to_quat(R: np.ndarray) -> np.ndarray:
    """3x3 rotation -> (x, y, z, w) with w >= 0."""
    from scipy.spatial.transform import Rotation
    return Rotation.from_matrix(np.asarray(R, dtype=np.float64)).as_quat(canonical=True)


def _rigid(xyz, quat, what: str) -> np.ndarray:
    M = np.eye(4)
    M[:3, :3] = quat_to_matrix((quat.x, quat.y, quat.z, quat.w), f"{what} rotation")
    t = np.array([float(xyz.x), float(xyz.y), float(xyz.z)])
    if not np.all(np.isfinite(t)):
        raise ConversionError(f"{what} translation is not finite ({t[0]}, {t[1]}, {t[2]})")
    M[:3, 3] = t
    return M


def transform_to_matrix(t, what: str = "transform") -> np.ndarray:
    """geometry_msgs/Transform -> 4x4; ConversionError saying why for NaN/inf or a zero
    quaternion (``what`` names the transform, e.g. "map -> camera_link at 12.3 s")."""
    return _rigid(t.translation, t.rotation, what)


def pose_to_matrix(p, what: str = "pose") -> np.ndarray:
    """geometry_msgs/Pose -> 4x4; errors as transform_to_matrix."""
    return _rigid(p.position, p.orientation, what)


def _fill_rigid(M: np.ndarray, xyz, quat) -> None:
    """Write a 4x4's translation into ``xyz`` (x, y, z) and rotation into ``quat`` (x, y, z, w)."""
    xyz.x, xyz.y, xyz.z = (float(v) for v in M[:3, 3])
    quat.x, quat.y, quat.z, quat.w = (float(v) for v in matrix_to_quat(M[:3, :3]))


def matrix_to_transform(M: np.ndarray, t=None):
    """4x4 -> geometry_msgs/Transform (fills ``t`` when given)."""
    if t is None:
        from geometry_msgs.msg import Transform
        t = Transform()
    _fill_rigid(M, t.translation, t.rotation)
    return t


def matrix_to_pose(M: np.ndarray, p=None):
    """4x4 -> geometry_msgs/Pose."""
    if p is None:
        from geometry_msgs.msg import Pose
        p = Pose()
    _fill_rigid(M, p.position, p.orientation)
    return p


# REP-103: a camera body frame (x forward, y left, z up) -> its optical frame (z forward,
# x right, y down). optical_in_body = BODY_T_OPTICAL.
BODY_T_OPTICAL = np.array([[0.0, 0.0, 1.0, 0.0],
                           [-1.0, 0.0, 0.0, 0.0],
                           [0.0, -1.0, 0.0, 0.0],
                           [0.0, 0.0, 0.0, 1.0]])
