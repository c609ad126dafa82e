"""A bound on what an input cloud may cost: a cloud larger than ``max_cloud_points`` is thinned
on a voxel grid before the build, keeping one original point per occupied voxel.

Every later stage (proposals, visibility, features, the map) scales with the point count: a
5M-point cloud cost 96 s and a 6.6 GB peak for a map that a 1M-point one describes as well (a
grid of a few millimetres is finer than the depth noise). The kept points are original points
(not averages), so the map's cloud is a subset of the input and ``source_index`` maps each of
its points back to the input cloud (``InstanceMap.source_indices``).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from .voxel import unique_keys, voxel_keys

log = logging.getLogger(__name__)


@dataclass
class CappedCloud:
    """The cloud to build on; ``source_index`` (N,) int64 into the input cloud, or None when
    the input was kept whole."""

    points: np.ndarray
    colors: np.ndarray | None
    source_index: np.ndarray | None = None
    source_points: int = 0
    voxel: float = 0.0                   # m, the grid used (0: not thinned)


def cap_cloud(points: np.ndarray, colors: np.ndarray | None, max_points: int) -> CappedCloud:
    """``points`` as is when ``max_points`` is 0 or not exceeded; else thinned on a voxel grid
    (first sized from the cloud's extent, coarsened until at most ``max_points`` points are
    left), the first point of each voxel kept, in the input order."""
    n = len(points)
    if max_points <= 0 or n <= max_points:
        return CappedCloud(points, colors, None, n)
    extent = float(np.max(points.max(axis=0) - points.min(axis=0)))
    # a surface fills voxels in proportion to 1 / voxel^2: start finer than a sheet of the
    # cloud's extent would need, then grow by the square root of the excess until the count
    # fits (3-5 rounds on scans, ending within a few % of the cap)
    voxel = max(extent / np.sqrt(max_points) / 4, 1e-6)
    while True:
        keep = _first_per_voxel(points, voxel)
        if len(keep) <= max_points:
            break
        voxel *= max(1.02, float(np.sqrt(len(keep) / max_points)))
    log.warning("the cloud has %d points, more than max_cloud_points=%d: built on %d points, "
                "one per %.1f mm voxel (the map keeps their indices into the input cloud)",
                n, max_points, len(keep), voxel * 1e3)
    return CappedCloud(points[keep], None if colors is None else colors[keep], keep, n, voxel)


def _first_per_voxel(points: np.ndarray, voxel: float) -> np.ndarray:
    """Sorted indices of the first point in each occupied voxel."""
    _, first = unique_keys(voxel_keys(points, voxel), return_index=True)
    first.sort()
    return first
