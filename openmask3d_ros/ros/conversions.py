"""Message <-> numpy conversions (Image, CameraInfo, PointCloud2, transforms) without cv_bridge.

cv_bridge and sensor_msgs_py are not installable from PyPI, so these are plain numpy. Functions
take and return rclpy message objects but only touch their plain fields, so they also accept the
``rosbags`` message classes (used when recording bags) as long as the field names match.
"""
from __future__ import annotations

import array

import numpy as np

from ..core.camera import Intrinsics


class ConversionError(ValueError):
    """A message cannot be converted (unsupported encoding, inconsistent sizes, ...)."""


# -- images ------------------------------------------------------------------------------------
COLOR_ENCODINGS = ("rgb8", "bgr8", "rgba8", "bgra8", "mono8")
DEPTH_ENCODINGS = ("16UC1", "mono16", "32FC1")
_CHANNELS = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1,
             "16UC1": 1, "mono16": 1, "32FC1": 1}
_DTYPES = {"rgb8": np.uint8, "bgr8": np.uint8, "rgba8": np.uint8, "bgra8": np.uint8,
           "mono8": np.uint8, "16UC1": np.uint16, "mono16": np.uint16, "32FC1": np.float32}


def _image_array(msg) -> np.ndarray:
    """The pixel array of an Image (H, W[, C]), honouring ``step`` padding and endianness."""
    enc = msg.encoding
    if enc not in _CHANNELS:
        raise ConversionError(f"unsupported image encoding '{enc}'")
    h, w, c = int(msg.height), int(msg.width), _CHANNELS[enc]
    if h <= 0 or w <= 0:
        raise ConversionError(f"image has no pixels ({w}x{h})")
    dtype = np.dtype(_DTYPES[enc]).newbyteorder(">" if msg.is_bigendian else "<")
    row = w * c * dtype.itemsize
    step = int(msg.step) or row
    if step < row:
        raise ConversionError(f"image step {step} is smaller than a row ({row} bytes for {w} "
                              f"pixels of {enc})")
    buf = _as_uint8(msg.data)
    if buf.size < step * (h - 1) + row:
        raise ConversionError(f"image data holds {buf.size} bytes, expected {step * h} "
                              f"({w}x{h} {enc}, step {step})")
    rows = np.lib.stride_tricks.as_strided(buf, shape=(h, row), strides=(step, 1))
    arr = np.ascontiguousarray(rows).view(dtype).reshape(h, w, c) if c > 1 else \
        np.ascontiguousarray(rows).view(dtype).reshape(h, w)
    return arr.astype(dtype.newbyteorder("="), copy=False)


def image_to_rgb(msg) -> np.ndarray:
    """Colour Image (rgb8/bgr8/rgba8/bgra8/mono8) -> RGB uint8 (H, W, 3)."""
    if msg.encoding not in COLOR_ENCODINGS:
        raise ConversionError(f"colour image encoding '{msg.encoding}' is not supported "
                              f"(expected one of {', '.join(COLOR_ENCODINGS)})")
    arr = _image_array(msg)
    enc = msg.encoding
    if enc == "mono8":
        return np.repeat(arr[:, :, None], 3, axis=2)
    if enc in ("bgr8", "bgra8"):
        return np.ascontiguousarray(arr[:, :, 2::-1])
    return np.ascontiguousarray(arr[:, :, :3])


def image_to_depth(msg) -> np.ndarray:
    """Depth Image -> metres float32 (H, W), 0 where invalid.

    16UC1/mono16 are millimetres (REP-118); 32FC1 is metres, NaN/inf/negative become 0.
    """
    if msg.encoding not in DEPTH_ENCODINGS:
        raise ConversionError(f"depth image encoding '{msg.encoding}' is not supported "
                              "(expected 16UC1 in millimetres or 32FC1 in metres)")
    arr = _image_array(msg)
    if arr.dtype == np.uint16:
        return arr.astype(np.float32) / np.float32(1000.0)
    depth = arr.astype(np.float32, copy=True)
    depth[~np.isfinite(depth) | (depth < 0)] = 0.0
    return depth


