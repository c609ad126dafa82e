"""Mask3D proposals (MinkowskiEngine Res16UNet34C + transformer decoder) loading the official
ScanNet200 checkpoint. Importing this package does not import MinkowskiEngine; constructing
``Mask3DBackend`` does (ImportError with an install hint when it is missing)."""
from .backend import Mask3DBackend
from .compat import import_minkowski, minkowski_available

__all__ = ["Mask3DBackend", "import_minkowski", "minkowski_available"]
