"""Training-free geometric proposals: peel off dominant planes (RANSAC), cluster the rest.

The weight-free default when no Mask3D checkpoint is configured. Each dominant plane (floor,
table top, wall) becomes a proposal and every Euclidean cluster above the planes becomes one; the
pipeline's DBSCAN split then separates disconnected parts. It is a stand-in for Mask3D, good on
tidy tabletop/room scenes where objects are spatially separated, not a learned segmenter.
"""
from __future__ import annotations

import numpy as np
from sklearn.cluster import DBSCAN

from ..config import ProposalConfig
from ..dbscan_split import voxel_representatives
from ..interfaces import Proposals


def ransac_plane(points: np.ndarray, distance: float, rng: np.random.Generator,
                 iterations: int = 200, sample: int = 20000) -> np.ndarray:
    """Boolean inliers of the plane with the most support (scored on a random subsample)."""
    if len(points) < 3:
        return np.zeros(len(points), dtype=bool)
    sub = points[rng.choice(len(points), size=min(sample, len(points)), replace=False)]
    tri = sub[rng.integers(0, len(sub), size=(iterations, 3))]
    normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    norms = np.linalg.norm(normals, axis=1)
    ok = norms > 1e-9
    normals, tri = normals[ok] / norms[ok, None], tri[ok]
    if len(normals) == 0:
        return np.zeros(len(points), dtype=bool)
    offsets = -np.einsum("ij,ij->i", normals, tri[:, 0])
    support = (np.abs(sub @ normals.T + offsets) < distance).sum(axis=0)
    best = int(np.argmax(support))
    inliers = np.abs(points @ normals[best] + offsets[best]) < distance
    # Refit by least squares on the inliers for a plane that does not hinge on three points.
    centre = points[inliers].mean(axis=0)
    _, _, vt = np.linalg.svd(points[inliers] - centre, full_matrices=False)
    normal = vt[-1]
    return np.abs((points - centre) @ normal) < distance


class GeometricProposals:
    """ProposalBackend: planes + Euclidean clusters on a voxel grid, mapped back to every point."""

    name = "geometric-standin"
    uses_segments = False

    def __init__(self, cfg: ProposalConfig | None = None, seed: int = 0):
        self.cfg = cfg or ProposalConfig()
        self.seed = seed

    def propose(self, points: np.ndarray, colors: np.ndarray,
                segments: np.ndarray | None = None) -> Proposals:
        c = self.cfg
        rng = np.random.default_rng(self.seed)
        reps, inverse = voxel_representatives(np.asarray(points, dtype=np.float64), c.voxel_size)
        remaining = np.arange(len(reps))
        groups: list[np.ndarray] = []
        for _ in range(c.max_planes):
            if len(remaining) < 3:
                break
            inliers = ransac_plane(reps[remaining], c.plane_distance, rng)
            if inliers.sum() < c.plane_min_fraction * len(reps):
                break
            groups.append(remaining[inliers])
            remaining = remaining[~inliers]
        if len(remaining):
            labels = DBSCAN(eps=c.cluster_eps, min_samples=4).fit(reps[remaining]).labels_
            for label in np.unique(labels[labels >= 0]):
                members = remaining[labels == label]
                if len(members) >= c.cluster_min_points:
                    groups.append(members)
        group_of_rep = np.full(len(reps), -1, dtype=np.int64)
        for g, members in enumerate(groups):
            group_of_rep[members] = g
        point_group = group_of_rep[inverse]
        masks = np.zeros((len(points), len(groups)), dtype=bool)
        has = point_group >= 0
        masks[np.flatnonzero(has), point_group[has]] = True
        return Proposals(masks)
