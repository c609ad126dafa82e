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

_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?|mps)$")


def _ge(lo: float) -> Callable[[Any], str | None]:
    return lambda v: None if v >= lo else f"must be >= {lo}"


def _gt(lo: float) -> Callable[[Any], str | None]:
    return lambda v: None if v > lo else f"must be > {lo}"


def _within(lo: float, hi: float) -> Callable[[Any], str | None]:
    return lambda v: None if lo <= v <= hi else f"must be in [{lo}, {hi}]"


def _one_of(*names: str) -> Callable[[Any], str | None]:
    return lambda v: None if v in names else f"must be one of {', '.join(names)}"


# dotted key -> rule; keys a config does not have (another version) are skipped
RULES: dict[str, Callable[[Any], str | None]] = {
    "frame_step": _ge(1),
    "device": lambda v: None if _DEVICE.match(v) else "must be auto, cpu, cuda or cuda:N",
    "threads": _ge(0),
    "keep_generations": _ge(1),
    "fidelity": _one_of("official", "paper"),
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
    "segmenter.backend": _one_of("hull", "sam"),
    "segmenter.k_rounds": _ge(1),
    "segmenter.k_sample": _ge(1),
    "crops.levels": _ge(1),
    "crops.k_exp": _within(0.0, 1.0),
    "encoder.backend": _one_of("colour", "clip"),
    "encoder.batch_size": _ge(1),
    "encoder.prompt_template": lambda v: None if "{}" in v else "must contain {} for the text",
    "encoder.text_cache_size": _ge(0),
    "query.temperature": _gt(0),
    "query.min_relevance": _within(0.0, 1.0),
    "query.prompt_template": lambda v: None if "{}" in v else "must contain {} for the text",
    "structure.span_fraction": _within(0.0, 1.0),
}


def validate(flat: dict[str, Any], source: str | Path | None = None) -> None:
    """Raise ``InputError`` for the first out-of-range value of a dotted-key config view."""
    for key, value in flat.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise InputError(f"configuration key '{key}' must be finite, got {value}", source, key)
        rule = RULES.get(key)
        problem = rule(value) if rule else None
        if problem:
            raise InputError(f"configuration key '{key}' {problem}, got {value!r}", source, key)
