"""Voxel downsampling of grouped points (the instances of a map) in one numpy pass."""
from __future__ import annotations

import numpy as np


def group_voxel_centroids(pts: np.ndarray, offsets: np.ndarray, size: float
                          ) -> tuple[np.ndarray, np.ndarray]:
    """Voxel centroids of every group ``pts[offsets[g]:offsets[g + 1]]`` at once, in group order
    (within a group, in x, y, z voxel order; a voxel never mixes groups): (points (n, 3)
    float32, new offsets (G + 1,))."""
    if not size > 0:
        raise ValueError(f"voxel size must be > 0, got {size}")
    G = len(offsets) - 1
    if len(pts) == 0:
        return np.zeros((0, 3), np.float32), np.zeros(G + 1, np.int64)
    group = np.repeat(np.arange(G, dtype=np.int64), np.diff(offsets))
    keys = np.floor(pts.astype(np.float64) / size).astype(np.int64)
    keys -= keys.min(axis=0)
    dims = keys.max(axis=0) + 1
    if float(G) * float(np.prod(dims.astype(np.float64))) < 2.0 ** 62:
        lin = ((group * dims[0] + keys[:, 0]) * dims[1] + keys[:, 1]) * dims[2] + keys[:, 2]
        _, inverse, counts = np.unique(lin, return_inverse=True, return_counts=True)
    else:      # too many voxels for one int64 key: unique rows instead (slower, same order)
        rows = np.column_stack([group, keys])
        _, inverse, counts = np.unique(rows, axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    out = np.stack([np.bincount(inverse, weights=pts[:, a], minlength=len(counts))
                    for a in range(3)], axis=1) / counts[:, None]
    first = np.zeros(len(counts), np.int64)
    first[inverse[::-1]] = group[::-1]                 # the group of each voxel
    new_off = np.zeros(G + 1, np.int64)
    np.cumsum(np.bincount(first, minlength=G), out=new_off[1:])
    return out.astype(np.float32), new_off
