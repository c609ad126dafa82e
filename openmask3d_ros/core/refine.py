"""2D mask refinement of projected 3D points with a promptable segmenter (paper Alg. 1)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .interfaces import Segmenter


@dataclass
class Refined2D:
    box: tuple[int, int, int, int]      # x1, y1, x2, y2 inclusive pixel coordinates
    score: float
    fallback: bool                      # True: no round scored above min_score -> point box


def sample_prompts(uv: np.ndarray, k_rounds: int, k_sample: int, rng: np.random.Generator
                   ) -> np.ndarray:
    """(k_rounds, k, 2) random subsets of the projected points (k = min(k_sample, n))."""
    n = len(uv)
    k = min(k_sample, n)
    idx = np.stack([rng.choice(n, size=k, replace=False) for _ in range(k_rounds)])
    return uv[idx]


def official_prompts(pixels: np.ndarray, k_rounds: int, k_sample: int,
                     rs: np.random.RandomState) -> np.ndarray:
    """(k_rounds, k, 2) prompts drawn as OpenMask3D's ``run_sam`` draws them.

    ``pixels``: the distinct (x, y) pixels of the mask in the view, row-major order. Each round
    shuffles the *same* array again (cumulatively) and takes its first ``k_sample`` rows; ``rs``
    plays the role of the official code's global ``np.random`` state, so with
    ``np.random.seed(s)`` before the official ``extract_features`` and ``rs = RandomState(s)``
    consumed in the same mask-major, view-rank order, both draw the same prompts.
    """
    coords = np.asarray(pixels, dtype=np.int64)
    # Shuffling a 1-D index array draws exactly what shuffling the (n, 2) rows draws (the same
    # Fisher-Yates steps), but runs without the GIL and ~100x faster (a row shuffle is a Python-
    # level loop): the node's queries are not held up by a build's prompt planning.
    order = np.arange(len(coords))
    rounds = []
    for _ in range(k_rounds):
        rs.shuffle(order)
        rounds.append(coords[order[:k_sample]])
    return np.stack(rounds)


def points_box(uv: np.ndarray, width: int, height: int) -> tuple[int, int, int, int]:
    """Inclusive pixel box around points, clipped to the image."""
    x1, y1 = np.floor(uv.min(axis=0)).astype(int)
    x2, y2 = np.ceil(uv.max(axis=0)).astype(int)
    return (max(0, x1), max(0, y1), min(width - 1, x2), min(height - 1, y2))


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Inclusive pixel box of a boolean mask, None when empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if len(rows) == 0:
        return None
    return (int(cols[0]), int(rows[0]), int(cols[-1]), int(rows[-1]))


def refine(segmenter: Segmenter, uv: np.ndarray, width: int, height: int, k_rounds: int,
           k_sample: int, rng: np.random.Generator, min_score: float = 0.0) -> Refined2D:
    """Best-of-``k_rounds`` segmentation from ``k_sample`` sampled prompts (image already set).

    When no round scores above ``min_score`` or the best mask is empty (the official code crashes
    there), the box of the projected points is used instead and ``fallback`` is set.
    """
    prompts = sample_prompts(uv, k_rounds, k_sample, rng)
    return refine_prompts(segmenter, prompts, points_box(uv, width, height), min_score)


def refine_prompts(segmenter: Segmenter, prompts: np.ndarray,
                   fallback_box: tuple[int, int, int, int], min_score: float = 0.0) -> Refined2D:
    """The best round's mask box for prepared ``(R, K, 2)`` prompts (the first of equal scores,
    as the official ``scores[0] > best_score`` loop), or ``fallback_box`` when no round scores
    above ``min_score`` or the mask is empty (the official code crashes there)."""
    mask, scores = segmenter.predict(np.asarray(prompts, dtype=np.float32))
    return best_box(mask, scores, fallback_box, min_score)


def refine_many(segmenter: Segmenter, prompt_list: list[np.ndarray],
                fallback_boxes: list[tuple[int, int, int, int]], min_score: float = 0.0
                ) -> list[Refined2D]:
    """``refine_prompts`` for several masks on the current image, in order. A segmenter with
    ``predict_many`` (SAM) answers them together, sharing decoder calls."""
    prompt_list = [np.asarray(p, dtype=np.float32) for p in prompt_list]
    many = getattr(segmenter, "predict_many", None)
    answers = many(prompt_list) if many else [segmenter.predict(p) for p in prompt_list]
    return [best_box(mask, scores, box, min_score)
            for (mask, scores), box in zip(answers, fallback_boxes)]


def best_box(mask: np.ndarray, scores: np.ndarray, fallback_box: tuple[int, int, int, int],
             min_score: float = 0.0) -> Refined2D:
    """The winning mask's box, or ``fallback_box`` when no score beats ``min_score`` or the mask
    is empty."""
    best = float(np.max(scores)) if len(scores) else float("-inf")
    box = mask_box(mask) if best > min_score else None
    if box is None:
        return Refined2D(tuple(int(c) for c in fallback_box), best, True)
    return Refined2D(box, best, False)
