"""Per-instance open-vocabulary features: visibility -> top-k views -> 2D refinement -> crops ->
batched image encoding -> mean feature per instance (paper Sec. 3.2).

Each used frame's segmenter embedding is computed once, shared by every mask that chose that frame
(the official code re-embeds per mask and view). The segmenter pass goes first over all frames,
then the crop pass reads the frames again: crops of all masks and views are encoded in batches
and summed per mask as they go, so memory stays bounded.
"""
from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from collections.abc import Callable

import numpy as np
from scipy import sparse

from .build_cache import FeatureCache, image_hash
from .camera import project, usable_pose
from .config import PipelineConfig
from .crops import crop_boxes, cut
from .errors import BuildCancelled
from .fidelity import Fidelity
from .interfaces import ImageEncoder, Segmenter, l2_normalize
from .prompt_plan import plan_official_prompts
from .refine import points_box, refine_many, sample_prompts
from .view_sharing import share_views
from .scene import SceneError, SceneFolder
from .visibility import (count_pixels, count_visible, frame_visibility,
                         mask_matrix, projection_intrinsics, select_views)

log = logging.getLogger(__name__)
Progress = Callable[[str, int, int], None]


@dataclass
class FeatureReport:
    """What the feature stage did, for the map metadata."""

    frames_used: list[str] = field(default_factory=list)
    frames_skipped: dict[str, str] = field(default_factory=dict)
    views: list[list[str]] = field(default_factory=list)          # per instance
    fallbacks: list[int] = field(default_factory=list)            # per instance: point-box views
    segmenter_images: int = 0
    crops_encoded: int = 0
    view_sharing: dict = field(default_factory=dict)             # SharingReport, when enabled


class _CropBatcher:
    """Accumulates crops, encodes them in batches, sums embeddings per owner.

    ``add_group`` queues the crops of one (mask, view) and hands their embeddings to a callback
    once all are encoded (the build cache stores them); ``add_encoded`` sums embeddings known
    already (from the cache)."""

    def __init__(self, encoder: ImageEncoder, num_owners: int, batch_size: int):
        self.encoder = encoder
        self.batch_size = max(1, batch_size)
        self.sums = np.zeros((num_owners, encoder.dim), dtype=np.float64)
        self.counts = np.zeros(num_owners, dtype=np.int64)
        self._crops: list[np.ndarray] = []
        self._owners: list[int] = []
        self._tags: list[int | None] = []
        self._groups: dict[int, tuple[Callable[[np.ndarray], None], int, list]] = {}
        self._next_tag = 0
        self.encoded = 0
        self.reused = 0

    def add(self, crop: np.ndarray, owner: int, tag: int | None = None) -> None:
        self._crops.append(np.ascontiguousarray(crop))
        self._owners.append(owner)
        self._tags.append(tag)
        if len(self._crops) >= self.batch_size:
            self.flush()

    def add_group(self, crops: list[np.ndarray], owner: int,
                  done: Callable[[np.ndarray], None]) -> None:
        tag = self._next_tag
        self._next_tag += 1
        self._groups[tag] = (done, len(crops), [])
        for crop in crops:
            self.add(crop, owner, tag)

    def add_encoded(self, embeddings: np.ndarray, owner: int) -> None:
        np.add.at(self.sums, np.full(len(embeddings), owner), embeddings)
        self.counts[owner] += len(embeddings)
        self.reused += len(embeddings)

    def flush(self) -> None:
        if not self._crops:
            return
        emb = self.encoder.encode_images(self._crops)
        np.add.at(self.sums, np.asarray(self._owners), emb)
        np.add.at(self.counts, np.asarray(self._owners), 1)
        self.encoded += len(self._crops)
        for row, tag in zip(emb, self._tags):
            if tag is None:
                continue
            done, size, rows = self._groups[tag]
            rows.append(row)
            if len(rows) == size:
                del self._groups[tag]
                done(np.stack(rows))
        self._crops, self._owners, self._tags = [], [], []

    def features(self) -> np.ndarray:
        """(owners, D) float32: each owner's mean embedding, L2-normalised (zero for an owner
        without crops). Call after ``flush``."""
        features = l2_normalize(self.sums / np.maximum(self.counts, 1)[:, None])
        features[self.counts == 0] = 0.0
        return features.astype(np.float32)


