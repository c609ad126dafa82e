"""Helpers shared by the benchmark scripts (run as `python benchmarks/<script>.py`, which puts this
folder on sys.path)."""
from __future__ import annotations

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
