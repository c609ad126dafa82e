"""Range checks of the pipeline configuration, applied on load (CLI and node alike).

A value out of range is an ``InputError`` naming the dotted key (and the file, when known), so a
``k_view: -3`` or ``crops.levels: 0`` never runs silently into a map without features.
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any
from collections.abc import Callable

from .errors import InputError
from .fidelity import FIDELITY_MODES
from .precision import ENCODER_PRECISIONS, PRECISIONS

_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?|mps)$")


def _ge(lo: float) -> Callable[[Any], str | None]:
    return lambda v: None if v >= lo else f"must be >= {lo}"


def _gt(lo: float) -> Callable[[Any], str | None]:
    return lambda v: None if v > lo else f"must be > {lo}"


def _within(lo: float, hi: float) -> Callable[[Any], str | None]:
    return lambda v: None if lo <= v <= hi else f"must be in [{lo}, {hi}]"


def _below(lo: float, hi: float) -> Callable[[Any], str | None]:
    return lambda v: None if lo <= v < hi else f"must be in [{lo}, {hi})"


def _one_of(*names: str) -> Callable[[Any], str | None]:
    return lambda v: None if v in names else f"must be one of {', '.join(names)}"


def _words(v: Any) -> str | None:
    return None if all(w.strip() for w in v) else "must not hold empty strings"


# segment-anything's model types and MobileSAM's (core/segmenters/sam.py; not imported here:
# checking a config must stay cheap)
SAM_MODELS = ("vit_h", "vit_l", "vit_b", "vit_t")
UP_AXES = ("+x", "-x", "+y", "-y", "+z", "-z")     # core/geometry.py UP_AXES
BOX_MODES = ("yaw", "full")                        # core/geometry.py


# dotted key -> rule; keys a config does not have (another version) are skipped
RULES: dict[str, Callable[[Any], str | None]] = {
    "frame_step": _ge(1),
    "device": lambda v: None if _DEVICE.match(v) else "must be auto, cpu, cuda or cuda:N",
    "threads": _ge(0),
    "seed": _ge(0),
    "keep_generations": _ge(1),
    "max_cloud_points": _ge(0),
    "fidelity": _one_of(*FIDELITY_MODES),
    "proposals.backend": _one_of("geometric", "mask3d", "precomputed"),
    "proposals.dbscan_eps": _gt(0),
    "proposals.dbscan_min_points": _ge(1),
    "proposals.min_mask_points": _ge(1),
    "proposals.voxel_size": _gt(0),
    "proposals.plane_distance": _gt(0),
    "proposals.plane_min_fraction": _within(0.0, 1.0),
    "proposals.max_planes": _ge(0),
    "proposals.cluster_eps": _gt(0),
    "proposals.cluster_min_points": _ge(1),
    "proposals.mask3d_num_queries": _ge(1),
    "proposals.mask3d_voxel_size": _gt(0),
    "visibility.k_threshold": _ge(0),
    "visibility.k_view": _ge(1),
    "visibility.min_visible_points": _ge(1),
    "visibility.share_fraction": _below(0.0, 1.0),
    "segmenter.backend": _one_of("hull", "sam"),
    "segmenter.k_rounds": _ge(1),
    "segmenter.k_sample": _ge(1),
    "segmenter.prompt_seeding": _one_of("stream", "per_view"),
    "segmenter.sam_model": _one_of(*SAM_MODELS),
    "segmenter.prompt_batch": _ge(0),
    "segmenter.early_stop_iou": _within(0.0, 1.5),   # SAM's predicted IoU may exceed 1 slightly
    "segmenter.precision": _one_of(*PRECISIONS),
    "crops.levels": _ge(1),
    "crops.k_exp": _within(0.0, 1.0),
    "encoder.backend": _one_of("colour", "clip"),
    "encoder.batch_size": _ge(1),
    "encoder.prompt_template": lambda v: None if "{}" in v else "must contain {} for the text",
    "encoder.text_cache_size": _ge(0),
    "encoder.preprocess": _one_of("tensor", "pil"),
    "encoder.precision": _one_of(*ENCODER_PRECISIONS),
    "query.temperature": _gt(0),
    "query.min_relevance": _within(0.0, 1.0),
    "query.prompt_template": lambda v: None if "{}" in v else "must contain {} for the text",
    "query.negatives": _words,
    "query.max_image_pixels": _ge(1),
    "structure.plane_max_thickness": _gt(0),
    "structure.plane_min_area": _ge(0),
    "structure.cell_size": _gt(0),
    "structure.span_fraction": _within(0.0, 1.0),
    "structure.span_min_extent": _ge(0),
    "structure.words": _words,
    "query.near_radius": _gt(0),
    "geometry.up_axis": _one_of(*UP_AXES),
    "geometry.box_mode": _one_of(*BOX_MODES),
    "geometry.contact_distance": _gt(0),
    "cache.max_size_mb": _ge(1),
    "changes.voxel_size": _gt(0),
    "changes.min_overlap": _within(0.0, 1.0),
    "changes.min_similarity": _within(-1.0, 1.0),
    "changes.min_move": _ge(0),
    "changes.size_tolerance": _ge(0),
}

# keys without a range rule, and why (a test keeps RULES + UNCHECKED = every key of the config)
UNCHECKED = {
    "proposals.masks_file": "a path, checked when read",
    "proposals.mask3d_checkpoint": "a path, checked when read",
    "segmenter.sam_checkpoint": "a path, checked when read",
    "encoder.clip_checkpoint": "a path, checked when read",
    "encoder.clip_model": "open_clip's model names, checked when the model is built",
    "proposals.mask3d_mask_threshold": "any logit",
    "segmenter.min_score": "any score (SAM's predicted IoU, the stand-in's)",
    "visibility.two_sided": "a boolean (type-checked on load)",
    "query.relations": "a boolean (type-checked on load)",
    "cache.enabled": "a boolean (type-checked on load)",
    "changes.enabled": "a boolean (type-checked on load)",
    "segmenter.quantize": "a boolean (type-checked); with a device in _combinations",
    "encoder.quantize": "a boolean (type-checked); with a device in _combinations",
}


def _combinations(flat: dict[str, Any]) -> tuple[str, str] | None:
    """(key, problem) of a setting the configured device cannot run, for the model backends
    (segmenter sam, encoder clip) when the device is named; "auto" is checked when resolved."""
    device = str(flat.get("device", "auto"))
    for section, backend in (("segmenter", "sam"), ("encoder", "clip")):
        if flat.get(f"{section}.backend") != backend or device == "auto":
            continue
        if flat.get(f"{section}.precision") == "fp16" and not device.startswith("cuda"):
            return (f"{section}.precision", f"fp16 needs a CUDA device (device is {device}); "
                    "use bf16 on a CPU")
        if flat.get(f"{section}.quantize") and device.startswith("cuda"):
            return (f"{section}.quantize", "(dynamic int8) runs on the CPU only; use precision "
                    "fp16 or bf16 on a GPU")
    return None


def validate(flat: dict[str, Any], source: str | Path | None = None) -> None:
    """Raise ``InputError`` for the first out-of-range value of a dotted-key config view, then
    for a precision setting the named device cannot run."""
    for key, value in flat.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise InputError(f"configuration key '{key}' must be finite, got {value}", source, key)
        rule = RULES.get(key)
        problem = rule(value) if rule else None
        if problem:
            raise InputError(f"configuration key '{key}' {problem}, got {value!r}", source, key)
    combination = _combinations(flat)
    if combination:
        key, problem = combination
        raise InputError(f"configuration key '{key}' {problem}", source, key)
