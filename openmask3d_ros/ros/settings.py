"""The node's parameters: declared with descriptors (read-only unless live, ranges, choices) and
read once into a ``NodeSettings`` object on configure; live parameters replace it when set."""
from __future__ import annotations

import dataclasses
from typing import Any

from rcl_interfaces.msg import (FloatingPointRange, IntegerRange, ParameterDescriptor,
                                SetParametersResult)

from ..core.config import PipelineConfig
from . import params as P


class _SettingsMethods:
    @staticmethod
    def from_values(values: dict[str, Any]) -> NodeSettings:
        """Check and convert parameter values (``pipeline.*`` keys included); ValueError names
        the parameter."""
        node = {}
        for name, p in P.NODE_PARAMETERS.items():
            value = values.get(name, p.default)
            problem = check_value(name, value)
            if problem:
                raise ValueError(problem)
            node[name] = float(value) if p.type is float else value
        pipe = {k[len(P.PIPELINE_PREFIX):]: v for k, v in values.items()
                if k.startswith(P.PIPELINE_PREFIX)}
        cfg = PipelineConfig().updated(pipe).validate()    # the CLI's range checks (config_check)
        return NodeSettings(pipeline=cfg, **node)

    def with_live(self, changes: dict[str, Any]) -> NodeSettings:
        """A copy with live parameters changed."""
        conv = {k: float(v) if P.NODE_PARAMETERS[k].type is float else v
                for k, v in changes.items()}
        return dataclasses.replace(self, **conv)


# One attribute per row of params.NODE_PARAMETERS (typed like its default), plus ``pipeline``
# (the PipelineConfig): built from the table so that adding a parameter is one edit there.
NodeSettings = dataclasses.make_dataclass(
    "NodeSettings", [(name, p.type) for name, p in P.NODE_PARAMETERS.items()]
    + [("pipeline", PipelineConfig)], bases=(_SettingsMethods,), frozen=True)
NodeSettings.__module__ = __name__
NodeSettings.__doc__ = "Every node parameter's value (names as in params.NODE_PARAMETERS)."


def check_value(name: str, value: Any) -> str | None:
    """Why ``value`` is not acceptable for node parameter ``name`` (None when it is)."""
    p = P.NODE_PARAMETERS[name]
    want = (int, float) if p.type is float else p.type
    if isinstance(value, bool) and p.type is not bool or not isinstance(value, want):
        return (f"parameter {name} must be a {p.type.__name__}, got "
                f"{type(value).__name__} {value!r}")
    if p.choices and value not in p.choices:
        return f"parameter {name} must be one of {', '.join(p.choices)}, got '{value}'"
    if p.range and not p.range[0] <= value <= p.range[1]:
        return f"parameter {name} must be in [{p.range[0]}, {p.range[1]}], got {value}"
    if name == "map_frame" and not str(value).strip():
        return "parameter map_frame must not be empty"
    return None


_READ_ONLY = "read-only: set it in the parameter file and restart"


def descriptor(name: str) -> ParameterDescriptor:
    """Description, read-only flag, range and choices of node parameter ``name``."""
    p = P.NODE_PARAMETERS[name]
    d = ParameterDescriptor(description=p.description, read_only=not p.live)
    d.additional_constraints = "; ".join(filter(None, (
        "can be changed while the node runs" if p.live else _READ_ONLY, p.constraints())))
    if p.range:
        lo, hi = p.range
        if p.type is float:
            d.floating_point_range = [FloatingPointRange(from_value=float(lo), to_value=float(hi))]
        else:
            d.integer_range = [IntegerRange(from_value=int(lo), to_value=int(hi), step=1)]
    return d


def declare_parameters(node) -> None:
    """Declare every node and pipeline parameter on ``node``."""
    for name, p in P.NODE_PARAMETERS.items():
        node.declare_parameter(name, p.default, descriptor(name))
    # Pipeline keys accept ints for floats etc.; PipelineConfig.updated() type-checks them with
    # messages that name the key. They shape the map, so they change only with a restart.
    for name, p in P.pipeline_parameters().items():
        node.declare_parameter(name, p.default, ParameterDescriptor(
            description=p.description or f"OpenMask3D pipeline setting {name}",
            dynamic_typing=True, read_only=True, additional_constraints=_READ_ONLY))


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
