"""Image and CompressedImage <-> numpy, without cv_bridge or image_transport.

Raw ``sensor_msgs/Image`` is plain numpy. ``sensor_msgs/CompressedImage`` follows the two
image_transport plugins robots publish:

- ``compressed`` (colour): a JPEG or PNG file; ``format`` as the plugin writes it, e.g.
  ``"rgb8; jpeg compressed bgr8"`` (older publishers: just ``"jpeg"``/``"png"``).
- ``compressedDepth`` (depth): ``format`` ``"16UC1; compressedDepth png"`` (or ``"32FC1; ..."``),
  data = a 12-byte header (int32 compression format, float32 depthParam[2], little-endian) and a
  16-bit PNG. For 16UC1 the PNG holds millimetres. For 32FC1 it holds quantised inverse depth
  ``v = a / d + b`` (0 = invalid), decoded as ``d = a / (v - b)`` with ``a, b`` from the header,
  as compressed_depth_image_transport's codec does.

A file that is cut short is an error, not a partial image: libjpeg only warns on a truncated JPEG
and fills the rest grey, so the end markers (JPEG EOI, PNG IEND) are checked before decoding.
OpenCV is imported on first use (it is not needed for raw images).
"""
from __future__ import annotations

import array
import struct

import numpy as np

from ..core.errors import InputError


class ConversionError(InputError):
    """A message cannot be converted (unsupported encoding, inconsistent sizes, ...): the
    project's InputError for ROS messages (a ValueError)."""


def _as_uint8(data) -> np.ndarray:
    """A uint8[] field (array.array, bytes, numpy array or list) as a flat uint8 array."""
    try:
        return np.frombuffer(data, dtype=np.uint8)
    except (TypeError, ValueError):
        try:
            return np.asarray(data, dtype=np.uint8).reshape(-1)
        except (TypeError, ValueError, OverflowError) as exc:
            raise ConversionError(f"data is not a byte array ({type(data).__name__})") from exc


def _set_bytes(msg, field: str, arr) -> None:
    """Assign raw bytes to a uint8[] field of an rclpy message (fast path) or a rosbags one."""
    data = np.ascontiguousarray(arr).view(np.uint8).reshape(-1)
    current = getattr(msg, field)
    if isinstance(current, np.ndarray):          # rosbags messages hold numpy arrays
        setattr(msg, field, data.copy())
    else:   # rclpy: an array.array('B') is taken as is (bytes would be checked item by item)
        setattr(msg, field, array.array("B", data.tobytes()))


# -- raw images ----------------------------------------------------------------------------------
COLOR_ENCODINGS = ("rgb8", "bgr8", "rgba8", "bgra8", "mono8")
DEPTH_ENCODINGS = ("16UC1", "mono16", "32FC1")
_CHANNELS = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1,
             "16UC1": 1, "mono16": 1, "32FC1": 1}
_DTYPES = {"rgb8": np.uint8, "bgr8": np.uint8, "rgba8": np.uint8, "bgra8": np.uint8,
           "mono8": np.uint8, "16UC1": np.uint16, "mono16": np.uint16, "32FC1": np.float32}
MAX_PIXELS = 64_000_000   # larger claims are corrupt headers, not cameras


