"""Precomputed class-agnostic masks from any segmenter: a P x M array (.npy) or the ``.pt``
file that the official OpenMask3D mask stage writes (``torch.save`` of a float16 numpy P x M
array, so unpickling it needs numpy's array reconstruction; nothing else is allowed).

Masks are binary: booleans, or numbers that are all 0 or 1 (as the official stage writes them);
point i is in mask j when the value is 1 (true). Any other value (soft scores, probabilities,
labels) is refused, since any threshold would be a guess: binarise such masks first. A file with
no non-empty mask is refused (it would give an empty map); a mask covering ``NEARLY_ALL`` of the
cloud or more is kept with a warning (it is rarely an object)."""
from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..interfaces import Proposals

log = logging.getLogger(__name__)

NEARLY_ALL = 0.95       # a mask with at least this fraction of the cloud's points is warned about
_CHUNK = 16             # mask columns checked at a time (temporaries of P x 16, not P x M)

# numeric and boolean dtypes only: an object array (arbitrary pickles) stays refused
_PLAIN_DTYPES = ("?", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8")


def numpy_safe_globals() -> list:
    """The allow-list for ``torch.load(weights_only=True)`` of a pickled plain numpy array:
    ``ndarray``, ``dtype``, the plain dtype classes and ``_reconstruct`` under its numpy 2 and
    numpy 1 (``numpy.core``) names, as files written by the official code (numpy 1.x) name it."""
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:                      # numpy 1.x
        from numpy.core.multiarray import _reconstruct
    allowed = [np.ndarray, np.dtype, _reconstruct,
               (_reconstruct, "numpy.core.multiarray._reconstruct"),
               (_reconstruct, "numpy._core.multiarray._reconstruct")]
    dtype_classes = {type(np.dtype(c)) for c in _PLAIN_DTYPES}
    return allowed + [c for c in dtype_classes if c is not np.dtype]


def _load_pt(path: Path) -> np.ndarray:
    import torch
    try:
        with torch.serialization.safe_globals(numpy_safe_globals()):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError,
            TypeError, KeyError) as exc:
        detail = str(exc).strip().splitlines()
        hint = next((ln for ln in detail if "got <class" in ln or "Unsupported" in ln), "")
        raise InputError(f"not a masks file torch.load can read safely (a P x M tensor or numpy "
                         f"array){': ' + hint.strip() if hint else ''} "
                         f"({type(exc).__name__})", path) from None
    if isinstance(obj, dict):     # tolerate {"masks": tensor}
        obj = obj.get("masks", obj.get("pred_masks"))
    if isinstance(obj, np.ndarray):
        return obj
    if obj is None or not hasattr(obj, "numpy"):
        raise InputError("expected a P x M tensor or array (or a dict with 'masks')", path)
    return obj.cpu().numpy()


def load_masks(path: str | Path, num_points: int) -> np.ndarray:
    """Boolean (P, M) masks for a cloud of ``num_points`` points (an M x P file is transposed)."""
    path = Path(os.path.expanduser(str(path)))
    if not path.is_file():
        raise FileNotFoundError(f"masks file not found: {path}")
    if path.suffix == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise InputError(f"not a plain .npy array ({exc})", path) from None
    elif path.suffix in (".pt", ".pth"):
        arr = _load_pt(path)
    else:
        raise InputError(f"masks must be .npy or .pt, got '{path.suffix}'", path)
    if arr.dtype.kind not in "biuf":
        raise InputError(f"masks must be boolean or numeric, got dtype {arr.dtype}", path)
    if arr.ndim != 2:
        raise InputError(f"masks must be 2-D (P x M), got shape {arr.shape}", path)
    if arr.shape[0] != num_points:
        if arr.shape[1] == num_points:
            arr = arr.T
        else:
            raise InputError(f"masks have shape {arr.shape} but the cloud has {num_points} "
                             "points (neither dimension matches)", path)
    return binary_masks(arr, path)


def binary_masks(arr: np.ndarray, path: str | Path | None = None) -> np.ndarray:
    """(P, M) masks of 0/1 values (or booleans) as booleans; InputError (naming ``path``) for
    any other value and when every mask is empty; a warning for masks covering ``NEARLY_ALL``
    of the points or more."""
    arr = np.asarray(arr)
    out = np.empty(arr.shape, bool)
    for j in range(0, arr.shape[1], _CHUNK):
        block = arr[:, j:j + _CHUNK]
        if arr.dtype != bool:
            other = (block != 0) & (block != 1)          # NaN included
            if other.any():
                raise InputError(
                    f"masks must hold only 0 and 1 (1: the point is in the mask), found "
                    f"{block[other].flat[0]!r} in column {j + int(np.argwhere(other)[0, 1])}: "
                    "binarise soft masks first, e.g. save (scores > 0.5)", path, "masks")
        out[:, j:j + _CHUNK] = block != 0
    sizes = out.sum(axis=0)
    if not sizes.any():
        raise InputError(f"no usable mask: all {arr.shape[1]} masks are empty (no point is 1)",
                         path, "masks")
    whole = np.flatnonzero(sizes >= NEARLY_ALL * max(len(out), 1))
    if len(whole):
        log.warning("%s: %d mask(s) cover %d%% or more of the cloud's %d points (columns %s): "
                    "such a mask is rarely an object; are the masks binarised right?",
                    path or "masks", len(whole), round(NEARLY_ALL * 100), len(out),
                    ", ".join(map(str, whole[:10])) + (", ..." if len(whole) > 10 else ""))
    return out


class PrecomputedMasks:
    """ProposalBackend that returns masks read from a file."""

    name = "precomputed"
    uses_segments = False

    def __init__(self, path: str | Path):
        if not path:
            raise InputError("proposals.backend 'precomputed' needs proposals.masks_file",
                             field="proposals.masks_file")
        self.path = Path(os.path.expanduser(str(path)))
        if not self.path.is_file():
            raise FileNotFoundError(f"masks file not found: {self.path}")

    def propose(self, points: np.ndarray, colors: np.ndarray,
                segments: np.ndarray | None = None) -> Proposals:
        return Proposals(load_masks(self.path, len(points)))
