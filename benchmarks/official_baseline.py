"""The official OpenMask3D feature stage, reimplemented with its structure and arithmetic.

Source: OpenMask3D/openmask3d @ 3bc3fc5, ``mask_features_computation/features_extractor.py``
(``PointProjector``, ``FeaturesExtractor.extract_features``), ``mask_features_computation/
utils.py`` (``run_sam``, ``mask2box_multi_level``) and ``data/load.py``
(``get_adapted_intrinsic``). It is independent of our visibility code on purpose, so that the
benchmark and the fidelity tests can see a deviation of ours:

- a dense views x masks x H x W boolean array of visible projected pixels;
- projection ``(K @ inv(pose)[:3] @ X_h.T).T`` stored into an int array (truncation),
  0 <= u < W, 0 <= v < H, two-sided occlusion ``|d - w| <= vis_threshold``, no w/d checks;
- view score = pixels set in the dense array; ``np.argsort(-scores, axis=0)[:k]`` per mask;
- per mask and view: ``set_image`` again, then ``num_random_rounds`` single-round decoder calls
  on a cumulatively shuffled copy of the view's pixels (``np.random.shuffle``; here a
  ``RandomState`` that stands for the global one), the first round with the highest score > 0;
- crops ``mask2box_multi_level`` (exclusive right/bottom edge, ``int(w * ratio) * level``), all
  crops of one mask encoded in one batch, the mean of the normalised crop features.

Models and data come through our interfaces (``SceneFolder``, ``Segmenter``, ``ImageEncoder``).
Where the official code crashes (every round scores <= 0) the view is skipped and recorded.
Prompt pixels are used on the colour image as is, like the official code (it assumes colour and
depth share a resolution).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def get_adapted_intrinsic(intrinsic: np.ndarray, original_hw, desired_hw) -> np.ndarray:
    """``Camera.get_adapted_intrinsic`` (sizes as (H, W), as the official code passes them)."""
    if tuple(original_hw) == tuple(desired_hw):
        return intrinsic
    resize_width = int(np.floor(desired_hw[1] * float(original_hw[0]) / float(original_hw[1])))
    adapted = intrinsic.copy()
    adapted[0, 0] *= float(resize_width) / float(original_hw[0])
    adapted[1, 1] *= float(desired_hw[1]) / float(original_hw[1])
    adapted[0, 2] *= float(desired_hw[0] - 1) / float(original_hw[0] - 1)
    adapted[1, 2] *= float(desired_hw[1] - 1) / float(original_hw[1] - 1)
    return adapted


@dataclass
class OfficialTrace:
    """What the official algorithm decided, for comparison with ours."""

    scores: np.ndarray | None = None                      # (F, M) pixels per view and mask
    topk: np.ndarray | None = None                        # (M, k) raw argsort rows
    pixels: dict = field(default_factory=dict)            # (m, view) -> (n, 2) x, y row-major
    prompts: dict = field(default_factory=dict)           # (m, view) -> (R, K, 2)
    boxes: dict = field(default_factory=dict)             # (m, view) -> [(x1, y1, x2, y2) excl]
    crashed: list = field(default_factory=list)           # (m, view): no round scored > 0
    set_image_calls: int = 0
    decoder_calls: int = 0


class PointProjector:
    """The official ``PointProjector`` (dense array and all)."""

    def __init__(self, points, masks, scene, frame_ids, vis_threshold):
        color = scene.color_intrinsics()
        first = scene.depth(frame_ids[0])
        self.resolution = first.shape
        self.intrinsic = get_adapted_intrinsic(color.K.copy(), (color.height, color.width),
                                               self.resolution)
        scale = float(getattr(scene, "depth_scale", 1000.0))
        H, W = self.resolution
        X = np.append(np.asarray(points, np.float64), np.ones((len(points), 1)), axis=-1)
        n_views, n_masks = len(frame_ids), masks.shape[1]
        projected = np.zeros((n_views, len(points), 2), dtype=int)
        visible_view = np.zeros((n_views, len(points)), dtype=bool)
        for i, fid in enumerate(frame_ids):
            pose = np.linalg.inv(scene.pose(fid))[:3, :]
            proj = (self.intrinsic @ pose @ X.T).T
            nz = proj[:, 2] != 0
            projected[i][nz] = np.column_stack([[proj[:, 0][nz] / proj[:, 2][nz],
                                                 proj[:, 1][nz] / proj[:, 2][nz]]]).T
            # imageio.imread(png) / depth_scale in float64 (our reader gives float32 metres)
            sensor_depth = np.rint(scene.depth(fid).astype(np.float64) * scale) / scale
            inside = ((projected[i, :, 0] >= 0) * (projected[i, :, 1] >= 0)
                      * (projected[i, :, 0] < W) * (projected[i, :, 1] < H))
            pi = projected[i].T
            vis = (np.abs(sensor_depth[pi[1][inside], pi[0][inside]] - proj[:, 2][inside])
                   <= vis_threshold).astype(bool)
            inside[inside == True] = vis  # noqa: E712 (the official statement)
            visible_view[i] = inside
        dense = np.zeros((n_views, n_masks, H, W), dtype=bool)
        for i in range(n_views):
            for j in range(n_masks):
                sel = (masks[:, j] * visible_view[i]) > 0
                pts = projected[i][sel]
                if len(pts) != 0:
                    dense[i][j][pts[:, 1], pts[:, 0]] = True
        self.visible_points_in_view_in_mask = dense

    def get_top_k_indices_per_mask(self, k):
        num = self.visible_points_in_view_in_mask.sum(axis=2).sum(axis=2)
        return np.argsort(-num, axis=0)[:k, :].T, num


def mask2box(mask):
    cols = np.nonzero(mask.sum(axis=0))[0]
    if len(cols) == 0:
        return None
    rows = np.nonzero(mask.sum(axis=1))[0]
    return int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1


def mask2box_multi_level(mask, level, expansion_ratio):
    x1, y1, x2, y2 = mask2box(mask)
    if level == 0:
        return x1, y1, x2, y2
    x_exp = int(abs(x2 - x1) * expansion_ratio) * level
    y_exp = int(abs(y2 - y1) * expansion_ratio) * level
    return (max(0, x1 - x_exp), max(0, y1 - y_exp), min(mask.shape[1], x2 + x_exp),
            min(mask.shape[0], y2 + y_exp))


def run_sam(num_random_rounds, num_selected_points, point_coords, segmenter, rs, trace, key):
    """The official ``run_sam``: one decoder call per round, best score strictly above 0."""
    best_score, best_mask = 0, None
    coords = np.zeros_like(point_coords)
    coords[:, 0] = point_coords[:, 1]
    coords[:, 1] = point_coords[:, 0]
    trace.pixels[key] = coords.copy()
    rounds = []
    for _ in range(num_random_rounds):
        rs.shuffle(coords)
        prompt = coords[:num_selected_points]
        rounds.append(prompt.copy())
        mask, scores = segmenter.predict(prompt[None].astype(np.float32))
        trace.decoder_calls += 1
        if scores[0] > best_score:
            best_score, best_mask = scores[0], mask
    trace.prompts[key] = np.stack(rounds)
    return best_mask


def official_features(points, masks, scene, frame_ids, segmenter, encoder, topk=5,
                      multi_level_expansion_ratio=0.1, num_levels=3, vis_threshold=0.2,
                      num_random_rounds=10, num_selected_points=5, seed=0):
    """(M, D) features as ``FeaturesExtractor.extract_features`` and an :class:`OfficialTrace`.

    ``seed`` seeds the stand-in for the global ``np.random`` state (``np.random.seed(seed)``).
    """
    trace = OfficialTrace()
    projector = PointProjector(points, masks, scene, frame_ids, vis_threshold)
    topk_indices, trace.scores = projector.get_top_k_indices_per_mask(topk)
    trace.topk = topk_indices
    rs = np.random.RandomState(seed)
    images = [scene.color(fid) for fid in frame_ids]
    features = np.zeros((masks.shape[1], encoder.dim), dtype=np.float64)
    for mask in range(masks.shape[1]):
        crops = []
        for view in topk_indices[mask]:
            view = int(view)
            point_coords = np.transpose(np.where(
                projector.visible_points_in_view_in_mask[view][mask] == True))  # noqa: E712
            if point_coords.shape[0] == 0:
                continue
            segmenter.set_image(images[view])
            trace.set_image_calls += 1
            best = run_sam(num_random_rounds, num_selected_points, point_coords, segmenter, rs,
                           trace, (mask, view))
            if best is None:
                trace.crashed.append((mask, view))
                continue
            trace.boxes[(mask, view)] = []
            for level in range(num_levels):
                x1, y1, x2, y2 = mask2box_multi_level(best, level, multi_level_expansion_ratio)
                trace.boxes[(mask, view)].append((x1, y1, x2, y2))
                crops.append(np.ascontiguousarray(images[view][y1:y2, x1:x2]))
        if crops:
            emb = encoder.encode_images(crops)
            emb = emb / np.linalg.norm(emb, axis=-1, keepdims=True)
            features[mask] = emb.mean(axis=0)
    return features, trace