def _image_array(msg) -> np.ndarray:
    """The pixel array of an Image (H, W[, C]), honouring ``step`` padding and endianness.

    ``data`` must hold exactly ``step * height`` bytes: shorter is a cut message, longer means
    ``height``/``step`` do not describe the data (both would silently shift pixels)."""
    enc = msg.encoding
    if enc not in _CHANNELS:
        raise ConversionError(f"unsupported image encoding '{enc}'")
    h, w, c = int(msg.height), int(msg.width), _CHANNELS[enc]
    if h <= 0 or w <= 0:
        raise ConversionError(f"image has no pixels ({w}x{h})")
    if h * w > MAX_PIXELS:
        raise ConversionError(f"image claims {w}x{h} pixels (more than {MAX_PIXELS})")
    dtype = np.dtype(_DTYPES[enc]).newbyteorder(">" if msg.is_bigendian else "<")
    row = w * c * dtype.itemsize
    step = int(msg.step) or row
    if step < row:
        raise ConversionError(f"image step {step} is smaller than a row ({row} bytes for {w} "
                              f"pixels of {enc})")
    buf = _as_uint8(msg.data)
    if buf.size != step * h:
        raise ConversionError(f"image data holds {buf.size} bytes, expected step x height = "
                              f"{step} x {h} = {step * h} ({w}x{h} {enc})")
    rows = buf.reshape(h, step)[:, :row]
    arr = np.ascontiguousarray(rows).view(dtype)
    arr = arr.reshape(h, w, c) if c > 1 else arr.reshape(h, w)
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


def _valid_depth(depth: np.ndarray) -> np.ndarray:
    depth = depth.astype(np.float32, copy=True)
    depth[~np.isfinite(depth) | (depth < 0)] = 0.0
    return depth


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
    return _valid_depth(arr)


def rgb_to_image(rgb: np.ndarray, encoding: str = "rgb8", msg=None):
    """RGB uint8 (H, W, 3) -> Image with ``encoding`` (rgb8, bgr8, rgba8, bgra8, mono8)."""
    rgb = _check_rgb(rgb)
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


def _check_rgb(rgb) -> np.ndarray:
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8 or rgb.size == 0:
        raise ConversionError(f"expected an (H, W, 3) uint8 image, got {rgb.dtype} {rgb.shape}")
    return rgb


