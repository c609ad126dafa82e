"""Voxel grids in one numpy pass: keys of the voxels points fall in, and the downsampling of
grouped points (the instances of a map)."""
from __future__ import annotations

import numpy as np


def voxel_keys(points: np.ndarray, size: float, group: np.ndarray | None = None) -> np.ndarray:
    """A key per point for its voxel of ``size`` (within its ``group``), in (group, x, y, z)
    order: one int64 per point when the grid fits 62 bits, else rows for ``unique_keys``.

    Sorting int64 keys is several times faster than comparing rows (np.unique(axis=0)), and it
    releases the GIL, so the node's queries are not held up by a build's voxel steps."""
    cells = np.floor(np.asarray(points, np.float64) / size).astype(np.int64)
    cells -= cells.min(axis=0)
    dims = cells.max(axis=0) + 1
    groups = 1 if group is None or not len(group) else int(group.max()) + 1
    if float(groups) * float(np.prod(dims.astype(np.float64))) >= 2.0 ** 62:
        return cells if group is None else np.column_stack([group, cells])
    lead = 0 if group is None else group
    return ((lead * dims[0] + cells[:, 0]) * dims[1] + cells[:, 1]) * dims[2] + cells[:, 2]


def unique_keys(keys: np.ndarray, **kwargs):
    """``np.unique`` of ``voxel_keys`` (rows when they are rows); the inverse is 1-D."""
    out = np.unique(keys, axis=0 if keys.ndim == 2 else None, **kwargs)
    if kwargs.get("return_inverse"):
        k = 1 + bool(kwargs.get("return_index"))
        out = (*out[:k], out[k].reshape(-1), *out[k + 1:])
    return out


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
    _, inverse, counts = unique_keys(voxel_keys(pts, size, group), return_inverse=True,
                                     return_counts=True)
    inverse = inverse.reshape(-1)
    out = np.stack([np.bincount(inverse, weights=pts[:, a], minlength=len(counts))
                    for a in range(3)], axis=1) / counts[:, None]
    first = np.zeros(len(counts), np.int64)
    first[inverse[::-1]] = group[::-1]                 # the group of each voxel
    new_off = np.zeros(G + 1, np.int64)
    np.cumsum(np.bincount(first, minlength=G), out=new_off[1:])
    return out.astype(np.float32), new_off
