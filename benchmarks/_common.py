"""Helpers shared by the benchmark scripts (run as `python benchmarks/<script>.py`, which puts this
folder on sys.path) and test/test_official_baseline.py."""
from __future__ import annotations

import hashlib

import numpy as np


def synthetic_room(n: int, boxes: int = 12, seed: int = 0, random_sizes: bool = False,
                   colors: bool = False):
    """A 5 m x 4 m room of ``n`` points: floor (40%), two walls (10% each) and ``boxes`` box
    surfaces, each one instance.

    Box point counts are equal, or with ``random_sizes`` drawn between 1/2 and 3/2 of the mean.
    Returns points (n, 3) float64, colours (n, 3) uint8 (one random colour a box; None unless
    ``colors``) and one index array per instance (floor, walls, boxes). A seed gives one room.
    """
    rng = np.random.default_rng(seed)
    n_floor, n_wall = int(0.4 * n), int(0.1 * n)
    parts = [np.c_[rng.uniform(0, 5, n_floor), rng.uniform(0, 4, n_floor), np.zeros(n_floor)],
             np.c_[rng.uniform(0, 5, n_wall), np.zeros(n_wall), rng.uniform(0, 2.5, n_wall)],
             np.c_[np.zeros(n_wall), rng.uniform(0, 4, n_wall), rng.uniform(0, 2.5, n_wall)]]
    cols = [np.tile([150, 140, 120], (n_floor, 1)), np.tile([220, 220, 210], (n_wall, 1)),
            np.tile([210, 210, 220], (n_wall, 1))]
    n_box = n - n_floor - 2 * n_wall
    if random_sizes:
        sizes = rng.integers(n_box // (2 * boxes), 3 * n_box // (2 * boxes), boxes).astype(float)
        counts = np.floor(sizes / sizes.sum() * n_box).astype(int)
    else:
        counts = np.full(boxes, n_box // boxes)
    counts[-1] += n_box - counts.sum()
    for m in counts:
        size = rng.uniform(0.2, 0.8, 3)
        origin = [rng.uniform(0.3, 4.2), rng.uniform(0.3, 3.2), 0.0]
        p = rng.uniform(0, 1, (m, 3)) * size
        face = rng.integers(0, 3, m)
        p[np.arange(m), face] = size[face] * (rng.random(m) < 0.5)
        parts.append(p + origin)
        if colors:      # drawn after the box's points: a room without colours has the same points
            cols.append(np.tile(rng.integers(0, 256, 3), (m, 1)))
    ends = np.cumsum([len(p) for p in parts])
    indices = [np.arange(e - len(p), e, dtype=np.int64) for p, e in zip(parts, ends)]
    return (np.vstack(parts),
            np.vstack(cols).astype(np.uint8) if colors else None, indices)


def image_key(image: np.ndarray) -> bytes:
    """A key that tells frames apart (their content hash)."""
    return hashlib.sha1(np.ascontiguousarray(image).tobytes()).digest()


class RoundBoxSegmenter:
    """Deterministic stand-in with SAM's per-round property: a round's mask is the box of its
    prompts grown by 2 px, its score a fixed function of the prompts, so the same rounds give the
    same answers batched or one at a time. Records every round as (image key, prompts) in
    ``calls`` and every call's winning box under (image key, all its prompts) in ``log``."""
    name = "round-box-standin"

    def __init__(self):
        self.calls: list[tuple[bytes, bytes]] = []
        self.log: dict[tuple[bytes, bytes], tuple[int, int, int, int]] = {}

    def set_image(self, image):
        self.image = image
        self.image_id = image_key(image)

    def predict(self, prompt_sets):
        prompt_sets = np.asarray(prompt_sets)
        H, W = self.image.shape[:2]
        scores = np.array([0.2 + ((p.sum() * 7919) % 101) / 101.0 for p in prompt_sets],
                          dtype=np.float32)
        best = prompt_sets[int(np.argmax(scores))].astype(int)
        x1, y1 = np.maximum(best.min(axis=0) - 2, 0)
        x2, y2 = np.minimum(best.max(axis=0) + 2, [W - 1, H - 1])
        mask = np.zeros((H, W), bool)
        mask[y1:y2 + 1, x1:x2 + 1] = True
        self.calls += [(self.image_id, p.astype(int).tobytes()) for p in prompt_sets]
        self.log[(self.image_id, prompt_sets.astype(int).tobytes())] = (x1, y1, x2, y2)
        return mask, scores


def official_sam_predict(predictor, prompt_sets) -> tuple[np.ndarray, np.ndarray]:
    """The official code's SAM call: segment-anything's ``SamPredictor.predict`` once per round
    (one mask, full resolution); the first round with the highest predicted IoU wins. Returns that
    mask and every round's score."""
    best, best_score, scores = None, -np.inf, []
    for prompt in np.asarray(prompt_sets, np.float32):
        masks, iou, _ = predictor.predict(point_coords=prompt,
                                          point_labels=np.ones(len(prompt), int),
                                          multimask_output=False)
        scores.append(float(iou[0]))
        if iou[0] > best_score:
            best, best_score = masks[0], float(iou[0])
    return best, np.asarray(scores, np.float32)