def _depth_array(depth_m) -> np.ndarray:
    d = np.nan_to_num(np.asarray(depth_m, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    if d.ndim != 2 or d.size == 0:
        raise ConversionError(f"expected an (H, W) depth image, got shape {d.shape}")
    return d


def depth_to_image(depth_m: np.ndarray, encoding: str = "16UC1", msg=None):
    """Depth in metres (H, W) -> Image, 16UC1 (millimetres, rounded) or 32FC1 (metres)."""
    d = _depth_array(depth_m)
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


# -- compressed images ---------------------------------------------------------------------------
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_PNG_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"
_JPEG_SOI, _JPEG_EOI = b"\xff\xd8", b"\xff\xd9"
_DEPTH_HEADER = struct.Struct("<iff")      # compressionFormat, depthParam[0], depthParam[1]


def _file_kind(data: bytes, what: str) -> str:
    """'jpeg' or 'png' from the magic bytes; checks the file is complete."""
    if data.startswith(_PNG_MAGIC):
        # IEND is the last chunk; trailing bytes after it are tolerated by every decoder
        if _PNG_IEND not in data[-64:]:
            raise ConversionError(f"{what}: PNG data is truncated (no IEND chunk at the end, "
                                  f"{len(data)} bytes)")
        return "png"
    if data.startswith(_JPEG_SOI):
        # entropy-coded data stuffs every 0xFF, so FF D9 at the end can only be the EOI marker
        if not data.rstrip(b"\x00").endswith(_JPEG_EOI):
            raise ConversionError(f"{what}: JPEG data is truncated (no end-of-image marker, "
                                  f"{len(data)} bytes)")
        return "jpeg"
    raise ConversionError(f"{what}: data is neither JPEG nor PNG (starts with "
                          f"{data[:8].hex(' ')})")


def _file_size(data: bytes, kind: str, what: str) -> tuple[int, int]:
    """(width, height) read from the PNG IHDR / JPEG SOF header, before any allocation."""
    if kind == "png":
        if len(data) < 24 or data[12:16] != b"IHDR":
            raise ConversionError(f"{what}: PNG has no IHDR header")
        w, h = struct.unpack(">II", data[16:24])
    else:
        w = h = 0
        i = 2
        while i + 4 <= len(data):
            if data[i] != 0xFF:
                raise ConversionError(f"{what}: JPEG marker expected at byte {i}")
            marker = data[i + 1]
            if marker == 0xFF:                         # fill byte
                i += 1
                continue
            if marker in (0x01, *range(0xD0, 0xD8)):   # markers without a length
                i += 2
                continue
            seg = struct.unpack(">H", data[i + 2:i + 4])[0]
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                if i + 9 > len(data):
                    break
                h, w = struct.unpack(">HH", data[i + 5:i + 9])
                break
            if marker == 0xDA or seg < 2:              # scan data before any frame header
                break
            i += 2 + seg
    if w <= 0 or h <= 0 or w * h > MAX_PIXELS:
        raise ConversionError(f"{what}: {kind.upper()} header gives an unusable size {w}x{h}")
    return int(w), int(h)


def _decode(data: bytes, flags: int, what: str) -> np.ndarray:
    import cv2
    kind = _file_kind(data, what)
    w, h = _file_size(data, kind, what)
    try:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    except cv2.error as exc:
        raise ConversionError(f"{what}: OpenCV cannot decode the {kind.upper()} data "
                              f"({str(exc).strip().splitlines()[-1]})") from None
    if img is None or img.size == 0:
        raise ConversionError(f"{what}: OpenCV cannot decode the {kind.upper()} data "
                              f"({len(data)} bytes)")
    if img.shape[:2] != (h, w):
        raise ConversionError(f"{what}: decoded {img.shape[1]}x{img.shape[0]} but the header "
                              f"says {w}x{h}")
    return img


def _split_format(msg) -> tuple[str, str]:
    """'rgb8; jpeg compressed bgr8' -> ('rgb8', 'jpeg compressed bgr8')."""
    fmt = str(getattr(msg, "format", "") or "")
    enc, _, rest = fmt.partition(";")
    return enc.strip(), rest.strip()


def compressed_to_rgb(msg) -> np.ndarray:
    """CompressedImage (image_transport ``compressed``: JPEG or PNG) -> RGB uint8 (H, W, 3).

    The file type is read from the data; grey and RGBA files become RGB."""
    import cv2
    fmt = str(getattr(msg, "format", "") or "")
    if "compresseddepth" in fmt.lower():
        raise ConversionError(f"CompressedImage format '{fmt}' is a depth image "
                              "(compressedDepth), not a colour image")
    what = f"CompressedImage ({fmt or 'no format'})"
    bgr = _decode(_as_uint8(msg.data).tobytes(), cv2.IMREAD_COLOR, what)
    return np.ascontiguousarray(bgr[:, :, ::-1])


def compressed_to_depth(msg) -> np.ndarray:
    """CompressedImage (image_transport ``compressedDepth``) -> metres float32 (H, W), 0 where
    invalid. Also accepts a bare 16-bit PNG in millimetres (``"16UC1; png compressed ..."``)."""
    import cv2
    enc, rest = _split_format(msg)
    fmt = str(getattr(msg, "format", "") or "")
    what = f"CompressedImage ({fmt or 'no format'})"
    if "rvl" in rest.lower():
        raise ConversionError(f"{what}: compressedDepth 'rvl' is not supported; publish "
                              "compressedDepth with format png")
    data = _as_uint8(msg.data).tobytes()
    if data.startswith(_PNG_MAGIC):   # no compressedDepth header: a plain 16-bit PNG in mm
        qa = qb = 0.0
        png = data
    else:
        if len(data) <= _DEPTH_HEADER.size:
            raise ConversionError(f"{what}: {len(data)} bytes, too short for a compressedDepth "
                                  "header and a PNG")
        _, qa, qb = _DEPTH_HEADER.unpack(data[:_DEPTH_HEADER.size])
        png = data[_DEPTH_HEADER.size:]
    if enc not in DEPTH_ENCODINGS:
        raise ConversionError(f"{what}: depth encoding '{enc}' is not supported (expected "
                              "16UC1 in millimetres or 32FC1 in metres)")
    if not png.startswith(_PNG_MAGIC):
        raise ConversionError(f"{what}: no PNG after the compressedDepth header")
    raw = _decode(png, cv2.IMREAD_UNCHANGED, what)
    if raw.dtype != np.uint16 or raw.ndim != 2:
        raise ConversionError(f"{what}: expected a 16-bit single-channel PNG, got "
                              f"{raw.dtype} with shape {raw.shape}")
    if enc != "32FC1":
        return raw.astype(np.float32) / np.float32(1000.0)
    if not (np.isfinite(qa) and np.isfinite(qb)) or qa == 0:
        raise ConversionError(f"{what}: invalid depth quantisation parameters ({qa}, {qb})")
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        depth = np.float32(qa) / (raw.astype(np.float32) - np.float32(qb))
    depth[raw == 0] = 0.0
    return _valid_depth(depth)


def rgb_to_compressed(rgb: np.ndarray, fmt: str = "jpeg", quality: int = 90, msg=None):
    """RGB uint8 (H, W, 3) -> CompressedImage as image_transport's ``compressed`` plugin writes
    it (format ``"rgb8; jpeg compressed bgr8"`` or ``"rgb8; png compressed bgr8"``)."""
    import cv2
    rgb = _check_rgb(rgb)
    if fmt not in ("jpeg", "png"):
        raise ConversionError(f"unsupported compression '{fmt}' (jpeg or png)")
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)] if fmt == "jpeg" else \
        [cv2.IMWRITE_PNG_COMPRESSION, 1]
    ok, buf = cv2.imencode(".jpg" if fmt == "jpeg" else ".png",
                           np.ascontiguousarray(rgb[:, :, ::-1]), params)
    if not ok:
        raise ConversionError(f"OpenCV could not encode a {rgb.shape} image as {fmt}")
    return _fill_compressed(msg, f"rgb8; {fmt} compressed bgr8", buf)


