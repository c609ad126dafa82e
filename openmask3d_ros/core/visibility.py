"""Per-frame point visibility and the (frames x masks) view scores (paper Sec. 3.2).

Two fidelity modes (``fidelity`` in the config, see docs/fidelity.md):

- ``official`` (default), as OpenMask3D's ``PointProjector``: pixels are truncated toward zero
  and must satisfy 0 <= u < W, 0 <= v < H; a view's score for a mask is the number of *distinct
  pixels* its visible points cover.
- ``paper``: pixels are rounded, a point is in view when w > 0 and u/w in [0, W-1], v/w in
  [0, H-1]; the score is the number of visible *points*.

Occlusion: ``two_sided`` (the official test) keeps a point when ``|d - w| <= k_threshold``;
one-sided (the paper's text) drops it only when ``w - d > k_threshold``. d is the measured depth
at the pixel; in paper mode d = 0 (no measurement) always counts as occluded, the official code
has no such check.

Neither mode allocates a views x masks x H x W array: points are projected once per frame and
counted per mask with a sparse product (points) or ``np.unique`` over ``mask * H * W + pixel``
keys of the visible (point, mask) pairs (distinct pixels).
"""
from __future__ import annotations

import numpy as np
from scipy import sparse

from .camera import Intrinsics, official_adapted_intrinsic, project, project_pixels_official
from .fidelity import Fidelity


