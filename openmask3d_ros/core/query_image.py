"""Query images from outside (an image file, a service request): bounded before any pixel is
decoded.

A small compressed file can claim a huge image (a 424 KB PNG of one colour holds 20000 x 20000
pixels: 1.2 GB decoded, many GB more while encoding). So the size an image claims (a file's
header, a message's width and height) is checked against ``query.max_image_pixels`` (default
4096 x 4096) first, and a larger one is refused with its size and the limit. An image within
the limit is shrunk to at most ``ENCODE_PIXELS`` before it is encoded: CLIP sees 224 or 336
pixels of it anyway, and the stand-in colour encoder a histogram.
"""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from .errors import InputError

ENCODE_PIXELS = 2_000_000     # about 1630 x 1225: the short side stays >= 336 up to 17:1
_PIL_GLOBALS = threading.Lock()


def check_image_size(width: int, height: int, limit: int, what: str = "image") -> None:
    """InputError naming ``what``, its size and ``limit`` when width x height exceeds it."""
    pixels = int(width) * int(height)
    if pixels > int(limit):
        raise InputError(f"{what}: a {width}x{height} image ({pixels:,} pixels) is larger than "
                         f"the limit of {int(limit):,} pixels (query.max_image_pixels); a query "
                         "image needs no more than a crop of the object, so downscale it")


def read_image_file(path: str | Path, max_pixels: int, what: str = "image file") -> np.ndarray:
    """RGB uint8 (H, W, 3) of an image file whose header says it has at most ``max_pixels``;
    InputError naming ``what`` (and the file) when it does not exist, is no image Pillow knows,
    is larger or cannot be decoded. Pillow decodes it (its errors are exceptions: nothing is
    printed), EXIF orientation applied, alpha dropped."""
    from PIL import Image
    path = Path(path)
    if not path.exists():
        raise InputError(f"{what}: the file does not exist", path)
    if not path.is_file():
        raise InputError(f"{what}: not a file", path)
    # Pillow's own decompression-bomb check (a warning, then an error without the size) is off
    # while this file is read: the size is checked here, against our limit, before decoding.
    with _PIL_GLOBALS:
        saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            return _decode_checked(path, max_pixels, what)
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def _decode_checked(path: Path, max_pixels: int, what: str) -> np.ndarray:
    from PIL import Image, ImageOps, UnidentifiedImageError
    try:
        im = Image.open(path)           # reads the header only
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise InputError(f"{what}: not a readable image file ({exc})", path) from None
    with im:
        check_image_size(*im.size, max_pixels, what)
        try:
            return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
        except (OSError, ValueError, SyntaxError) as exc:
            raise InputError(f"{what}: the image cannot be decoded ({exc})", path) from None


def shrink_for_encoder(rgb: np.ndarray, max_pixels: int = ENCODE_PIXELS) -> np.ndarray:
    """``rgb`` scaled down (area averaging, aspect kept) to at most ``max_pixels``; unchanged
    when it is that small already."""
    h, w = rgb.shape[:2]
    if h * w <= max_pixels:
        return rgb
    import cv2
    scale = (max_pixels / (h * w)) ** 0.5
    size = (max(1, int(w * scale)), max(1, int(h * scale)))
    return cv2.resize(np.ascontiguousarray(rgb), size, interpolation=cv2.INTER_AREA)
