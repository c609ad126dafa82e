"""STAND-IN segmenter (weight-free): the filled convex hull of all prompt points.

Used when no SAM checkpoint is configured, for tests and the built-in demo. It is not SAM.
"""
from __future__ import annotations

import cv2
import numpy as np


class HullSegmenter:
    """Mask = convex hull of every prompt point of every round, slightly dilated; score 1."""

    name = "hull-standin"

    def __init__(self, dilate_px: int = 2):
        self.dilate_px = dilate_px
        self._shape: tuple[int, int] | None = None
        self.encoder_calls = 0

    def set_image(self, image: np.ndarray) -> None:
        self._shape = image.shape[:2]
        self.encoder_calls += 1

    def predict(self, prompt_sets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self._shape is None:
            raise RuntimeError("set_image must be called before predict")
        h, w = self._shape
        pts = np.asarray(prompt_sets, dtype=np.float64).reshape(-1, 2)
        pts = np.round(pts[np.all(np.isfinite(pts), axis=1)]).astype(np.int32)
        mask = np.zeros((h, w), dtype=np.uint8)
        if len(pts):
            hull = cv2.convexHull(pts.reshape(-1, 1, 2))
            cv2.fillConvexPoly(mask, hull, 1)
            if self.dilate_px > 0:
                k = 2 * self.dilate_px + 1
                mask = cv2.dilate(mask, np.ones((k, k), np.uint8))
        scores = np.full(len(prompt_sets), 1.0 if len(pts) else 0.0, dtype=np.float32)
        return mask.astype(bool), scores
