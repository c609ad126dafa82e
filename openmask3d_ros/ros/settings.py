"""The node's parameters: declared with descriptors (read-only unless live, ranges, choices) and
read once into a ``NodeSettings`` object on configure; live parameters replace it when set."""
from __future__ import annotations

import dataclasses
import difflib
import re
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


_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
# A frame id: ROS name characters plus '-' and '.', parts separated by single '/' (one leading
# '/' is ignored, as tf2 does); no spaces or control characters.
_FRAME_ID = re.compile(r"/?[A-Za-z0-9_.\-]+(/[A-Za-z0-9_.\-]+)*")


def check_value(name: str, value: Any) -> str | None:
    """Why ``value`` is not acceptable for node parameter ``name`` (None when it is)."""
    p = P.NODE_PARAMETERS[name]
    want = (int, float) if p.type is float else p.type
    if isinstance(value, bool) and p.type is not bool or not isinstance(value, want):
        return (f"parameter {name} must be {_TYPE_NAMES.get(p.type, p.type.__name__)}, got "
                f"{type(value).__name__} {value!r}")
    if p.choices and value not in p.choices:
        return f"parameter {name} must be one of {', '.join(p.choices)}, got '{value}'"
    if p.range and not p.range[0] <= value <= p.range[1]:
        return f"parameter {name} must be in [{p.range[0]}, {p.range[1]}], got {value}"
    if name == "map_frame" and not str(value).strip():
        return "parameter map_frame must not be empty"
    return _syntax_problem(name, p, value)


def _syntax_problem(name: str, p: P.Param, value: str) -> str | None:
    """Why a topic or frame parameter's value is not such a name (None when it is, or when it
    is empty and may be: camera_frame)."""
    if not p.syntax or value == "" and p.default == "":
        return None
    if p.syntax == "topic":
        from rclpy.exceptions import InvalidTopicNameException
        from rclpy.validate_topic_name import validate_topic_name
        try:
            validate_topic_name(value)
            return None
        except InvalidTopicNameException as exc:
            why = str(exc).split("\n", 1)[0].removeprefix("Invalid topic name: ").rstrip(":")
            return f"parameter {name} must be {P.SYNTAX['topic']} ({why}), got {value!r}"
    if _FRAME_ID.fullmatch(value):
        return None
    return f"parameter {name} must be {P.SYNTAX['frame']}, got {value!r}"


def unknown_parameter(name: str) -> str:
    """The reason a set_parameters request for an undeclared ``name`` is refused."""
    near = difflib.get_close_matches(name, P.all_defaults(), n=1)
    hint = f" (did you mean {near[0]}?)" if near else ""
    return (f"{name!r} is not a parameter of this node{hint}; `ros2 param list` or "
            "list_parameters gives them all")


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
    """Declare every node and pipeline parameter on ``node``; ValueError naming the parameter
    when a given value does not fit its type or range (rclpy's own exceptions otherwise)."""
    from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException
    for name, p in P.NODE_PARAMETERS.items():
        try:
            node.declare_parameter(name, p.default, descriptor(name))
        except (InvalidParameterTypeException, InvalidParameterValueException) as exc:
            given = getattr(node, "_parameter_overrides", {}).get(name)   # what rclpy took
            problem = check_value(name, given.value) if given is not None else None
            raise ValueError(problem or _declare_problem(name, exc)) from None
    # Pipeline keys accept ints for floats etc.; PipelineConfig.updated() type-checks them with
    # messages that name the key. They shape the map, so they change only with a restart.
    for name, p in P.pipeline_parameters().items():
        node.declare_parameter(name, p.default, ParameterDescriptor(
            description=p.description or f"OpenMask3D pipeline setting {name}",
            dynamic_typing=True, read_only=True, additional_constraints=_READ_ONLY))


def _declare_problem(name: str, exc: Exception) -> str:
    """One line for a value rclpy refused although check_value takes it (an integer for a
    floating-point parameter)."""
    p = P.NODE_PARAMETERS[name]
    if p.type is float:
        return (f"parameter {name} must be a number with a decimal point (e.g. 1.0: ROS reads 1 "
                f"as an integer), {p.constraints() or 'any value'}")
    return f"parameter {name}: {exc}"


def parameter_overrides(argv: list[str]) -> dict[str, Any]:
    """The ``-p NAME:=VALUE`` (``--param``) assignments among the ROS arguments of ``argv``,
    with the values read as YAML, as rcl reads them."""
    import yaml
    out: dict[str, Any] = {}
    ros, args = False, iter(argv)
    for arg in args:
        if arg in ("--ros-args", "--"):
            ros = arg == "--ros-args"
        elif ros and arg in ("-p", "--param"):
            name, sep, text = next(args, "").partition(":=")
            if not sep:
                continue
            name = name.rsplit(":", 1)[-1]          # "node_name:param" -> "param"
            try:
                out[name] = yaml.safe_load(text)
            except yaml.YAMLError:
                out[name] = text
    return out


def check_overrides(argv: list[str]) -> None:
    """ValueError naming the first ``-p`` assignment in ``argv`` that the node would not take:
    out of range, or of another type; rcl drops a value of another type silently when a
    parameter file sets the same parameter, so it is checked here, before the node starts."""
    values = parameter_overrides(argv)
    for name, value in values.items():
        if name in P.NODE_PARAMETERS:
            p = P.NODE_PARAMETERS[name]
            problem = check_value(name, value)
            if problem is None and p.type is float and not isinstance(value, float):
                problem = _declare_problem(name, TypeError())
            if problem:
                raise ValueError(problem)
    pipe = {k: v for k, v in values.items() if k.startswith(P.PIPELINE_PREFIX)}
    if pipe:
        try:
            NodeSettings.from_values(pipe)
        except ValueError as exc:        # names the key within the pipeline section
            raise ValueError(f"parameter {P.PIPELINE_PREFIX}*: {exc}") from None


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
