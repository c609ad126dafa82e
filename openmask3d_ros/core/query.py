"""Open-vocabulary queries on a map: text or an image exemplar -> relevant instances.

Each instance gets the raw cosine (``score``) and a relevance in [0, 1] against canonical negatives
(core/relevance.py). An answer holds the instances whose relevance reaches ``min_relevance``,
best first; when none does, it names the best candidate so a planner can say "not here".
Structure (floor, walls, table tops; core/structure.py) answers only queries that ask for it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .config import PipelineConfig, QueryConfig, StructureConfig
from .instance_map import InstanceMap
from .interfaces import ImageEncoder, TextEncoder
from .relevance import RelevanceScorer, RelevanceSettings, mentions
from .structure import tag_structure


@dataclass
class QueryResult:
    instance_id: int
    score: float                 # cosine similarity of query and instance feature
    centroid: np.ndarray
    bbox_min: np.ndarray
    bbox_max: np.ndarray
    point_indices: np.ndarray
    points: np.ndarray
    relevance: float = float("nan")   # in [0, 1]; 0.5 = as like the query as a generic thing
    structure: str | None = None      # why the instance is scene structure, None for objects

    @property
    def n_points(self) -> int:
        return len(self.point_indices)

    def to_dict(self) -> dict:
        return {"id": self.instance_id, "score": round(self.score, 6),
                "relevance": round(self.relevance, 6), "structure": self.structure,
                "centroid": self.centroid.round(5).tolist(),
                "bbox_min": self.bbox_min.round(5).tolist(),
                "bbox_max": self.bbox_max.round(5).tolist(),
                "n_points": self.n_points, "point_indices": self.point_indices.tolist()}


@dataclass
class QueryAnswer:
    """The instances relevant to one query, and the best candidate when none is."""

    query: str                              # the text, or "image WxH" for an exemplar
    results: list[QueryResult]
    best: QueryResult | None                # best eligible instance, relevant or not
    min_relevance: float
    include_structure: bool
    excluded_structure: list[int] = field(default_factory=list)

    @property
    def found(self) -> bool:
        return bool(self.results)

    def message(self) -> str:
        """One line for logs and the service response."""
        if self.results:
            b = self.results[0]
            return (f"{len(self.results)} instance(s) for {self.query!r}, best id "
                    f"{b.instance_id} relevance {b.relevance:.3f} score {b.score:.3f}")
        if self.best is None:
            return f"nothing for {self.query!r}: the map has no instance that could answer"
        b = self.best
        return (f"not found: no instance reaches relevance {self.min_relevance:.2f} for "
                f"{self.query!r}; best candidate id {b.instance_id} with relevance "
                f"{b.relevance:.3f} (score {b.score:.3f})")

    def to_dict(self) -> dict:
        return {"query": self.query, "found": self.found, "min_relevance": self.min_relevance,
                "include_structure": self.include_structure, "message": self.message(),
                "best": self.best.to_dict() if self.best else None,
                "instances": [r.to_dict() for r in self.results]}


class QueryEngine:
    """Answers text and image queries on one map.

    ``query_cfg`` / ``structure_cfg`` default to those recorded in the map (else the defaults);
    ``image_encoder`` defaults to ``text_encoder`` when it also embeds images (both built-in
    backends are one object for both towers).
    """

    def __init__(self, instance_map: InstanceMap, text_encoder: TextEncoder,
                 image_encoder: ImageEncoder | None = None, query_cfg: QueryConfig | None = None,
                 structure_cfg: StructureConfig | None = None):
        if instance_map.num_instances and instance_map.features.shape[1] != text_encoder.dim:
            raise ValueError(f"map features are {instance_map.features.shape[1]}-d but the text "
                             f"encoder {text_encoder.name} gives {text_encoder.dim}-d embeddings")
        recorded = PipelineConfig().updated(instance_map.meta.get("config", {}) or {},
                                            strict=False)
        self.query_cfg = query_cfg or recorded.query
        self.structure_cfg = structure_cfg or recorded.structure
        self.map = instance_map
        self.text_encoder = text_encoder
        if image_encoder is None and hasattr(text_encoder, "encode_images"):
            image_encoder = text_encoder            # type: ignore[assignment]
        self.image_encoder = image_encoder
        self.relevance = RelevanceScorer(text_encoder,
                                         RelevanceSettings.from_config(self.query_cfg))
        self._centroids = instance_map.centroids()
        self._bmin, self._bmax = instance_map.boxes()
        self._valid = instance_map.valid
        tags = (instance_map.meta.get("structure") or {}).get("reasons")
        if tags is None or len(tags) != instance_map.num_instances:
            tags = tag_structure(instance_map.points, instance_map.point_indices,
                                 self.structure_cfg)
        self.structure: list[str | None] = list(tags)

    # -- embeddings -----------------------------------------------------------------------------
    def embed_text(self, text: str) -> np.ndarray:
        if not isinstance(text, str) or not text.strip():
            raise ValueError("query text must be a non-empty string")
        return self.text_encoder.encode_text([self.relevance.settings.prompt(text.strip())])[0]

    def embed_image(self, image: np.ndarray) -> np.ndarray:
        """An RGB uint8 (h, w, 3) exemplar through the map's image encoder."""
        if self.image_encoder is None:
            raise ValueError(f"the map's encoder {self.text_encoder.name} cannot embed images")
        img = np.asarray(image)
        if img.ndim != 3 or img.shape[2] != 3 or img.shape[0] < 1 or img.shape[1] < 1:
            raise ValueError(f"query image must be RGB (h, w, 3), got shape {img.shape}")
        if img.dtype != np.uint8:
            raise ValueError(f"query image must be uint8, got {img.dtype}")
        if self.image_encoder.name != self.map.meta.get("models", {}).get(
                "image_encoder", self.image_encoder.name):
            raise ValueError(f"the map was built with image encoder "
                             f"{self.map.meta['models']['image_encoder']}, not "
                             f"{self.image_encoder.name}")
        return self.image_encoder.encode_images([np.ascontiguousarray(img)])[0]

    def scores(self, text: str) -> np.ndarray:
        """Cosine similarity of every instance to ``text`` (-inf for instances without feature)."""
        s = self.map.features @ self.embed_text(text)
        return np.where(self._valid, s, -np.inf)

    # -- answering ------------------------------------------------------------------------------
    def ask(self, text: str | None = None, image: np.ndarray | None = None, top_k: int = 5,
            min_relevance: float | None = None, min_score: float = -1.0,
            include_structure: bool | None = None) -> QueryAnswer:
        """Instances relevant to ``text`` or to the exemplar ``image`` (exactly one), best first.

        ``min_relevance`` None: the configured default (query.min_relevance); 0 lists every
        instance. ``include_structure`` None: only when the text names structure
        (structure.words, e.g. "the floor"). ``top_k`` 0 = no limit.
        """
        if (text is None or not str(text).strip()) == (image is None):
            raise ValueError("give either a non-empty query text or a query image")
        if top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {top_k}")
        if not math.isfinite(min_score):
            raise ValueError(f"min_score must be finite, got {min_score}")
        if min_relevance is None:
            min_relevance = float(self.query_cfg.min_relevance)
        if not (math.isfinite(min_relevance) and 0.0 <= min_relevance <= 1.0):
            raise ValueError(f"min_relevance must be in [0, 1], got {min_relevance}")
        if image is not None:
            q = self.embed_image(image)
            label = f"image {np.asarray(image).shape[1]}x{np.asarray(image).shape[0]}"
            asks_structure = False
        else:
            text = str(text).strip()
            q = self.embed_text(text)
            label = text
            asks_structure = bool(mentions(text, self.structure_cfg.words))
        if include_structure is None:
            include_structure = asks_structure
        cos, rel = self.relevance(self.map.features, q)
        is_structure = np.array([t is not None for t in self.structure], dtype=bool)
        eligible = self._valid & (cos >= min_score)
        excluded = []
        if not include_structure:
            excluded = np.flatnonzero(eligible & is_structure).tolist()
            eligible &= ~is_structure
        order = [int(m) for m in np.lexsort((-cos, -rel)) if eligible[m]]
        best = self._result(order[0], cos, rel) if order else None
        keep = [m for m in order if rel[m] >= min_relevance]
        if top_k:
            keep = keep[:top_k]
        return QueryAnswer(label, [self._result(m, cos, rel) for m in keep], best,
                           float(min_relevance), bool(include_structure), excluded)

    def query(self, text: str, top_k: int = 5, min_score: float = -1.0,
              min_relevance: float | None = None, include_structure: bool | None = None
              ) -> list[QueryResult]:
        """The relevant instances for ``text``, best first (see ``ask``)."""
        return self.ask(text, top_k=top_k, min_relevance=min_relevance, min_score=min_score,
                        include_structure=include_structure).results

    def _result(self, m: int, cos: np.ndarray, rel: np.ndarray) -> QueryResult:
        return QueryResult(m, float(cos[m]), self._centroids[m], self._bmin[m], self._bmax[m],
                           self.map.point_indices[m], self.map.instance_points(m),
                           float(rel[m]), self.structure[m])


def open_map(path: str | Path, cfg: PipelineConfig | None = None) -> QueryEngine:
    """Load a map (scene folder or map folder) with the encoder it was built with.

    ``cfg`` overrides the recorded configuration (e.g. a checkpoint moved to another path) and
    its ``query`` settings (negatives, temperature, template, min_relevance).
    """
    from .models import build_text_encoder

    imap = InstanceMap.load(path)
    recorded = PipelineConfig().updated(imap.meta.get("config", {}), strict=False)
    if cfg is not None:
        recorded = recorded.updated({"encoder": vars(cfg.encoder), "device": cfg.device,
                                     "query": vars(cfg.query)})
    encoder = build_text_encoder(recorded)
    return QueryEngine(imap, encoder, query_cfg=recorded.query)
