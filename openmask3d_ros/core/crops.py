"""Multi-scale crops around a 2D box (paper Sec. 3.2, L levels, expansion k_exp per level)."""
from __future__ import annotations

import numpy as np

from .fidelity import Fidelity


def crop_boxes(box: tuple[int, int, int, int], width: int, height: int, levels: int = 3,
               k_exp: float = 0.1, fidelity: Fidelity | str = Fidelity.OFFICIAL
               ) -> list[tuple[int, int, int, int]]:
    """Boxes of the L crop levels, inclusive pixel coordinates (x1, y1, x2, y2), clipped.

    ``official`` (OpenMask3D's ``mask2box_multi_level``): the box is [x1, x2 + 1) and level l
    grows each side by ``int(box_width * k_exp) * l`` with box_width = x2 + 1 - x1 (a 100 px
    box: 0/10/20 px). ``paper``: ``int((x2 - x1) * k_exp * l)`` (0/9/19 px for the same box).
    """
    official = Fidelity.parse(fidelity) is Fidelity.OFFICIAL
    x1, y1, x2, y2 = (int(c) for c in box)
    out = []
    for level in range(levels):
        if official:
            dx = int(abs(x2 + 1 - x1) * k_exp) * level
            dy = int(abs(y2 + 1 - y1) * k_exp) * level
        else:
            dx = int((x2 - x1) * k_exp * level)
            dy = int((y2 - y1) * k_exp * level)
        out.append((max(0, x1 - dx), max(0, y1 - dy), min(width - 1, x2 + dx),
                    min(height - 1, y2 + dy)))
    return out


def cut(image: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """The pixels of an inclusive box."""
    x1, y1, x2, y2 = box
    return image[y1:y2 + 1, x1:x2 + 1]
