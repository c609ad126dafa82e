"""The node's parameters: declared with descriptors (read-only unless live, ranges, choices) and
read once into a ``NodeSettings`` object on configure; live parameters replace it when set."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from rcl_interfaces.msg import (FloatingPointRange, IntegerRange, ParameterDescriptor,
                                SetParametersResult)

from ..core.config import PipelineConfig
from . import params as P


@dataclass(frozen=True)
class NodeSettings:
    """Every node parameter (names as in params.NODE_PARAMETERS) plus the pipeline config."""
    autostart: bool
    map_frame: str
    camera_frame: str
    color_topic: str
    depth_topic: str
    camera_info_topic: str
    cloud_topic: str
    pose_topic: str
    odom_topic: str
    color_transport: str
    depth_transport: str
    pose_source: str
    pose_is_optical: bool
    tf_tolerance: float
    pose_wait: float
    keyframe_queue_size: int
    tf_cache_time: float
    sync_slop: float
    sync_queue_size: int
    qos_reliability: str
    qos_depth: int
    cloud_qos_reliability: str
    cloud_qos_durability: str
    scene_dir: str
    load_scene_map: bool
    load_map: str
    default_top_k: int
    max_points_per_instance: int
    publish_markers: bool
    status_period: float
    pipeline: PipelineConfig

    @staticmethod
    def from_values(values: dict[str, Any]) -> NodeSettings:
        """Check and convert parameter values (``pipeline.*`` keys included); ValueError names
        the parameter."""
        node = {}
        for name, (default, _) in P.NODE_PARAMETERS.items():
            value = values.get(name, default)
            problem = check_value(name, value)
            if problem:
                raise ValueError(problem)
            node[name] = type(default)(value) if isinstance(default, float) else value
        pipe = {k[len(P.PIPELINE_PREFIX):]: v for k, v in values.items()
                if k.startswith(P.PIPELINE_PREFIX)}
        cfg = PipelineConfig().updated(pipe)
        if cfg.frame_step < 1:
            raise ValueError(f"pipeline.frame_step must be >= 1, got {cfg.frame_step}")
        return NodeSettings(pipeline=cfg, **node)

    def with_live(self, changes: dict[str, Any]) -> NodeSettings:
        """A copy with live parameters changed."""
        conv = {k: float(v) if isinstance(P.NODE_PARAMETERS[k][0], float) else v
                for k, v in changes.items()}
        return dataclasses.replace(self, **conv)


def check_value(name: str, value: Any) -> str | None:
    """Why ``value`` is not acceptable for node parameter ``name`` (None when it is)."""
    default = P.NODE_PARAMETERS[name][0]
    want = (int, float) if isinstance(default, float) else type(default)
    if isinstance(value, bool) and not isinstance(default, bool) or not isinstance(value, want):
        return (f"parameter {name} must be a {type(default).__name__}, got "
                f"{type(value).__name__} {value!r}")
    if name in P.CHOICES and value not in P.CHOICES[name]:
        return f"parameter {name} must be one of {', '.join(P.CHOICES[name])}, got '{value}'"
    if name in P.RANGES:
        lo, hi = P.RANGES[name]
        if not lo <= value <= hi:
            return f"parameter {name} must be in [{lo}, {hi}], got {value}"
    if name == "map_frame" and not str(value).strip():
        return "parameter map_frame must not be empty"
    return None


def descriptor(name: str) -> ParameterDescriptor:
    """Description, read-only flag, range and choices of node parameter ``name``."""
    default, text = P.NODE_PARAMETERS[name]
    live = name in P.LIVE_PARAMETERS
    d = ParameterDescriptor(description=text, read_only=not live)
    d.additional_constraints = ("can be changed while the node runs" if live else
                                "read-only: set it in the parameter file and restart")
    if name in P.CHOICES:
        d.additional_constraints += f"; one of: {', '.join(P.CHOICES[name])}"
    if name in P.RANGES:
        lo, hi = P.RANGES[name]
        if isinstance(default, float):
            d.floating_point_range = [FloatingPointRange(from_value=float(lo), to_value=float(hi))]
        else:
            d.integer_range = [IntegerRange(from_value=int(lo), to_value=int(hi), step=1)]
    return d


def declare_parameters(node) -> None:
    """Declare every node and pipeline parameter on ``node``."""
    for name, (default, _) in P.NODE_PARAMETERS.items():
        node.declare_parameter(name, default, descriptor(name))
    # Pipeline keys accept ints for floats etc.; PipelineConfig.updated() type-checks them with
    # messages that name the key. They shape the map, so they change only with a restart.
    for name, default in P.pipeline_defaults().items():
        node.declare_parameter(name, default, ParameterDescriptor(
            description=f"OpenMask3D pipeline setting {name[len(P.PIPELINE_PREFIX):]}",
            dynamic_typing=True, read_only=True,
            additional_constraints="read-only: set it in the parameter file and restart"))


def read_settings(node) -> NodeSettings:
    """The node's current parameter values as a NodeSettings (ValueError on bad values)."""
    names = list(P.NODE_PARAMETERS) + list(P.pipeline_defaults())
    return NodeSettings.from_values({n: node.get_parameter(n).value for n in names})


def check_live_change(params) -> SetParametersResult:
    """Accept or refuse a set_parameters request for live parameters (read-only ones are
    refused by rclpy itself from their descriptors)."""
    for p in params:
        if p.name in P.LIVE_PARAMETERS:
            problem = check_value(p.name, p.value)
            if problem:
                return SetParametersResult(successful=False, reason=problem)
    return SetParametersResult(successful=True)
