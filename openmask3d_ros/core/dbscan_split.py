"""Split every mask into spatially contiguous parts with DBSCAN (paper A.1, eps 0.95)."""
from __future__ import annotations

import numpy as np
from sklearn.cluster import DBSCAN

from .voxel import unique_keys, voxel_keys


def voxel_representatives(points: np.ndarray, voxel: float) -> tuple[np.ndarray, np.ndarray]:
    """One representative point per occupied voxel, and each point's voxel index."""
    _, first, inverse = unique_keys(voxel_keys(points, voxel), return_index=True,
                                    return_inverse=True)
    return points[first], inverse


def split_masks(points: np.ndarray, masks: np.ndarray, eps: float = 0.95, min_points: int = 1,
                min_mask_points: int = 1, voxel: float | None = None) -> np.ndarray:
    """(P, M) boolean masks -> (P, M') with each mask broken into its DBSCAN clusters.

    DBSCAN runs per mask (whole-scene DBSCAN is slow) on one representative per voxel of size
    ``voxel`` (default eps/20), which bounds the neighbourhood sizes for large eps; connectivity is
    therefore exact up to one voxel diagonal. Noise points and parts with fewer than
    ``min_mask_points`` points are dropped.
    """
    voxel = voxel if voxel is not None else eps / 20.0
    parts: list[np.ndarray] = []
    for m in range(masks.shape[1]):
        idx = np.flatnonzero(masks[:, m])
        if len(idx) < max(min_mask_points, 1):
            continue
        reps, inverse = voxel_representatives(points[idx], voxel)
        labels = DBSCAN(eps=eps, min_samples=min_points).fit(reps).labels_[inverse]
        for label in np.unique(labels):
            if label < 0:
                continue
            part = idx[labels == label]
            if len(part) >= min_mask_points:
                parts.append(part)
    out = np.zeros((len(points), len(parts)), dtype=bool)
    for j, part in enumerate(parts):
        out[part, j] = True
    return out
