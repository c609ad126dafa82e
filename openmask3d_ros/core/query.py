"""Open-vocabulary queries: rank instances by cosine similarity to a text embedding."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import PipelineConfig
from .instance_map import InstanceMap
from .interfaces import TextEncoder
from .models import build_text_encoder


@dataclass
class QueryResult:
    instance_id: int
    score: float
    centroid: np.ndarray
    bbox_min: np.ndarray
    bbox_max: np.ndarray
    point_indices: np.ndarray
    points: np.ndarray

    @property
    def n_points(self) -> int:
        return len(self.point_indices)

    def to_dict(self) -> dict:
        return {"id": self.instance_id, "score": round(self.score, 6),
                "centroid": self.centroid.round(5).tolist(),
                "bbox_min": self.bbox_min.round(5).tolist(),
                "bbox_max": self.bbox_max.round(5).tolist(),
                "n_points": self.n_points, "point_indices": self.point_indices.tolist()}


class QueryEngine:
    """Answers text queries on one map; text embeddings are the encoder's (cached there)."""

    def __init__(self, instance_map: InstanceMap, text_encoder: TextEncoder):
        if instance_map.num_instances and instance_map.features.shape[1] != text_encoder.dim:
            raise ValueError(f"map features are {instance_map.features.shape[1]}-d but the text "
                             f"encoder {text_encoder.name} gives {text_encoder.dim}-d embeddings")
        self.map = instance_map
        self.text_encoder = text_encoder
        self._centroids = instance_map.centroids()
        self._bmin, self._bmax = instance_map.boxes()
        self._valid = instance_map.valid

    def scores(self, text: str) -> np.ndarray:
        """Cosine similarity of every instance to ``text`` (-inf for instances without feature)."""
        q = self.text_encoder.encode_text([text])[0]
        s = self.map.features @ q
        return np.where(self._valid, s, -np.inf)

    def query(self, text: str, top_k: int = 5, min_score: float = -1.0) -> list[QueryResult]:
        """The ``top_k`` best instances (0 = all) scoring at least ``min_score``, best first."""
        if not isinstance(text, str) or not text.strip():
            raise ValueError("query text must be a non-empty string")
        if top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {top_k}")
        if not math.isfinite(min_score):
            raise ValueError(f"min_score must be finite, got {min_score}")
        s = self.scores(text)
        order = np.argsort(-s, kind="stable")
        order = order[np.isfinite(s[order]) & (s[order] >= min_score)]
        if top_k:
            order = order[:top_k]
        return [QueryResult(int(m), float(s[m]), self._centroids[m], self._bmin[m], self._bmax[m],
                            self.map.point_indices[m], self.map.instance_points(m))
                for m in order]


def open_map(path: str | Path, cfg: PipelineConfig | None = None) -> QueryEngine:
    """Load a map (scene folder or map folder) with the text encoder it was built with.

    ``cfg`` overrides the recorded configuration (e.g. a checkpoint moved to another path).
    """
    imap = InstanceMap.load(path)
    recorded = PipelineConfig().updated(imap.meta.get("config", {}), strict=False)
    if cfg is not None:
        recorded = recorded.updated({"encoder": vars(cfg.encoder), "device": cfg.device})
    return QueryEngine(imap, build_text_encoder(recorded))
