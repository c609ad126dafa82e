"""Open-vocabulary queries on a map: text or an image exemplar -> relevant instances.

Each instance gets the raw cosine (``score``) and a relevance in [0, 1] against canonical negatives
(core/relevance.py). An answer holds the instances whose relevance reaches ``min_relevance``,
best first; when none does, it names the best candidate so a planner can say "not here".
Structure (floor, walls, table tops; core/structure.py) answers only queries that ask for it.
"""
from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .config import EncoderConfig, PipelineConfig, QueryConfig, StructureConfig
from .errors import InputError
from .instance_map import InstanceMap
from .query_image import check_image_size, shrink_for_encoder
from .interfaces import ImageEncoder, TextEncoder
from .relations import ParsedQuery, Predicates, answer_parsed, parse_query
from .relevance import RelevanceScorer, RelevanceSettings, mentions
from .structure import tag_structure
from .voxel import group_voxel_centroids

log = logging.getLogger(__name__)


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
    # oriented box (core/geometry.py): centre, orientation x, y, z, w, size along its axes
    box_center: np.ndarray = field(default_factory=lambda: np.full(3, np.nan))
    box_orientation: np.ndarray = field(default_factory=lambda: np.array([0.0, 0, 0, 1]))
    box_size: np.ndarray = field(default_factory=lambda: np.full(3, np.nan))
    support_id: int = -1              # the instance it rests on (-1: none found)
    on_floor: bool = False            # it rests on the floor (an instance or not)
    contact_height: float = float("nan")      # its bottom, along the map's up axis (m)
    height_above_floor: float = float("nan")  # bottom minus the floor height (m)
    reference_id: int = -1            # relation queries: the reference it relates to
    relation_score: float = float("nan")      # relation queries: the combined score

    @property
    def n_points(self) -> int:
        return len(self.point_indices)

    def to_dict(self) -> dict:
        return {"id": self.instance_id, "score": round(self.score, 6),
                "relevance": round(self.relevance, 6), "structure": self.structure,
                "centroid": self.centroid.round(5).tolist(),
                "bbox_min": self.bbox_min.round(5).tolist(),
                "bbox_max": self.bbox_max.round(5).tolist(),
                "box": {"center": _rounded(self.box_center),
                        "orientation_xyzw": _rounded(self.box_orientation),
                        "size": _rounded(self.box_size)},
                "support": {"support_id": self.support_id, "on_floor": self.on_floor,
                            "contact_height": _rounded(self.contact_height),
                            "height_above_floor": _rounded(self.height_above_floor)},
                "reference_id": self.reference_id,
                "relation_score": _rounded(self.relation_score),
                "n_points": self.n_points, "point_indices": self.point_indices.tolist()}


def _rounded(x):
    """JSON-ready: rounded floats, None for NaN."""
    a = np.round(np.asarray(x, dtype=np.float64), 5)
    return a.tolist() if a.ndim else (None if np.isnan(a) else float(a))