def check_cancel(cancel: Callable[[], bool] | None) -> None:
    """``BuildCancelled`` when ``cancel()`` says so."""
    if cancel is not None and cancel():
        raise BuildCancelled("the map build was cancelled")


def frame_pose(scene: SceneFolder, fid: str) -> np.ndarray | None:
    """The frame's camera-to-world pose, or None when unusable (non-finite, e.g. lost tracking)."""
    return usable_pose(scene.pose(fid))


def visibility_counts(points: np.ndarray, masks: np.ndarray, scene: SceneFolder,
                      frame_ids: list[str], k_threshold: float, report: FeatureReport,
                      progress: Progress | None = None,
                      seen_out: dict[int, np.ndarray] | None = None,
                      fidelity: Fidelity | str = Fidelity.OFFICIAL, two_sided: bool = True
                      ) -> np.ndarray:
    """View scores for all frames j and masks i: int (F, M), visible points (``paper``) or
    distinct pixels they cover (``official``). Unusable frames count zero.

    ``seen_out`` (optional) receives each usable frame's visible points, bit-packed (P/8 bytes a
    frame), so later stages need not reload depth and project again.
    """
    fidelity = Fidelity.parse(fidelity)                # a bad fidelity fails here, not per frame
    paper = fidelity is Fidelity.PAPER
    K_depth = projection_intrinsics(scene, fidelity)
    S = mask_matrix(masks) if paper else sparse.csr_matrix(masks)
    num_pixels = K_depth.width * K_depth.height
    counts = np.zeros((len(frame_ids), masks.shape[1]), dtype=np.int64)
    for j, fid in enumerate(frame_ids):
        pose = frame_pose(scene, fid)
        if pose is None:
            report.frames_skipped[fid] = "non-finite pose"
            log.warning("frame %s skipped: non-finite pose", fid)
            continue
        try:
            depth = scene.depth(fid)
            seen, pix = frame_visibility(points, pose, depth, K_depth, k_threshold,
                                         fidelity=fidelity, two_sided=two_sided,
                                         depth_scale=getattr(scene, "depth_scale", None))
        except (SceneError, ValueError) as exc:       # a bad frame is skipped, not fatal
            report.frames_skipped[fid] = str(exc)
            log.warning("frame %s skipped: %s", fid, exc)
            continue
        counts[j] = (count_visible(seen, S) if paper
                     else count_pixels(seen, pix, S, num_pixels))
        if seen_out is not None:
            seen_out[j] = np.packbits(seen)
        if progress:
            progress("visibility", j + 1, len(frame_ids))
    return counts


def compute_features(points: np.ndarray, masks: np.ndarray, scene: SceneFolder,
                     frame_ids: list[str], segmenter: Segmenter, encoder: ImageEncoder,
                     cfg: PipelineConfig, progress: Progress | None = None,
                     cache: FeatureCache | None = None,
                     cancel: Callable[[], bool] | None = None,
                     segmenter_done: Callable[[], None] | None = None
                     ) -> tuple[np.ndarray, FeatureReport]:
    """(M, D) L2-normalised features (zero rows for instances no frame sees) and a report.

    Two passes over the viewed frames: the segmenter refines every (mask, view), then the crops
    are cut and encoded, so the two models' weights and work memory are never needed at once;
    ``segmenter_done()`` is called between them (a one-shot run frees the segmenter there).

    ``cache`` (core/build_cache.py): reuse a previous build's embeddings, refinements and crop
    embeddings where their inputs are unchanged (the result is the same). ``cancel()`` is
    checked before each frame; True stops the build (``BuildCancelled``)."""
    report = FeatureReport()
    M = masks.shape[1]
    seen_packed: dict[int, np.ndarray] = {}
    official = cfg.fidelity == Fidelity.OFFICIAL
    check_cancel(cancel)
    counts = visibility_counts(points, masks, scene, frame_ids, cfg.visibility.k_threshold,
                               report, progress, seen_packed, cfg.fidelity,
                               cfg.visibility.two_sided)
    check_cancel(cancel)
    views = _choose_views(counts, cfg, official, report)
    report.views = [[frame_ids[j] for j in row if j >= 0] for row in views]
    report.fallbacks = [0] * M
    by_frame = _masks_by_frame(views)

    K_color = scene.color_intrinsics()
    plan = (_official_prompt_plan(points, masks, views, seen_packed, scene, frame_ids,
                                  K_color, cfg) if official else None)
    refined = _segment_frames(by_frame, points, masks, scene, frame_ids, seen_packed, plan,
                              segmenter, K_color, cfg, report, cache, progress, cancel)
    if segmenter_done is not None:
        segmenter_done()
    batcher = _CropBatcher(encoder, M, cfg.encoder.batch_size)
    for done, (j, fhash, jobs, results) in enumerate(refined):
        check_cancel(cancel)
        fid = frame_ids[j]
        image = _color_frame(scene, fid, K_color, report)
        if image is None:                              # unreadable since the segmenter pass
            report.frames_used.remove(fid)
            report.segmenter_images -= 1
            continue
        _add_crops(batcher, image, jobs, results, K_color, cfg, report, cache, fhash)
        if progress:
            progress("features", len(by_frame) + done + 1, 2 * len(by_frame))
    batcher.flush()
    report.crops_encoded = batcher.encoded + batcher.reused    # as a build from scratch
    return batcher.features(), report


