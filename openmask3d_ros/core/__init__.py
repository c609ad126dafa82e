"""ROS-free OpenMask3D core: scene folders, proposals, visibility, views, 2D refinement, crops,
encoders, per-instance features, map storage and text queries.

The public API (everything else is importable from its module, but may change)::

    from openmask3d_ros.core import PipelineConfig, build_models, open_map, run_pipeline

    cfg = load_config("config/openmask3d.yaml")    # or PipelineConfig() for the defaults
    imap = run_pipeline("scene_folder", cfg)       # builds and saves scene_folder/openmask3d
    engine = open_map("scene_folder")              # the map with the encoder it was built with
    answer = engine.query("a mug", top_k=3)        # ranked hits: instance, score, points, box

Names resolve on first use, so importing one submodule does not import the whole pipeline.
"""
from __future__ import annotations

from importlib import import_module

_EXPORTS = {
    "PipelineConfig": "config", "load_config": "config", "Fidelity": "fidelity",
    "build_models": "models", "Models": "models", "run_pipeline": "pipeline",
    "InstanceMap": "instance_map", "MapMeta": "map_meta", "open_map": "query",
    "QueryEngine": "query", "InputError": "errors", "SceneFolder": "scene",
    "make_scene": "synthetic", "BuildCancelled": "errors", "compare_maps": "changes",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