@dataclass
class QueryAnswer:
    """The instances relevant to one query, and the best candidate when none is."""

    query: str                              # the text, or "image WxH" for an exemplar
    results: list[QueryResult]
    best: QueryResult | None                # best eligible instance, relevant or not
    min_relevance: float
    include_structure: bool
    excluded_structure: list[int] = field(default_factory=list)
    # (M,) what the ranking used for every instance of the map: its relevance; NaN for the
    # instances this query cannot return (no feature; scene structure left out). top_k,
    # min_relevance and min_score do not apply: it is what a heatmap of the query shows.
    instance_values: np.ndarray = field(default_factory=lambda: np.zeros(0))
    understood: ParsedQuery | None = None   # a relation / superlative query's parse
    reason: str | None = None               # why a parsed query found nothing

    @property
    def found(self) -> bool:
        return bool(self.results)

    def message(self) -> str:
        """One line for logs and the service response."""
        how = f" (understood as {self.understood.describe()})" if self.understood else ""
        if self.results:
            b = self.results[0]
            return (f"{len(self.results)} instance(s) for {self.query!r}{how}, best id "
                    f"{b.instance_id} relevance {b.relevance:.3f} score {b.score:.3f}")
        if self.reason:
            return f"{self.reason}{how}"
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
                "understood": vars(self.understood) if self.understood else None,
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
            built = instance_map.meta.models.text_encoder or "unrecorded"
            raise ValueError(f"map features are {instance_map.features.shape[1]}-d (built with "
                             f"text encoder {built}) but the text encoder {text_encoder.name} "
                             f"gives {text_encoder.dim}-d embeddings: query a map with the "
                             "encoder it was built with (query.open_map / engine_for_map)")
        recorded = instance_map.meta.pipeline_config()
        self.query_cfg = query_cfg or recorded.query
        self.structure_cfg = structure_cfg or recorded.structure
        self.map = instance_map
        self.text_encoder = text_encoder
        if image_encoder is None and hasattr(text_encoder, "encode_images"):
            image_encoder = text_encoder            # type: ignore[assignment]
        self.image_encoder = image_encoder
        self.relevance = RelevanceScorer(text_encoder,
                                         RelevanceSettings.from_config(self.query_cfg))
        # stored in the map file (computed once for older maps); hits slice these, no copies
        self._centroids = instance_map.centroids()
        self._bmin, self._bmax = instance_map.boxes()
        flat, self._offsets = instance_map.flat_indices()
        self._flat = flat
        self._grouped = np.asarray(instance_map.points, np.float32)[flat]   # instance-ordered
        self._valid = instance_map.valid
        structure = instance_map.meta.structure
        tags = structure.reasons if structure is not None else None
        if tags is None or len(tags) != instance_map.num_instances:
            tags = tag_structure(instance_map.points, instance_map.point_indices,
                                 self.structure_cfg)
        self.structure: list[str | None] = list(tags)
        self.placement = instance_map.placement()         # stored in the map, or computed once
        self._quats = self.placement.boxes.quaternions()
        self._voxels: dict[float, tuple[np.ndarray, np.ndarray]] = {}   # voxel_points, by size
        self._voxels_lock = threading.Lock()

    VOXEL_SIZES_KEPT = 4

    def voxel_points(self, size: float) -> tuple[np.ndarray, np.ndarray]:
        """Every instance's points averaged per voxel of ``size`` m, instance-ordered: (points
        (n, 3) float32, offsets (M + 1,)). Computed once per size (the last few sizes asked for
        are kept), so a query that asks for downsampled points only slices."""
        with self._voxels_lock:
            hit = self._voxels.pop(size, None)
            if hit is None:
                hit = group_voxel_centroids(self._grouped, self._offsets, size)
            self._voxels[size] = hit                       # most recent last
            while len(self._voxels) > self.VOXEL_SIZES_KEPT:
                self._voxels.pop(next(iter(self._voxels)))
        return hit

    # -- embeddings -----------------------------------------------------------------------------
    def embed_text(self, text: str) -> np.ndarray:
        if not isinstance(text, str) or not text.strip():
            raise ValueError("query text must be a non-empty string")
        return self.text_encoder.encode_text([self.relevance.settings.prompt(text.strip())])[0]

    def embed_image(self, image: np.ndarray) -> np.ndarray:
        """An RGB uint8 (h, w, 3) exemplar through the map's image encoder: refused above
        ``query.max_image_pixels``, shrunk to ``query_image.ENCODE_PIXELS`` first."""
        if self.image_encoder is None:
            raise ValueError(f"the map's encoder {self.text_encoder.name} cannot embed images")
        img = np.asarray(image)
        if img.ndim != 3 or img.shape[2] != 3 or img.shape[0] < 1 or img.shape[1] < 1:
            raise ValueError(f"query image must be RGB (h, w, 3), got shape {img.shape}")
        if img.dtype != np.uint8:
            raise ValueError(f"query image must be uint8, got {img.dtype}")
        check_image_size(img.shape[1], img.shape[0], self.query_cfg.max_image_pixels,
                         "query image")
        built = self.map.meta.models.image_encoder
        if built and self.image_encoder.name != built:
            raise ValueError(f"the map was built with image encoder {built}, not "
                             f"{self.image_encoder.name}")
        return self.image_encoder.encode_images([np.ascontiguousarray(
            shrink_for_encoder(img))])[0]

    def scores(self, text: str) -> np.ndarray:
        """Cosine similarity of every instance to ``text`` (-inf for instances without feature)."""
        s = self.map.features @ self.embed_text(text)
        return np.where(self._valid, s, -np.inf)

    # -- answering ------------------------------------------------------------------------------
    def ask(self, text: str | None = None, image: np.ndarray | None = None, top_k: int = 5,
            min_relevance: float | None = None, min_score: float = -1.0,
            include_structure: bool | None = None, viewpoint=None,
            literal: bool = False) -> QueryAnswer:
        """Instances relevant to ``text`` or to the exemplar ``image`` (exactly one), best first.

        ``min_relevance`` None: the configured default (query.min_relevance); 0 lists every
        instance. ``include_structure`` None: only when the text names structure
        (structure.words, e.g. "the floor"). ``top_k`` 0 = no limit. A text such as "the mug on
        the table" or "the largest box" is answered as a relation (core/relations.py; with
        ``viewpoint`` (3,) for "left of" / "nearest" relative to a viewer) unless ``literal`` or
        query.relations is false.
        """
        min_relevance = self._check_args(text, image, top_k, min_score, min_relevance)
        if image is None and not literal and self.query_cfg.relations:
            parsed = parse_query(str(text))
            if parsed is not None:
                return answer_parsed(self, str(text).strip(), parsed, top_k, min_relevance,
                                     min_score, include_structure, viewpoint)
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
        candidates = self._valid & ~is_structure if not include_structure else self._valid
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
                           float(min_relevance), bool(include_structure), excluded,
                           np.where(candidates & np.isfinite(rel), rel, np.nan))

    def query(self, text: str, top_k: int = 5, min_score: float = -1.0,
              min_relevance: float | None = None, include_structure: bool | None = None
              ) -> list[QueryResult]:
        """The relevant instances for ``text``, best first (see ``ask``)."""
        return self.ask(text, top_k=top_k, min_relevance=min_relevance, min_score=min_score,
                        include_structure=include_structure).results

    def _check_args(self, text, image, top_k: int, min_score: float,
                    min_relevance: float | None) -> float:
        """ValueError for a bad request; the min_relevance to use."""
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
        return min_relevance

    def _result(self, m: int, cos: np.ndarray, rel: np.ndarray) -> QueryResult:
        a, b = self._offsets[m], self._offsets[m + 1]
        box, sup = self.placement.boxes, self.placement.support
        return QueryResult(m, float(cos[m]), self._centroids[m], self._bmin[m], self._bmax[m],
                           self._flat[a:b], self._grouped[a:b], float(rel[m]),
                           self.structure[m], box.center[m], self._quats[m], box.size[m],
                           int(sup.support_id[m]), bool(sup.on_floor[m]), float(sup.bottom[m]),
                           float(sup.height_above_floor[m]))

    def predicates(self, viewpoint=None) -> Predicates:
        """The geometric relation predicates of this map (core/relations.py)."""
        geo = self.map.meta.pipeline_config().geometry
        return Predicates(self.placement, self._grouped, self._offsets, geo.up_axis,
                          geo.contact_distance, self.query_cfg.near_radius, viewpoint)