def _segment_frames(by_frame: dict[int, list[int]], points: np.ndarray, masks: np.ndarray,
                    scene: SceneFolder, frame_ids: list[str], seen_packed: dict[int, np.ndarray],
                    plan, segmenter: Segmenter, K_color, cfg: PipelineConfig,
                    report: FeatureReport, cache: FeatureCache | None,
                    progress: Progress | None, cancel: Callable[[], bool] | None) -> list:
    """The segmenter pass: each viewed frame's refined boxes, as (frame index, content hash,
    prompt jobs, results) in frame order. Images are read one at a time and not kept (the crop
    pass reads them again), so neither pass holds more than one frame."""
    refined = []
    for done, j in enumerate(sorted(by_frame)):
        check_cancel(cancel)
        fid = frame_ids[j]
        image = _color_frame(scene, fid, K_color, report)
        if image is None:                              # its masks keep their other views
            continue
        seen = np.unpackbits(seen_packed[j], count=len(points)).astype(bool)
        # segmenter_images counts the frames the map rests on, embedded now or in the cache
        report.segmenter_images += 1
        report.frames_used.append(fid)
        # all masks of this frame are prompted together: a segmenter with predict_many shares
        # decoder calls between them (on a GPU, one call for every round of every mask)
        jobs = _prompt_jobs(by_frame[j], j, plan, points, masks, seen, scene.pose(fid),
                            K_color, cfg)
        fhash = None if cache is None else image_hash(image)
        refined.append((j, fhash, jobs, _refine_frame(segmenter, image, fid, fhash, jobs, cfg,
                                                      cache)))
        if progress:
            progress("features", done + 1, 2 * len(by_frame))
    return refined


def _official_prompt_plan(points: np.ndarray, masks: np.ndarray, views: np.ndarray,
                          seen_packed: dict[int, np.ndarray], scene: SceneFolder,
                          frame_ids: list[str], K_color: np.ndarray, cfg: PipelineConfig):
    """Official fidelity: every (mask, view)'s prompts drawn up front (core/prompt_plan.py)."""
    return plan_official_prompts(
        points, masks, views,
        lambda j: np.unpackbits(seen_packed[j], count=len(points)).astype(bool),
        lambda j: scene.pose(frame_ids[j]), projection_intrinsics(scene, Fidelity.OFFICIAL),
        K_color,
        cfg.segmenter.k_rounds, cfg.segmenter.k_sample, cfg.seed,
        per_view=cfg.segmenter.prompt_seeding == "per_view")


def _refine_frame(segmenter: Segmenter, image: np.ndarray, fid: str, fhash: str | None,
                  jobs: list, cfg: PipelineConfig, cache: FeatureCache | None) -> list:
    """The segmenter's refinement of every prompt job of one frame (through the build cache
    when there is one: ``fhash`` is then the frame's content hash)."""
    if cache is None:
        segmenter.set_image(image)
        return refine_many(segmenter, [p for _, p, _ in jobs], [b for _, _, b in jobs],
                           cfg.segmenter.min_score)
    return cache.refine(segmenter, image, fid, fhash, jobs)


