"""Importing MinkowskiEngine 0.5.4 on Python >= 3.10 (one place, so every module agrees)."""
from __future__ import annotations

import collections
import collections.abc
import warnings

_INSTALL_HINT = ("MinkowskiEngine is not importable; the Mask3D proposal backend needs it. "
                 "Install it with scripts/install.sh (builds minkowskiengine==0.5.4 from source "
                 "into the venv; needs libopenblas-dev).")


def import_minkowski():
    """Return the ``MinkowskiEngine`` module, or raise ImportError with an install hint.

    MinkowskiEngine 0.5.4 still uses ``collections.Sequence`` and friends, which Python 3.10
    removed; the aliases are restored before the import (they point at the abc classes, so
    nothing else changes behaviour).
    """
    for name in ("Sequence", "Mapping", "MutableMapping", "Iterable", "Callable"):
        if not hasattr(collections, name):
            setattr(collections, name, getattr(collections.abc, name))
    try:
        with warnings.catch_warnings():
            # the CPU-only build warns on every import; the backend logs its device instead
            warnings.filterwarnings("ignore", message=".*compiled with CPU_ONLY.*")
            import MinkowskiEngine as ME  # noqa: N812
    except Exception as exc:  # a broken build raises OSError/AttributeError too
        raise ImportError(f"{_INSTALL_HINT} ({type(exc).__name__}: {exc})") from exc
    return ME


def minkowski_available() -> bool:
    """True when ``import_minkowski()`` succeeds."""
    try:
        import_minkowski()
    except ImportError:
        return False
    return True