def rgb_to_image(rgb: np.ndarray, encoding: str = "rgb8", msg=None):
    """RGB uint8 (H, W, 3) -> Image with ``encoding`` (rgb8, bgr8, rgba8, bgra8, mono8)."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ConversionError(f"expected an (H, W, 3) uint8 image, got {rgb.dtype} {rgb.shape}")
    if encoding == "rgb8":
        arr = rgb
    elif encoding == "bgr8":
        arr = rgb[:, :, ::-1]
    elif encoding in ("rgba8", "bgra8"):
        col = rgb if encoding == "rgba8" else rgb[:, :, ::-1]
        arr = np.concatenate([col, np.full(rgb.shape[:2] + (1,), 255, np.uint8)], axis=2)
    elif encoding == "mono8":
        arr = np.round(rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
                       ).astype(np.uint8)
    else:
        raise ConversionError(f"unsupported colour encoding '{encoding}'")
    return _fill_image(msg, np.ascontiguousarray(arr), encoding)


def depth_to_image(depth_m: np.ndarray, encoding: str = "16UC1", msg=None):
    """Depth in metres (H, W) -> Image, 16UC1 (millimetres, rounded) or 32FC1 (metres)."""
    d = np.nan_to_num(np.asarray(depth_m, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    if d.ndim != 2:
        raise ConversionError(f"expected an (H, W) depth image, got shape {d.shape}")
    if encoding == "16UC1":
        arr = np.clip(np.round(d * 1000.0), 0, 65535).astype(np.uint16)
    elif encoding == "32FC1":
        arr = d.astype(np.float32)
    else:
        raise ConversionError(f"unsupported depth encoding '{encoding}'")
    return _fill_image(msg, arr, encoding)


def _fill_image(msg, arr: np.ndarray, encoding: str):
    if msg is None:
        from sensor_msgs.msg import Image
        msg = Image()
    msg.height, msg.width = int(arr.shape[0]), int(arr.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = 0
    msg.step = int(arr.strides[0])
    _set_bytes(msg, "data", arr)
    return msg


def _set_bytes(msg, field: str, arr: np.ndarray) -> None:
    """Assign raw bytes to a uint8[] field of an rclpy message (fast path) or a rosbags one."""
    data = np.ascontiguousarray(arr).view(np.uint8).reshape(-1)
    current = getattr(msg, field)
    if isinstance(current, np.ndarray):          # rosbags messages hold numpy arrays
        setattr(msg, field, data.copy())
    else:   # rclpy: an array.array('B') is taken as is (bytes would be checked item by item)
        setattr(msg, field, array.array("B", data.tobytes()))


def _as_uint8(data) -> np.ndarray:
    """A uint8[] field (array.array, bytes, numpy array or list) as a flat uint8 array."""
    try:
        return np.frombuffer(data, dtype=np.uint8)
    except (TypeError, ValueError):
        return np.asarray(data, dtype=np.uint8).reshape(-1)


# -- camera info -----------------------------------------------------------------------------------
def camera_info_to_intrinsics(msg, width: int | None = None, height: int | None = None
                              ) -> Intrinsics:
    """CameraInfo -> Intrinsics, rescaled to ``width`` x ``height`` when an image of another size
    uses it (e.g. a depth image at half the colour resolution, or binning)."""
    K = np.asarray(msg.k, dtype=np.float64).reshape(3, 3)
    if not np.all(np.isfinite(K)) or K[0, 0] <= 0 or K[1, 1] <= 0:
        raise ConversionError(f"CameraInfo has no valid K matrix (k = {list(np.ravel(K))})")
    w, h = int(msg.width), int(msg.height)
    bx, by = int(getattr(msg, "binning_x", 0) or 0), int(getattr(msg, "binning_y", 0) or 0)
    if w <= 0 or h <= 0:
        if width is None or height is None:
            raise ConversionError("CameraInfo has no image size and none was given")
        w, h = int(width), int(height)
    intr = Intrinsics(K, w, h)
    if bx > 1 or by > 1:
        intr = intr.scaled(w // max(bx, 1), h // max(by, 1))
    if width is not None and height is not None and (intr.width, intr.height) != (width, height):
        intr = intr.scaled(int(width), int(height))
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
    for f in msg.fields:
        if f.datatype not in _PF_DTYPES:
            raise ConversionError(f"PointCloud2 field '{f.name}' has unknown datatype {f.datatype}")
        base = np.dtype(_PF_DTYPES[f.datatype]).newbyteorder(endian)
        count = int(f.count) if f.count else 1
        names.append(f.name)
        formats.append(base if count == 1 else (base, (count,)))
        offsets.append(int(f.offset))
    return np.dtype({"names": names, "formats": formats, "offsets": offsets,
                     "itemsize": int(msg.point_step)})


def cloud_to_arrays(msg, skip_nans: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """PointCloud2 -> points (N, 3) float32 and colours (N, 3) uint8 or None.

    Colour comes from a packed ``rgb``/``rgba`` field (float32 or uint32 holding 0x00RRGGBB) or
    from separate ``r``/``g``/``b`` fields. Points with non-finite coordinates are dropped (the
    remaining points keep their order).
    """
    names = [f.name for f in msg.fields]
    for axis in "xyz":
        if axis not in names:
            raise ConversionError(f"PointCloud2 has no '{axis}' field (fields: {names})")
    n = int(msg.width) * int(msg.height)
    dtype = _field_dtype(msg)
    row_step = int(msg.row_step) or int(msg.point_step) * int(msg.width)
    buf = _as_uint8(msg.data)
    if n == 0:
        return np.zeros((0, 3), np.float32), None
    need = row_step * (int(msg.height) - 1) + int(msg.point_step) * int(msg.width)
    if buf.size < need:
        raise ConversionError(f"PointCloud2 data holds {buf.size} bytes, expected {need}")
    if row_step == int(msg.point_step) * int(msg.width):
        rec = np.frombuffer(buf[:n * int(msg.point_step)].tobytes(), dtype=dtype, count=n)
    else:
        rows = [np.frombuffer(buf[r * row_step:r * row_step + int(msg.point_step) * int(msg.width)]
                              .tobytes(), dtype=dtype) for r in range(int(msg.height))]
        rec = np.concatenate(rows)
    pts = np.stack([rec[a].astype(np.float32) for a in "xyz"], axis=1)
    colors = None
    packed = next((c for c in ("rgb", "rgba") if c in names), None)
    if packed is not None:
        raw = rec[packed]
        if raw.dtype.kind == "f":
            raw = raw.astype(raw.dtype.newbyteorder("="), copy=False).astype(np.float32)
            raw = raw.view(np.uint32)
        else:
            raw = raw.astype(np.uint32)
        colors = np.stack([(raw >> 16) & 255, (raw >> 8) & 255, raw & 255], axis=1).astype(np.uint8)
    elif all(c in names for c in ("r", "g", "b")):
        chans = []
        for c in ("r", "g", "b"):
            v = rec[c]
            if v.dtype.kind == "f":   # float channels in 0..1
                v = np.clip(np.round(v * 255.0), 0, 255)
            chans.append(v.astype(np.uint8))
        colors = np.stack(chans, axis=1)
    if skip_nans:
        ok = np.all(np.isfinite(pts), axis=1)
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
                      "offsets": [o for _, o in fields], "itemsize": 16 if colors is not None else 12})
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
    msg.fields = [field_cls(name=name, offset=off, datatype=FLOAT32, count=1) for name, off in fields]
    msg.is_bigendian = False
    msg.point_step = dtype.itemsize
    msg.row_step = dtype.itemsize * n
    msg.is_dense = True
    _set_bytes(msg, "data", rec.view(np.uint8))
    return msg


# -- time and transforms -----------------------------------------------------------------------------
def stamp_to_ns(stamp) -> int:
    """builtin_interfaces/Time -> integer nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(getattr(stamp, "nanosec", 0))