def _choose_views(counts: np.ndarray, cfg: PipelineConfig, official: bool,
                  report: FeatureReport) -> np.ndarray:
    """Top-k views per mask (rows of frame indices, -1 = none), shared when configured."""
    views = select_views(counts, cfg.visibility.k_view, cfg.visibility.min_visible_points,
                         "official" if official else "stable")
    if cfg.visibility.share_fraction > 0:             # opt-in: fewer frames for SAM to embed
        views, sharing = share_views(counts, views, cfg.visibility.share_fraction,
                                     cfg.visibility.min_visible_points)
        report.view_sharing = sharing.to_dict()
        log.info("view sharing (fraction %.2f): %d frames to embed instead of %d, visible points "
                 "lost %.1f%% mean, %.1f%% max", sharing.fraction, sharing.frames_shared,
                 sharing.frames_topk, 100 * sharing.visibility_lost_mean,
                 100 * sharing.visibility_lost_max)
    return views


def _masks_by_frame(views: np.ndarray) -> dict[int, list[int]]:
    """Frame index -> the masks that chose it as a view, in mask order."""
    by_frame: dict[int, list[int]] = defaultdict(list)
    for m, row in enumerate(views):
        for j in row[row >= 0]:
            by_frame[int(j)].append(m)
    return by_frame


def _color_frame(scene: SceneFolder, fid: str, K_color, report: FeatureReport
                 ) -> np.ndarray | None:
    """The frame's colour image, or None (recorded as skipped) when unreadable or of the wrong
    size for the colour intrinsics."""
    try:
        image = scene.color(fid)
        if image.shape[:2] != (K_color.height, K_color.width):
            raise ValueError(f"colour frame {fid} is {image.shape[1]}x{image.shape[0]}, the "
                             f"intrinsics are for {K_color.width}x{K_color.height}")
    except (SceneError, ValueError) as exc:
        report.frames_skipped[fid] = str(exc)
        log.warning("frame %s skipped: %s", fid, exc)
        return None
    return image


def _prompt_jobs(mask_ids: list[int], j: int, plan, points: np.ndarray, masks: np.ndarray,
                 seen: np.ndarray, pose: np.ndarray, K_color, cfg: PipelineConfig
                 ) -> list[tuple[int, np.ndarray, tuple[int, int, int, int]]]:
    """(mask, point prompts, box) for each mask viewed in frame ``j``: from the official plan
    when there is one, else sampled from the mask's visible points projected into the frame."""
    s = cfg.segmenter
    jobs: list[tuple[int, np.ndarray, tuple[int, int, int, int]]] = []
    for m in mask_ids:
        if plan is not None:
            if (m, j) not in plan.prompts:
                continue
            jobs.append((m, plan.prompts[(m, j)], plan.boxes[(m, j)]))
        else:
            idx = np.flatnonzero(masks[:, m] & seen)
            uv, _ = project(points[idx], pose, K_color.K)
            uv = np.clip(uv, 0, [K_color.width - 1, K_color.height - 1])
            rng = np.random.default_rng([cfg.seed, m, j])
            jobs.append((m, sample_prompts(uv, s.k_rounds, s.k_sample, rng),
                         points_box(uv, K_color.width, K_color.height)))
    return jobs


def _add_crops(batcher: _CropBatcher, image: np.ndarray, jobs: list, results: list, K_color,
               cfg: PipelineConfig, report: FeatureReport, cache: FeatureCache | None = None,
               fhash: str | None = None) -> None:
    """Count the refinement fallbacks and queue the multi-level crops of each refined box (or
    take their embeddings from the cache)."""
    c = cfg.crops
    for (m, _, _), result in zip(jobs, results):
        report.fallbacks[m] += int(result.fallback)
        boxes = crop_boxes(result.box, K_color.width, K_color.height, c.levels, c.k_exp,
                           cfg.fidelity)
        if cache is None:
            for box in boxes:
                batcher.add(cut(image, box), m)
            continue
        key = cache.crops_key(fhash, boxes)
        known = cache.crops(key, len(boxes), batcher.encoder.dim)
        if known is not None:
            batcher.add_encoded(known, m)
        else:
            batcher.add_group([cut(image, box) for box in boxes], m,
                              lambda emb, key=key: cache.store_crops(key, emb))
