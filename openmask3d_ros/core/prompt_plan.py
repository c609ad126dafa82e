"""Official-fidelity SAM prompts for every chosen (mask, view), drawn in the official order.

OpenMask3D loops mask by mask, view by view (in rank order), and shuffles that view's distinct
mask pixels ``k_rounds`` times with the global ``np.random`` state (never seeded). Our feature
stage visits frames instead (one SAM embedding per frame), so the prompts are drawn up front:
by default each (mask, frame) from a ``RandomState([seed, m, j])`` of its own (rebuilds redo only
changed views), or (``per_view=False``) in the official order from one ``RandomState(seed)``,
the same prompts the official code draws after ``np.random.seed(seed)``. Only the pixel sets of
chosen pairs are held, briefly (at most k_view x mask points).
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from collections.abc import Callable

import numpy as np

from .camera import Intrinsics
from .refine import official_prompts
from .visibility import mask_pixels, official_pixel_ids


@dataclass
class PromptPlan:
    """Per (mask, frame index): prompts (R, K, 2) in colour pixels and the fallback box."""

    prompts: dict[tuple[int, int], np.ndarray] = field(default_factory=dict)
    boxes: dict[tuple[int, int], tuple[int, int, int, int]] = field(default_factory=dict)
    pixels: dict[tuple[int, int], np.ndarray] = field(default_factory=dict)   # keep_pixels only


def plan_official_prompts(points: np.ndarray, masks: np.ndarray, views: np.ndarray,
                          seen_of: Callable[[int], np.ndarray],
                          pose_of: Callable[[int], np.ndarray], depth_intr: Intrinsics,
                          color_intr: Intrinsics, k_rounds: int, k_sample: int, seed: int,
                          *, per_view: bool, keep_pixels: bool = False) -> PromptPlan:
    """Prompts for ``views`` ((M, k) frame indices, -1 = none) as the official ``run_sam``.

    ``seen_of(j)`` / ``pose_of(j)``: frame j's visible points and camera-to-world pose. Pixels
    are found at depth resolution (as the official code); when the colour image differs in size
    they are scaled to it (the official code would use depth pixels on the colour image as is).
    ``per_view``: each (mask m, frame j) draws from its own ``RandomState([seed, m, j])``
    (``segmenter.prompt_seeding: per_view``), else all from the one stream (``stream``): the same
    shuffles, so the same distribution of prompts, but with ``per_view`` a pair's prompts do not
    depend on the masks before it.
    """
    by_frame: dict[int, list[int]] = defaultdict(list)
    for m, row in enumerate(views):
        for j in row[row >= 0]:
            by_frame[int(j)].append(m)
    pixels: dict[tuple[int, int], np.ndarray] = {}
    for j in sorted(by_frame):
        seen = seen_of(j)
        pix = official_pixel_ids(points, pose_of(j), depth_intr)
        for m in by_frame[j]:
            pixels[(m, j)] = mask_pixels(seen, pix, masks[:, m], depth_intr.width)
    plan = PromptPlan()
    rs = np.random.RandomState(seed)
    scale = np.array([color_intr.width / depth_intr.width, color_intr.height / depth_intr.height])
    same = bool(np.all(scale == 1))
    for m, row in enumerate(views):
        for j in row[row >= 0]:
            key = (m, int(j))
            px = pixels[key] if keep_pixels else pixels.pop(key)
            if keep_pixels:
                plan.pixels[key] = px
            if len(px) == 0:          # the official code skips views without pixels (no draw)
                continue
            draws = np.random.RandomState([seed, m, int(j)]) if per_view else rs
            prompts = official_prompts(px, k_rounds, k_sample, draws).astype(np.float32)
            lo, hi = px.min(axis=0), px.max(axis=0)
            if not same:
                prompts = prompts * scale.astype(np.float32)
                lo, hi = np.floor(lo * scale), np.minimum(np.ceil(hi * scale),
                                                          [color_intr.width - 1,
                                                           color_intr.height - 1])
            plan.prompts[key] = prompts
            plan.boxes[key] = (int(lo[0]), int(lo[1]), int(hi[0]), int(hi[1]))
    return plan
