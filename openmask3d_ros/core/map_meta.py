"""A map's metadata (meta.json) as typed records: what was built, from what, with which models.

``MapMeta.to_json`` / ``MapMeta.from_json`` are the only way meta.json is written and read.
Keys this version does not know are kept in ``extra`` and written back unchanged; a record of a
newer format, or a known key of the wrong type, is an ``InputError`` naming the key.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError

FORMAT_VERSION = 2          # the instances.npz + meta.json layout of release 0.1


@dataclass
class ModelNames:
    """The models a map was built with (``notes``: stand-ins and fallbacks, as logged)."""

    proposals: str = ""
    segmenter: str = ""
    image_encoder: str = ""
    text_encoder: str = ""
    device: str = "cpu"
    notes: list[str] = field(default_factory=list)


@dataclass
class FrameUse:
    """Keyframes considered, used (gave at least one view) and skipped (with the reason)."""

    keyframes: int = 0
    used: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


@dataclass
class InstanceRecord:
    """Per instance: its views, how many fell back to the point box, its size, and where it came
    from (``proposal_score``: Mask3D's own score; ``mask_column``: the masks file's column)."""

    views: list[str] = field(default_factory=list)
    point_box_fallbacks: int = 0
    num_points: int = 0
    proposal_score: float | None = None
    mask_column: int | None = None
    stable_id: int | None = None        # kept across generations while unchanged or moved


@dataclass
class CloudRecord:
    """The cloud copy a generation holds and its content hash."""

    file: str = "cloud.ply"
    num_points: int = 0
    sha256: str = ""
    source_points: int = 0              # the input cloud's size when it was thinned, else 0
    voxel: float = 0.0                  # m, the thinning grid (max_cloud_points), else 0


@dataclass
class StructureRecord:
    """Structure tagging (floor, walls, table tops): its settings and one reason per instance."""

    settings: dict = field(default_factory=dict)
    reasons: list[str | None] = field(default_factory=list)


@dataclass
class InputsRecord:
    """Fingerprints of what a build read (core/fingerprint.py), so that ``openmask3d batch
    --resume`` can tell a map that is up to date: the scene's keyframe files, intrinsics,
    scene.json and cloud file by name, size and mtime (``stat_sha256``) and by content
    (``content_sha256``), the result-shaping configuration (``config_sha256``), and the
    precomputed masks given to the build, if any (``masks_sha256``)."""

    keyframes: int = 0
    files: int = 0
    stat_sha256: str = ""
    content_sha256: str = ""
    config_sha256: str = ""
    masks_sha256: str | None = None


@dataclass
class CacheRecord:
    """What a build reused from the map folder's cache (core/build_cache.py) and what it
    computed. ``mode``: incremental (read and write), full (recompute, write) or off. Counts are
    of segmenter image embeddings, (mask, view) refinements, crops encoded and the proposals
    ("reused", "computed" or "uncached": a model without a cache identity)."""

    mode: str = "off"
    folder: str = ""                    # in the map folder (MAP/cache)
    proposals: str = ""
    embeddings_reused: int = 0
    embeddings_computed: int = 0
    refinements_reused: int = 0
    refinements_computed: int = 0
    crops_reused: int = 0
    crops_computed: int = 0
    frames_embedded: list[str] = field(default_factory=list)     # SAM ran on these frames
    frames_loaded: list[str] = field(default_factory=list)       # their embedding was reused
    first_mask_recomputed: int | None = None                     # lowest mask index recomputed
    damaged: int = 0                                             # entries found damaged, redone
    evicted: int = 0                                             # entries evicted for the bound
    size_bytes: int = 0
    max_size_bytes: int = 0
    notes: list[str] = field(default_factory=list)


@dataclass
class ChangesRecord:
    """What changed since the previous map (core/changes.py). Entries are objects with ``id``
    (the stable id) and ``index`` (this map's instance) / ``previous_index`` (the previous
    map's), ``centroid``; moved ones also ``displacement`` [dx, dy, dz] (m) and ``distance``;
    matched ones ``overlap`` and ``similarity``."""

    previous: str = ""                  # the generation (or map) compared against
    added: list[dict] = field(default_factory=list)
    removed: list[dict] = field(default_factory=list)
    moved: list[dict] = field(default_factory=list)
    unchanged: list[dict] = field(default_factory=list)
    settings: dict = field(default_factory=dict)

    def summary(self) -> str:
        return (f"{len(self.added)} added, {len(self.removed)} removed, {len(self.moved)} moved, "
                f"{len(self.unchanged)} unchanged")


_RECORDS = {"models": ModelNames, "frames": FrameUse, "cloud": CloudRecord,
            "structure": StructureRecord, "inputs": InputsRecord, "cache": CacheRecord,
            "changes": ChangesRecord}
_OPTIONAL_RECORDS = ("structure", "cloud", "inputs", "cache", "changes")
_LOAD_ONLY = ("map_dir", "generation")      # where the map was read from, never stored
# keys newer than release 0.1: written only when set, so an older map is saved back unchanged
_WRITTEN_WHEN_SET = ("inputs", "cache", "changes", "next_stable_id")


@dataclass
class MapMeta:
    """Everything meta.json holds, typed."""

    scene: str = ""
    cloud_source: str = ""
    models: ModelNames = field(default_factory=ModelNames)
    config: dict = field(default_factory=dict)          # PipelineConfig.to_dict() of the build
    frame_step: int = 1                                 # relative to the original stream
    keyframe_step: int | None = None                    # set when the scene holds keyframes
    versions: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    frames: FrameUse = field(default_factory=FrameUse)
    segmenter_images: int = 0           # frames embedded for the map (now or in the cache,
    crops_encoded: int = 0              # as crops): a rebuild's equal a build from scratch's
    view_sharing: dict | None = None
    instances: list[InstanceRecord] = field(default_factory=list)
    structure: StructureRecord | None = None
    created: str = ""
    cloud: CloudRecord | None = None                    # set when the map is saved
    num_instances: int | None = None                    # set when the map is saved
    inputs: InputsRecord | None = None                  # input fingerprints (None: older maps)
    cache: CacheRecord | None = None                    # what was reused (None: older maps)
    changes: ChangesRecord | None = None                # against the previous map, if any
    next_stable_id: int | None = None                   # the next new instance's stable id
    format_version: int = FORMAT_VERSION
    map_dir: str | None = None                          # set by load / save, not stored
    generation: str | None = None                       # set by load / save, not stored
    extra: dict[str, Any] = field(default_factory=dict)  # keys of other versions, kept as read

    # -- derived views ------------------------------------------------------------------------
    def proposal_scores(self) -> np.ndarray | None:
        """(M,) the proposal backend's own scores, or None when the masks were unscored."""
        scores = [inst.proposal_score for inst in self.instances]
        if not scores or any(s is None for s in scores):
            return None
        return np.asarray(scores, dtype=np.float64)

    def pipeline_config(self):
        """The build's configuration as a PipelineConfig (unknown keys of other versions
        ignored; defaults for a map that recorded none)."""
        from .config import PipelineConfig
        return PipelineConfig().updated(self.config or {}, strict=False)

    # -- JSON ---------------------------------------------------------------------------------
    def to_json(self) -> dict:
        """The meta.json object (load-only fields left out, ``extra`` merged back)."""
        out = dict(self.extra)
        for f in dataclasses.fields(self):
            if f.name in _LOAD_ONLY or f.name == "extra":
                continue
            value = getattr(self, f.name)
            if value is None and f.name in _WRITTEN_WHEN_SET:
                continue
            if f.name == "instances":
                value = [_instance_json(i) for i in value]
            elif f.name == "cloud" and value is not None:
                value = _cloud_json(value)
            elif dataclasses.is_dataclass(value):
                value = dataclasses.asdict(value)
            out[f.name] = value
        return out

    @staticmethod
    def from_json(data: Any, source: str | Path | None = None) -> MapMeta:
        """Typed metadata from a meta.json object; ``InputError`` naming a bad key."""
        if not isinstance(data, dict):
            raise InputError(f"expected a JSON object, got {type(data).__name__}", source)
        version = data.get("format_version", FORMAT_VERSION)
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise InputError(f"format_version {version!r} is newer than this release reads "
                             f"({FORMAT_VERSION}): update openmask3d_ros", source,
                             "format_version")
        names = {f.name for f in dataclasses.fields(MapMeta)} - {"extra", *_LOAD_ONLY}
        kwargs: dict[str, Any] = {"extra": {k: v for k, v in data.items() if k not in names}}
        for key in names & data.keys():
            kwargs[key] = _typed(key, data[key], source)
        return MapMeta(**kwargs)


def _instance_json(inst: InstanceRecord) -> dict:
    # optional provenance fields are written only when set, as before
    return {k: v for k, v in dataclasses.asdict(inst).items()
            if v is not None or k not in ("proposal_score", "mask_column", "stable_id")}


def _cloud_json(cloud: CloudRecord) -> dict:
    # the thinning fields are written only for a thinned cloud
    return {k: v for k, v in dataclasses.asdict(cloud).items()
            if v or k not in ("source_points", "voxel")}


def _record(cls, key: str, value: Any, source):
    if not isinstance(value, dict):
        raise InputError(f"expected an object, got {type(value).__name__}", source, key)
    known = {f.name for f in dataclasses.fields(cls)}
    try:
        return cls(**{k: v for k, v in value.items() if k in known})
    except TypeError as exc:
        raise InputError(str(exc), source, key) from exc


_SCALARS = {"scene": str, "cloud_source": str, "config": dict, "frame_step": int,
            "keyframe_step": (int, type(None)), "versions": dict, "timings": dict,
            "segmenter_images": int, "crops_encoded": int, "view_sharing": (dict, type(None)),
            "created": str, "num_instances": (int, type(None)), "format_version": int,
            "next_stable_id": (int, type(None))}


def _typed(key: str, value: Any, source):
    if key in _RECORDS:
        return None if value is None and key in _OPTIONAL_RECORDS else \
            _record(_RECORDS[key], key, value, source)
    if key == "instances":
        if not isinstance(value, list):
            raise InputError(f"expected a list, got {type(value).__name__}", source, key)
        return [_record(InstanceRecord, f"instances[{i}]", v, source)
                for i, v in enumerate(value)]
    expected = _SCALARS[key]
    if not isinstance(value, expected) or isinstance(value, bool):
        raise InputError(f"has type {type(value).__name__}", source, key)
    return value
