"""``openmask3d node``: run the ROS 2 node exactly as launch/pipeline.launch.py does (same node
name, parameter file and default remappings), for systems without ``ros2 launch``; plus
``openmask3d bag-record`` / ``openmask3d bag-play``."""
from __future__ import annotations

import argparse
from pathlib import Path

from . import CliError

ROOT = Path(__file__).resolve().parents[2]


def default_params() -> Path:
    """config/openmask3d.yaml of a source checkout, else the installed share/openmask3d_ros one."""
    path = ROOT / "config" / "openmask3d.yaml"
    if path.is_file():
        return path
    try:
        from ament_index_python.packages import get_package_share_directory
        return Path(get_package_share_directory("openmask3d_ros")) / "config" / "openmask3d.yaml"
    except Exception:   # not installed with ament: report the source path as missing
        return path


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "node", help="run the OpenMask3D ROS 2 node (like `ros2 launch openmask3d_ros "
                     "pipeline.launch.py`)",
        description="Run the OpenMask3D lifecycle node with a ROS parameter file. Topics are "
                    "remapped to the same defaults as launch/pipeline.launch.py; override with "
                    "--remap or pass raw ROS arguments after --ros-args.")
    p.add_argument("--params", default=None,
                   help="ROS 2 parameter YAML (default: config/openmask3d.yaml)")
    p.add_argument("--param", action="append", default=[], metavar="KEY:=VALUE",
                   help="override one parameter, e.g. --param pipeline.frame_step:=5 (repeatable)")
    p.add_argument("--remap", action="append", default=[], metavar="FROM:=TO",
                   help="remap a node topic, e.g. --remap color/image_raw:=/cam/rgb (repeatable)")
    p.add_argument("--name", default=None, help="node name (default: openmask3d)")
    p.add_argument("--ros-args", dest="ros_args", nargs=argparse.REMAINDER, default=[],
                   help="everything after this is passed to ROS unchanged")
    p.set_defaults(func=run_node)

    r = subparsers.add_parser("bag-record", help="record a scene folder as a ROS 2 bag",
                              description="Write a scene folder's frames (colour, depth, "
                                          "camera_info), poses (/tf, /tf_static), cloud and a "
                                          "map-complete trigger as a ROS 2 bag (rosbags).")
    r.add_argument("scene", help="scene folder")
    r.add_argument("bag", help="output bag directory (must not exist)")
    r.add_argument("--rate", type=float, default=10.0, help="frame rate of the stamps (Hz)")
    r.add_argument("--depth-encoding", choices=("16UC1", "32FC1"), default="16UC1")
    r.add_argument("--color-encoding", choices=("rgb8", "bgr8", "rgba8", "bgra8", "mono8"),
                   default="rgb8")
    r.add_argument("--no-trigger", action="store_true", help="leave out the map-complete message")
    r.add_argument("--max-frames", type=int, default=None)
    r.set_defaults(func=run_bag_record)

    b = subparsers.add_parser("bag-play", help="replay a ROS 2 bag with rclpy",
                              description="Publish a bag's messages with their recorded timing.")
    b.add_argument("bag", help="bag directory")
    b.add_argument("--rate", type=float, default=1.0, help="speed factor (0 = as fast as possible)")
    b.add_argument("--exclude", action="append", default=[], metavar="TOPIC",
                   help="do not publish this topic (repeatable), e.g. /openmask3d/map_complete")
    b.add_argument("--wait", type=float, default=5.0,
                   help="seconds to wait for subscribers before publishing")
    b.add_argument("--delay", type=float, default=1.5,
                   help="seconds to wait after subscribers appear, so discovery completes on "
                        "their side too")
    b.set_defaults(func=run_bag_play)


def _pairs(items: list[str], what: str) -> dict[str, str]:
    out = {}
    for item in items:
        if ":=" not in item:
            raise CliError(f"--{what} expects FROM:=TO / KEY:=VALUE, got '{item}'")
        key, value = item.split(":=", 1)
        if not key:
            raise CliError(f"--{what} '{item}' has an empty name")
        out[key] = value
    return out


def ros_arguments(params: str | Path, overrides: dict[str, str] | None = None,
                  remaps: dict[str, str] | None = None, name: str | None = None,
                  extra: list[str] | None = None) -> list[str]:
    """The argv the node is started with (what launch_ros passes for pipeline.launch.py)."""
    from ..ros.params import DEFAULT_REMAPPINGS
    args = ["openmask3d_node", "--ros-args", "--params-file", str(params)]
    if name:
        args += ["-r", f"__node:={name}"]
    for key, value in {**DEFAULT_REMAPPINGS, **(remaps or {})}.items():
        args += ["-r", f"{key}:={value}"]
    for key, value in (overrides or {}).items():
        args += ["-p", f"{key}:={value}"]
    extra = list(extra or [])
    if extra and extra[0] == "--ros-args":
        extra = extra[1:]
    return args + extra


def check_params_file(path: Path) -> list[str]:
    """Parse the parameter file; returns warnings (unknown keys). Raises CliError on bad files."""
    import yaml
    from ..ros.params import all_defaults
    if not path.is_file():
        raise CliError(f"parameter file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise CliError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise CliError(f"{path}: expected `<node name>: {{ros__parameters: ...}}`")
    known = set(all_defaults())
    warnings = []
    for node, section in data.items():
        if not isinstance(section, dict) or "ros__parameters" not in section:
            raise CliError(f"{path}: '{node}' has no ros__parameters mapping")
        flat = _flatten(section["ros__parameters"] or {})
        warnings += [f"{path}: unknown parameter '{k}' for node '{node}'"
                     for k in flat if k not in known]
    return warnings


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def run_node(args) -> int:
    import logging
    params = Path(args.params).expanduser().resolve() if args.params else default_params()
    for warning in check_params_file(params):
        logging.getLogger("openmask3d.node").warning(warning)
    if args.name:
        params = _renamed_params(params, args.name)
    argv = ros_arguments(params, _pairs(args.param, "param"), _pairs(args.remap, "remap"),
                         args.name, args.ros_args)
    from ..ros.node import main as node_main
    return node_main(argv)


def _renamed_params(path: Path, name: str) -> Path:
    """A copy of the parameter file whose `openmask3d:` section is keyed by ``name`` (ROS applies
    a section only to the node of that name)."""
    import tempfile
    import yaml
    from ..ros.params import NODE_NAME
    data = yaml.safe_load(path.read_text()) or {}
    if NODE_NAME not in data:
        return path
    data[name] = data.pop(NODE_NAME)
    fd, tmp = tempfile.mkstemp(prefix=f"{name}_", suffix=".yaml")
    with open(fd, "w") as f:
        yaml.safe_dump(data, f)
    return Path(tmp)


def run_bag_record(args) -> int:
    from ..ros.bag import bag_summary, record_scene
    out = record_scene(args.scene, args.bag, rate_hz=args.rate, depth_encoding=args.depth_encoding,
                       color_encoding=args.color_encoding, trigger=not args.no_trigger,
                       max_frames=args.max_frames)
    for topic, (msgtype, count) in bag_summary(out).items():
        print(f"{topic:45s} {msgtype:32s} {count}")
    return 0


def run_bag_play(args) -> int:
    from ..ros.bag import play_bag
    counts = play_bag(args.bag, rate=args.rate, exclude=args.exclude,
                      wait_for_subscribers=args.wait, start_delay=args.delay)
    for topic, count in sorted(counts.items()):
        print(f"{topic:45s} {count}")
    return 0