def frame_visibility(points: np.ndarray, cam_to_world: np.ndarray, depth: np.ndarray,
                     depth_intrinsics: Intrinsics, k_threshold: float = 0.2, *,
                     fidelity: Fidelity | str = Fidelity.OFFICIAL, two_sided: bool = True,
                     depth_scale: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Visible points (bool (P,)) and their pixel ids ``v * W + u`` (int64 (P,), -1 outside).

    ``depth_scale`` (official mode): the depth PNG's units per metre; float32 depth is
    re-quantised to the float64 ``raw / scale`` the official code compares against.
    """
    fidelity = Fidelity.parse(fidelity)
    if depth.shape != (depth_intrinsics.height, depth_intrinsics.width):
        raise ValueError(f"depth image is {depth.shape[1]}x{depth.shape[0]} but its intrinsics "
                         f"are for {depth_intrinsics.width}x{depth_intrinsics.height}")
    H, W = depth.shape
    pix = np.full(len(points), -1, dtype=np.int64)
    seen = np.zeros(len(points), dtype=bool)
    if fidelity is Fidelity.OFFICIAL:
        idx, u, v, w = _official_in_view(points, cam_to_world, depth_intrinsics)
        d = depth[v, u].astype(np.float64)
        if depth_scale:
            d = np.rint(d * depth_scale) / depth_scale
        ok = np.abs(d - w) <= k_threshold if two_sided else ~(w - d > k_threshold)
    else:
        uv, w = project(points, cam_to_world, depth_intrinsics.K)
        with np.errstate(invalid="ignore"):
            in_view = ((w > 0) & (uv[:, 0] >= 0) & (uv[:, 0] <= W - 1)
                       & (uv[:, 1] >= 0) & (uv[:, 1] <= H - 1))
        idx = np.flatnonzero(in_view)
        px = np.round(uv[idx]).astype(np.int64)
        u, v = px[:, 0], px[:, 1]
        d = depth[v, u]
        wi = w[idx]
        near = np.abs(d - wi) <= k_threshold if two_sided else ~(wi - d > k_threshold)
        ok = (d > 0) & near
    seen[idx] = ok
    pix[idx] = v * W + u
    return seen, pix


def projection_intrinsics(scene, fidelity: Fidelity | str) -> Intrinsics:
    """The depth-resolution camera visibility projects with: ``paper`` uses the scene's depth
    intrinsics; ``official`` adapts the colour intrinsics with the official formula (identical
    when colour and depth share a resolution)."""
    depth = scene.depth_intrinsics()
    if Fidelity.parse(fidelity) is Fidelity.PAPER:
        return depth
    color = scene.color_intrinsics()
    K = official_adapted_intrinsic(color.K, (color.height, color.width),
                                   (depth.height, depth.width))
    return Intrinsics(K, depth.width, depth.height)


def _official_in_view(points, cam_to_world, intr: Intrinsics):
    u, v, w = project_pixels_official(points, cam_to_world, intr.K)
    idx = np.flatnonzero((u >= 0) & (v >= 0) & (u < intr.width) & (v < intr.height))
    return idx, u[idx], v[idx], w[idx]


def official_pixel_ids(points: np.ndarray, cam_to_world: np.ndarray, intr: Intrinsics
                       ) -> np.ndarray:
    """Official-mode pixel ids ``v * W + u`` of all points (-1 outside), depth not needed."""
    idx, u, v, _ = _official_in_view(points, cam_to_world, intr)
    pix = np.full(len(points), -1, dtype=np.int64)
    pix[idx] = v * intr.width + u
    return pix


def visible_points(points: np.ndarray, cam_to_world: np.ndarray, depth: np.ndarray,
                   depth_intrinsics: Intrinsics, k_threshold: float = 0.2, **kwargs
                   ) -> np.ndarray:
    """Boolean (P,): the points seen (in view and not occluded) by a camera with this depth image.
    Keyword arguments as :func:`frame_visibility`."""
    return frame_visibility(points, cam_to_world, depth, depth_intrinsics, k_threshold,
                            **kwargs)[0]


def mask_matrix(masks: np.ndarray) -> sparse.csc_matrix:
    """Sparse float (P, M) version of boolean masks, for fast per-frame counting."""
    return sparse.csc_matrix(masks, dtype=np.float32)


def count_visible(seen: np.ndarray, masks_sparse: sparse.spmatrix) -> np.ndarray:
    """vis(i, j) for one frame j: visible points of each mask, int (M,)."""
    return np.asarray(masks_sparse.T @ seen.astype(np.float32)).ravel().round().astype(np.int64)


def count_pixels(seen: np.ndarray, pix: np.ndarray, masks_csr: sparse.csr_matrix,
                 num_pixels: int) -> np.ndarray:
    """Distinct pixels covered by each mask's visible points in one frame, int (M,).

    Equals the official ``visible_points_in_view_in_mask[j].sum((1, 2))`` without the dense
    array: one int64 key per visible (point, mask) pair, deduplicated.
    """
    M = masks_csr.shape[1]
    idx = np.flatnonzero(seen)
    if len(idx) == 0:
        return np.zeros(M, dtype=np.int64)
    pairs = masks_csr[idx].tocoo()
    keys = pairs.col.astype(np.int64) * num_pixels + pix[idx][pairs.row]
    return np.bincount(np.unique(keys) // num_pixels, minlength=M).astype(np.int64)


def mask_pixels(seen: np.ndarray, pix: np.ndarray, mask: np.ndarray, width: int) -> np.ndarray:
    """The distinct pixels (x, y) of one mask's visible points in row-major order, int (n, 2):
    the official ``np.where(visible_points_in_view_in_mask[view][mask])`` with x and y swapped."""
    ids = np.unique(pix[seen & mask])
    return np.stack([ids % width, ids // width], axis=1)


def select_views(counts: np.ndarray, k_view: int = 5, min_visible: int = 1,
                 tie_break: str = "stable") -> np.ndarray:
    """Top ``k_view`` frames per mask by score: (M, k_view) frame indices, -1 = none.

    Ranking by vis(i, j) equals ranking by s_ij = vis(i, j) / max_j vis(i, j).
    ``tie_break``: ``stable`` gives ties to the earlier frame on every platform (paper mode);
    ``official`` makes the official call ``np.argsort(-scores, axis=0)`` on the same int64
    (F, M) matrix: numpy's default sort, deterministic run to run, whose order of equal scores
    depends on the numpy version and CPU (introsort; SIMD sorts on AVX-512/AVX2), so ties fall
    exactly as in the official code run with the same numpy on the same machine.
    Views scoring below ``min_visible`` (at least 1) are -1: the official code skips them too.
    """
    kind = "stable" if tie_break == "stable" else None
    order = np.argsort(-np.asarray(counts, dtype=np.int64), axis=0, kind=kind)[:k_view].T
    chosen = np.take_along_axis(counts.T, order, axis=1)
    order = order.copy()
    order[chosen < max(min_visible, 1)] = -1
    if order.shape[1] < k_view:
        pad = np.full((order.shape[0], k_view - order.shape[1]), -1, dtype=order.dtype)
        order = np.concatenate([order, pad], axis=1)
    return order
