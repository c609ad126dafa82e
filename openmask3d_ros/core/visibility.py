"""Per-frame point visibility and the (frames x masks) visible-point counts (paper Sec. 3.2).

A point is in view when w != 0 and its pixel lies in [0, W-1] x [0, H-1]; it is occluded when
``w - d > k_threshold`` with d the measured depth at its pixel (0 = no measurement -> occluded).
Counts are accumulated per frame with one sparse product, never a views x masks x H x W array.
"""
from __future__ import annotations

import numpy as np
from scipy import sparse

from .camera import Intrinsics, project


def visible_points(points: np.ndarray, cam_to_world: np.ndarray, depth: np.ndarray,
                   depth_intrinsics: Intrinsics, k_threshold: float = 0.2) -> np.ndarray:
    """Boolean (P,): the points seen (in view and not occluded) by a camera with this depth image."""
    if depth.shape != (depth_intrinsics.height, depth_intrinsics.width):
        raise ValueError(f"depth image is {depth.shape[1]}x{depth.shape[0]} but its intrinsics "
                         f"are for {depth_intrinsics.width}x{depth_intrinsics.height}")
    uv, w = project(points, cam_to_world, depth_intrinsics.K)
    H, W = depth.shape
    with np.errstate(invalid="ignore"):
        in_view = ((w > 0) & (uv[:, 0] >= 0) & (uv[:, 0] <= W - 1)
                   & (uv[:, 1] >= 0) & (uv[:, 1] <= H - 1))
    idx = np.flatnonzero(in_view)
    px = np.round(uv[idx]).astype(np.int64)
    d = depth[px[:, 1], px[:, 0]]
    seen = np.zeros(len(points), dtype=bool)
    seen[idx] = (d > 0) & ~(w[idx] - d > k_threshold)
    return seen


def mask_matrix(masks: np.ndarray) -> sparse.csc_matrix:
    """Sparse float (P, M) version of boolean masks, for fast per-frame counting."""
    return sparse.csc_matrix(masks, dtype=np.float32)


def count_visible(seen: np.ndarray, masks_sparse: sparse.csc_matrix) -> np.ndarray:
    """vis(i, j) for one frame j: visible points of each mask, int (M,)."""
    return np.asarray(masks_sparse.T @ seen.astype(np.float32)).ravel().round().astype(np.int64)


def select_views(counts: np.ndarray, k_view: int = 5, min_visible: int = 1) -> np.ndarray:
    """Top ``k_view`` frames per mask by visible-point count: (M, k_view) frame indices, -1 = none.

    Ranking by vis(i, j) equals ranking by s_ij = vis(i, j) / max_j vis(i, j). Ties go to the
    earlier frame (stable sort) so runs are reproducible.
    """
    order = np.argsort(-counts, axis=0, kind="stable")[:k_view].T          # (M, k)
    chosen = np.take_along_axis(counts.T, order, axis=1)
    order = order.copy()
    order[chosen < max(min_visible, 1)] = -1
    if order.shape[1] < k_view:
        pad = np.full((order.shape[0], k_view - order.shape[1]), -1, dtype=order.dtype)
        order = np.concatenate([order, pad], axis=1)
    return order