def open_map(path: str | Path, cfg: PipelineConfig | None = None,
             cache: dict | None = None) -> QueryEngine:
    """Load a map (scene folder or map folder) and query it with the encoder it was built with.

    ``cfg``: this machine's configuration (see ``map_config``: device, where the map's CLIP
    checkpoint lies here, query settings); ``cache``: encoders by ``encoder_key``, reused.
    """
    return engine_for_map(InstanceMap.load(path), cfg, cache)


def engine_for_map(imap: InstanceMap, cfg: PipelineConfig | None = None,
                   cache: dict | None = None) -> QueryEngine:
    """A QueryEngine on ``imap`` with the map's own text encoder (the one path of the CLI,
    the node and evaluation)."""
    resolved = map_config(imap, cfg)
    return QueryEngine(imap, map_encoder(imap, resolved, cache), query_cfg=resolved.query)


def map_config(imap: InstanceMap, local: PipelineConfig | None = None) -> PipelineConfig:
    """The configuration ``imap`` was built with, adapted to this machine by ``local``.

    The encoder (backend, model) is always the map's: features of one model cannot be
    compared with another's embeddings. ``local`` gives the device, the encoder precision (how
    this machine runs it; the default ``auto`` without ``local``), the checkpoint file of the
    same CLIP model when it names one (weights kept elsewhere on this machine) and the query
    settings (negatives, temperature, template, min_relevance).
    """
    recorded = imap.meta.pipeline_config()
    if local is None:
        return recorded.updated({"encoder": {"precision": EncoderConfig.precision}})
    enc = recorded.encoder
    changes: dict = {"device": local.device, "query": vars(local.query),
                     "encoder": {"precision": local.encoder.precision}}
    if local.encoder.backend != enc.backend or (
            enc.backend == "clip" and local.encoder.clip_model != enc.clip_model):
        log.info("the map was built with the %s text encoder; querying it with that one, not "
                 "the configured %s", _describe(enc), _describe(local.encoder))
    elif enc.backend == "clip" and local.encoder.clip_checkpoint:
        changes["encoder"]["clip_checkpoint"] = local.encoder.clip_checkpoint
    return recorded.updated(changes)


def encoder_key(cfg: PipelineConfig) -> str:
    """What makes two text encoders the same (the cache key of ``map_encoder``)."""
    e = cfg.encoder
    if e.backend != "clip":
        return e.backend
    return f"clip|{e.clip_model}|{e.clip_checkpoint}|{e.precision}|{cfg.device}"


def map_encoder(imap: InstanceMap, cfg: PipelineConfig, cache: dict | None = None
                ) -> TextEncoder:
    """The text encoder ``cfg`` names for ``imap``, built once per ``encoder_key`` in ``cache``.

    An encoder that cannot be built here (e.g. its checkpoint is missing) raises InputError
    naming the map, the encoder it was built with and what is missing."""
    key = encoder_key(cfg)
    if cache is not None and key in cache:
        return cache[key]
    from .models import build_text_encoder
    try:
        encoder = build_text_encoder(cfg)
    except (OSError, ImportError, ValueError, RuntimeError) as exc:
        where = imap.meta.map_dir or "the map"
        raise InputError(f"the map was built with the {_describe(cfg.encoder)} text encoder, "
                         f"which cannot be built here: {exc}", where, "encoder") from exc
    built_with = imap.meta.models.text_encoder
    if built_with and built_with != encoder.name:
        log.warning("map was built with text encoder '%s' but '%s' answers it", built_with,
                    encoder.name)
    if cache is not None:
        cache[key] = encoder
    return encoder


def _describe(enc) -> str:
    if enc.backend != "clip":
        return f"'{enc.backend}'"
    return (f"CLIP {enc.clip_model} (encoder.clip_checkpoint "
            f"'{enc.clip_checkpoint or 'unset'}')")
