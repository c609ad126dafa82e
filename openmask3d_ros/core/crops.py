"""Multi-scale crops around a 2D box (paper Sec. 3.2, L levels, expansion k_exp per level)."""
from __future__ import annotations

import numpy as np


def crop_boxes(box: tuple[int, int, int, int], width: int, height: int, levels: int = 3,
               k_exp: float = 0.1) -> list[tuple[int, int, int, int]]:
    """Level l expands the box by (x2-x1)*k_exp*l and (y2-y1)*k_exp*l on each side, clipped.

    Boxes are inclusive pixel coordinates (x1, y1, x2, y2).
    """
    x1, y1, x2, y2 = box
    out = []
    for level in range(levels):
        dx = int((x2 - x1) * k_exp * level)
        dy = int((y2 - y1) * k_exp * level)
        out.append((max(0, x1 - dx), max(0, y1 - dy), min(width - 1, x2 + dx),
                    min(height - 1, y2 + dy)))
    return out


def cut(image: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """The pixels of an inclusive box."""
    x1, y1, x2, y2 = box
    return image[y1:y2 + 1, x1:x2 + 1]