def depth_to_compressed_depth(depth_m: np.ndarray, encoding: str = "16UC1", *,
                              depth_max: float = 10.0, depth_quantization: float = 100.0,
                              png_level: int = 1, msg=None):
    """Depth in metres (H, W) -> CompressedImage in image_transport's ``compressedDepth`` format.

    16UC1: a PNG of millimetres (depths beyond ``depth_max`` become 0, as the plugin does).
    32FC1: quantised inverse depth with the plugin's parameters (defaults 10 m and 100), which
    keeps depths from about 0.16 m to ``depth_max``; the error grows as depth squared."""
    import cv2
    d = _depth_array(depth_m)
    if encoding in ("16UC1", "mono16"):
        qa = qb = 0.0
        mm = np.round(d * 1000.0)
        raw = np.where((mm > 0) & (mm <= depth_max * 1000.0), mm, 0).astype(np.uint16)
    elif encoding == "32FC1":
        qa = float(np.float32(depth_quantization * (depth_quantization + 1.0)))
        qb = float(np.float32(1.0 - qa / depth_max))
        with np.errstate(divide="ignore"):
            v = np.round(qa / np.where(d > 0, d, np.inf) + qb)
        raw = np.where((d > 0) & (d < depth_max), np.clip(v, 1, 65535), 0).astype(np.uint16)
    else:
        raise ConversionError(f"unsupported depth encoding '{encoding}' (16UC1 or 32FC1)")
    ok, buf = cv2.imencode(".png", raw, [cv2.IMWRITE_PNG_COMPRESSION, int(png_level)])
    if not ok:
        raise ConversionError(f"OpenCV could not encode a {raw.shape} depth image as PNG")
    header = _DEPTH_HEADER.pack(0, qa, qb)    # 0 = INV_DEPTH, the plugin's only format
    data = np.concatenate([np.frombuffer(header, np.uint8), buf.reshape(-1)])
    return _fill_compressed(msg, f"{encoding}; compressedDepth png", data)


def _fill_compressed(msg, fmt: str, data: np.ndarray):
    if msg is None:
        from sensor_msgs.msg import CompressedImage
        msg = CompressedImage()
    msg.format = fmt
    _set_bytes(msg, "data", data)
    return msg