def ns_to_stamp(ns: int, msg=None):
    if msg is None:
        from builtin_interfaces.msg import Time
        msg = Time()
    msg.sec, msg.nanosec = int(ns // 1_000_000_000), int(ns % 1_000_000_000)
    return msg


def quat_to_matrix(q) -> np.ndarray:
    """(x, y, z, w) -> 3x3 rotation (normalised first)."""
    x, y, z, w = (float(v) for v in q)
    n = np.sqrt(x * x + y * y + z * z + w * w)
    if not np.isfinite(n) or n < 1e-12:
        raise ConversionError(f"invalid quaternion {(x, y, z, w)}")
    x, y, z, w = x / n, y / n, z / n, w / n
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def matrix_to_quat(R: np.ndarray) -> np.ndarray:
    """3x3 rotation -> (x, y, z, w) with w >= 0."""
    R = np.asarray(R, dtype=np.float64)
    tr = np.trace(R)
    if tr > 0:
        s = np.sqrt(tr + 1.0) * 2
        q = [(R[2, 1] - R[1, 2]) / s, (R[0, 2] - R[2, 0]) / s, (R[1, 0] - R[0, 1]) / s, s / 4]
    elif R[0, 0] > R[1, 1] and R[0, 0] > R[2, 2]:
        s = np.sqrt(1.0 + R[0, 0] - R[1, 1] - R[2, 2]) * 2
        q = [s / 4, (R[0, 1] + R[1, 0]) / s, (R[0, 2] + R[2, 0]) / s, (R[2, 1] - R[1, 2]) / s]
    elif R[1, 1] > R[2, 2]:
        s = np.sqrt(1.0 + R[1, 1] - R[0, 0] - R[2, 2]) * 2
        q = [(R[0, 1] + R[1, 0]) / s, s / 4, (R[1, 2] + R[2, 1]) / s, (R[0, 2] - R[2, 0]) / s]
    else:
        s = np.sqrt(1.0 + R[2, 2] - R[0, 0] - R[1, 1]) * 2
        q = [(R[0, 2] + R[2, 0]) / s, (R[1, 2] + R[2, 1]) / s, s / 4, (R[1, 0] - R[0, 1]) / s]
    q = np.asarray(q)
    q /= np.linalg.norm(q)
    return -q if q[3] < 0 else q


def transform_to_matrix(t) -> np.ndarray:
    """geometry_msgs/Transform -> 4x4."""
    M = np.eye(4)
    M[:3, :3] = quat_to_matrix((t.rotation.x, t.rotation.y, t.rotation.z, t.rotation.w))
    M[:3, 3] = (t.translation.x, t.translation.y, t.translation.z)
    return M


def pose_to_matrix(p) -> np.ndarray:
    """geometry_msgs/Pose -> 4x4."""
    M = np.eye(4)
    M[:3, :3] = quat_to_matrix((p.orientation.x, p.orientation.y, p.orientation.z,
                                p.orientation.w))
    M[:3, 3] = (p.position.x, p.position.y, p.position.z)
    return M


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
