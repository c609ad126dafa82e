"""Opt-in view selection that prefers frames other masks already chose, so SAM embeds fewer frames.

The paper takes each mask's top-k views by visibility; masks seen best from different frames then
need many frame embeddings (the costliest step on a CPU). With ``visibility.share_fraction`` = f
> 0, a frame is acceptable for mask i when it sees at least (1 - f) times the points of i's k-th
best view (so every frame of the paper's top-k is acceptable, and f = 0 gives the paper's frames).
Frames are then chosen greedily: the frame acceptable to most masks still short of k views (ties:
more visible points) is taken for all of them, until every mask has its k views (or all views it
has). Reported: frames embedded with and without sharing, and the visible points lost.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass
class SharingReport:
    """What view sharing changed, for logs and the map metadata."""

    fraction: float
    frames_topk: int              # distinct frames the paper's top-k would embed
    frames_shared: int            # distinct frames embedded with sharing
    visibility_lost_mean: float   # 1 - sum(vis of chosen views) / sum(vis of top-k), mean of masks
    visibility_lost_max: float

    @property
    def embeddings_saved(self) -> int:
        return self.frames_topk - self.frames_shared

    def to_dict(self) -> dict:
        return {**asdict(self), "embeddings_saved": self.embeddings_saved}


def share_views(counts: np.ndarray, topk: np.ndarray, fraction: float, min_visible: int = 1
                ) -> tuple[np.ndarray, SharingReport]:
    """Views (M, k) (-1 = none) preferring shared frames; ``topk`` is the paper's selection.

    ``counts``: (F, M) visibility of every mask in every frame. Each mask keeps as many views as
    in ``topk``; its views are ordered by visibility, best first.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"visibility.share_fraction must be in [0, 1), got {fraction}")
    counts = np.asarray(counts)
    M, k = topk.shape
    valid = topk >= 0
    need = valid.sum(axis=1)
    out = np.full_like(topk, -1)
    if M == 0 or not need.any():
        return out, SharingReport(fraction, 0, 0, 0.0, 0.0)
    vis_topk = np.where(valid, np.take_along_axis(counts.T, np.maximum(topk, 0), axis=1), 0)
    weakest = np.where(need > 0, np.where(valid, vis_topk, np.iinfo(np.int64).max).min(axis=1), 0)
    acceptable = (counts >= np.maximum((1.0 - fraction) * weakest, max(min_visible, 1))[None]) \
        & (need > 0)[None]                                               # (F, M)
    chosen = np.zeros_like(acceptable)
    have = np.zeros(M, dtype=np.int64)
    total = counts.sum(axis=1)
    while (have < need).any():
        open_ = acceptable & ~chosen & (have < need)[None]
        votes = open_.sum(axis=1)
        best = np.flatnonzero(votes == votes.max())
        j = int(best[np.argmax(total[best])])                            # ties: more points
        chosen[j] |= open_[j]
        have += open_[j]
    for i in range(M):
        frames = np.flatnonzero(chosen[:, i])
        frames = frames[np.argsort(-counts[frames, i], kind="stable")]
        out[i, :len(frames)] = frames
    vis_new = np.where(out >= 0, np.take_along_axis(counts.T, np.maximum(out, 0), axis=1), 0)
    denom = np.maximum(vis_topk.sum(axis=1), 1)
    lost = (1.0 - vis_new.sum(axis=1) / denom)[need > 0]
    report = SharingReport(fraction, len(np.unique(topk[valid])), len(np.unique(out[out >= 0])),
                           float(lost.mean()), float(lost.max()))
    return out, report
