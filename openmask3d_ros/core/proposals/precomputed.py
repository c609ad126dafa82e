"""Precomputed class-agnostic masks from any segmenter: a P x M array (.npy) or the ``.pt``
file that the official OpenMask3D mask stage writes (a P x M tensor)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def load_masks(path: str | Path, num_points: int) -> np.ndarray:
    """Boolean (P, M) masks for a cloud of ``num_points`` points (an M x P file is transposed)."""
    path = Path(os.path.expanduser(str(path)))
    if not path.is_file():
        raise FileNotFoundError(f"masks file not found: {path}")
    if path.suffix == ".npy":
        arr = np.load(path, allow_pickle=False)
    elif path.suffix in (".pt", ".pth"):
        import torch
        obj = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(obj, dict):     # tolerate {"masks": tensor}
            obj = obj.get("masks", obj.get("pred_masks"))
        if obj is None or not hasattr(obj, "numpy"):
            raise ValueError(f"{path}: expected a P x M tensor (or a dict with 'masks')")
        arr = obj.cpu().numpy()
    else:
        raise ValueError(f"{path}: masks must be .npy or .pt, got '{path.suffix}'")
    if arr.ndim != 2:
        raise ValueError(f"{path}: masks must be 2-D (P x M), got shape {arr.shape}")
    if arr.shape[0] != num_points:
        if arr.shape[1] == num_points:
            arr = arr.T
        else:
            raise ValueError(f"{path}: masks have shape {arr.shape} but the cloud has "
                             f"{num_points} points (neither dimension matches)")
    return arr > 0 if arr.dtype != bool else arr


class PrecomputedMasks:
    """ProposalBackend that returns masks read from a file."""

    name = "precomputed"

    def __init__(self, path: str | Path):
        if not path:
            raise ValueError("proposals.backend 'precomputed' needs proposals.masks_file")
        self.path = Path(os.path.expanduser(str(path)))
        if not self.path.is_file():
            raise FileNotFoundError(f"masks file not found: {self.path}")

    def propose(self, points: np.ndarray, colors: np.ndarray) -> np.ndarray:
        return load_masks(self.path, len(points))
