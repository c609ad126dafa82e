"""``openmask3d node``: run the ROS 2 node exactly as launch/pipeline.launch.py does (same node
name, parameter file, launch arguments and Fast DDS profile), for systems without ``ros2 launch``;
plus ``openmask3d params`` (the generated parameter file) and ``openmask3d bag-record`` /
``openmask3d bag-play``."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..core.config import flatten
from ..ros.params import NODE_NAME, all_defaults, launch_arguments
from . import CliError

LOG_LEVELS = ("debug", "info", "warn", "error", "fatal")
RVIZ_CONFIG = "openmask3d.rviz"


def default_params() -> Path:
    """config/openmask3d.yaml of a source checkout, else the installed share/openmask3d_ros one."""
    from ..ros.dds import shipped_config
    return shipped_config("openmask3d.yaml")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "node", help="run the OpenMask3D ROS 2 node (like `ros2 launch openmask3d_ros "
                     "pipeline.launch.py`)",
        description="Run the OpenMask3D lifecycle node with a ROS parameter file. The options "
                    "below are the launch file's arguments (empty / not given = the parameter "
                    "file's value). The shipped Fast DDS profile (config/fastdds.xml) is used "
                    "unless FASTDDS_DEFAULT_PROFILES_FILE / FASTRTPS_DEFAULT_PROFILES_FILE is set; "
                    "give the camera driver the same profile. --param, --remap and raw ROS "
                    "arguments after --ros-args work as well.")
    p.add_argument("--params", "--params-file", dest="params", default=None,
                   help="ROS 2 parameter YAML (default: config/openmask3d.yaml)")
    p.add_argument("--param", action="append", default=[], metavar="KEY:=VALUE",
                   help="override one parameter, e.g. --param pipeline.frame_step:=5 (repeatable)")
    p.add_argument("--remap", action="append", default=[], metavar="FROM:=TO",
                   help="remap a node topic, e.g. --remap color/image_raw:=/cam/rgb (repeatable)")
    p.add_argument("--name", default=None, help=f"node name (default: {NODE_NAME})")
    p.add_argument("--log-level", choices=LOG_LEVELS, default=None, help="ROS log level")
    _add_parameter_options(p)
    p.add_argument("--rviz", action="store_true",
                   help=f"also start rviz2 with config/{RVIZ_CONFIG}")
    p.add_argument("--ros-args", dest="ros_args", nargs=argparse.REMAINDER, default=[],
                   help="everything after this is passed to ROS unchanged")
    p.set_defaults(func=run_node)

    g = subparsers.add_parser(
        "params", help="print the node's parameter file (every parameter with its default)",
        description="Generate config/openmask3d.yaml from the parameter table "
                    "(openmask3d_ros/ros/params.py) and the pipeline configuration "
                    "(openmask3d_ros/core/config.py), descriptions as comments.")
    g.add_argument("-o", "--output", default=None, help="write it to this file instead")
    g.add_argument("--check", metavar="FILE", default=None,
                   help="exit with an error when FILE differs from the generated text")
    g.add_argument("--markdown", action="store_true",
                   help="print the node parameters as the Markdown table of docs/ros.md")
    g.set_defaults(func=run_params)

    r = subparsers.add_parser("bag-record", help="record a scene folder as a ROS 2 bag",
                              description="Write a scene folder's frames (colour, depth, "
                                          "camera_info), poses (/tf, /tf_static and/or a "
                                          "PoseStamped topic), cloud and a map-complete trigger "
                                          "as a ROS 2 bag (rosbags).")
    r.add_argument("scene", help="scene folder")
    r.add_argument("bag", help="output bag directory (must not exist)")
    r.add_argument("--rate", type=float, default=10.0, help="frame rate of the stamps (Hz)")
    r.add_argument("--depth-encoding", choices=("16UC1", "32FC1"), default="16UC1")
    r.add_argument("--color-encoding", choices=("rgb8", "bgr8", "rgba8", "bgra8", "mono8"),
                   default="rgb8")
    r.add_argument("--color-format", choices=("raw", "jpeg", "png"), default="raw",
                   help="jpeg/png: sensor_msgs/CompressedImage on <colour topic>/compressed")
    r.add_argument("--depth-format", choices=("raw", "compressedDepth"), default="raw",
                   help="compressedDepth: image_transport's format on <depth topic>/"
                        "compressedDepth")
    r.add_argument("--poses", choices=("tf", "pose", "both"), default="tf",
                   help="camera poses as /tf, as geometry_msgs/PoseStamped on /camera_pose, "
                        "or both")
    r.add_argument("--pose-delay", type=float, default=0.0,
                   help="seconds the pose messages follow their frame (as from a SLAM system)")
    r.add_argument("--no-trigger", action="store_true", help="leave out the map-complete message")
    r.add_argument("--max-frames", type=int, default=None)
    r.set_defaults(func=run_bag_record)

    b = subparsers.add_parser("bag-play", help="replay a ROS 2 bag with rclpy",
                              description="Publish a bag's messages with their recorded timing "
                                          "(with the shipped Fast DDS profile unless one is set).")
    b.add_argument("bag", help="bag directory")
    b.add_argument("--rate", type=float, default=1.0,
                   help="speed factor: 1 = real time, 0 = as fast as possible")
    b.add_argument("--clock", action="store_true",
                   help="publish /clock from the bag stamps (for --use-sim-time nodes)")
    b.add_argument("--clock-hz", type=float, default=40.0, help="/clock ticks per second")
    b.add_argument("--qos", choices=("reliable", "best-effort"), default="reliable",
                   help="camera topics' reliability (best-effort: like a camera driver)")
    b.add_argument("--compress", action="store_true",
                   help="publish raw colour images as JPEG on <topic>/compressed and depth as "
                        "compressedDepth on <topic>/compressedDepth")
    b.add_argument("--exclude", action="append", default=[], metavar="TOPIC",
                   help="do not publish this topic (repeatable), e.g. /openmask3d/map_complete")
    b.add_argument("--wait", type=float, default=5.0,
                   help="seconds to wait for subscribers before publishing")
    b.add_argument("--delay", type=float, default=1.5,
                   help="seconds to wait after subscribers appear, so discovery completes on "
                        "their side too")
    b.set_defaults(func=run_bag_play)


def _add_parameter_options(p) -> None:
    """One option per launch argument (params.launch_arguments()): a false-by-default switch is a
    flag (--use-sim-time), other switches take true/false, choices are checked."""
    for name, param in launch_arguments().items():
        flag = "--" + name.replace("_", "-")
        if param.type is bool and not param.default:
            p.add_argument(flag, dest=name, action="store_true", help=param.description)
        elif param.type is bool:
            p.add_argument(flag, dest=name, choices=("true", "false"), default=None,
                           help=param.description)
        else:
            p.add_argument(flag, dest=name, choices=param.choices or None, default=None,
                           help=param.description)


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
                  extra: list[str] | None = None, log_level: str | None = None) -> list[str]:
    """The argv the node is started with (what launch_ros passes for pipeline.launch.py):
    the parameter file, then ``-p`` overrides (topics, transports, use_sim_time, ...), remaps
    and the log level."""
    args = ["openmask3d_node", "--ros-args", "--params-file", str(params)]
    if name:
        args += ["-r", f"__node:={name}"]
    for key, value in (remaps or {}).items():
        args += ["-r", f"{key}:={value}"]
    for key, value in (overrides or {}).items():
        args += ["-p", f"{key}:={value}"]
    if log_level:
        args += ["--log-level", log_level]
    extra = list(extra or [])
    if extra and extra[0] == "--ros-args":
        extra = extra[1:]
    return args + extra


def argument_overrides(args) -> dict[str, str]:
    """Parameter overrides from the launch-argument options (only those given)."""
    out = {}
    for name in launch_arguments():
        value = getattr(args, name, None)
        if value is True:
            out[name] = "true"
        elif value not in (None, "", False):
            out[name] = value
    return out


def known_parameters() -> set[str]:
    return set(all_defaults())


def _is_known(key: str, known: set[str]) -> bool:
    return key in known or key.startswith("qos_overrides.")


def check_params_file(path: Path, node_name: str = NODE_NAME) -> list[str]:
    """Parse the parameter file; returns warnings (unknown keys, sections that do not apply to
    a node named ``node_name``). Raises CliError on bad files."""
    import yaml
    if not path.is_file():
        raise CliError(f"parameter file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise CliError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise CliError(f"{path}: expected `<node name>: {{ros__parameters: ...}}`")
    known = known_parameters()
    warnings = []
    for node, section in data.items():
        if not isinstance(section, dict) or "ros__parameters" not in section:
            raise CliError(f"{path}: '{node}' has no ros__parameters mapping")
        if "*" not in str(node) and str(node).rstrip("/").rsplit("/", 1)[-1] != node_name:
            warnings.append(f"{path}: section '{node}' does not apply to the node "
                            f"'{node_name}' (use '/**:' to apply a file to any node name)")
        flat = flatten(section["ros__parameters"] or {})
        warnings += [f"{path}: unknown parameter '{k}' for node '{node}'"
                     for k in flat if not _is_known(k, known)]
    return warnings


def run_node(args) -> int:
    import logging
    from ..ros.dds import apply_profile, shipped_config
    log = logging.getLogger("openmask3d.node")
    params = Path(args.params).expanduser().resolve() if args.params else default_params()
    for warning in check_params_file(params, args.name or NODE_NAME):
        log.warning(warning)
    overrides = {**argument_overrides(args), **_pairs(args.param, "param")}
    known = known_parameters()
    for key in overrides:
        if not _is_known(key, known):
            log.warning("--param: unknown parameter '%s'", key)
    argv = ros_arguments(params, overrides, _pairs(args.remap, "remap"), args.name,
                         args.ros_args, args.log_level)
    profile = apply_profile()          # before rclpy creates the DDS participant
    if profile:
        log.info("Fast DDS profile: %s (give the camera driver the same file)", profile)
    rviz = _start_rviz(shipped_config(RVIZ_CONFIG)) if args.rviz else None
    from ..ros.node import main as node_main
    try:
        return node_main(argv)
    finally:
        if rviz is not None and rviz.poll() is None:
            rviz.terminate()


def _start_rviz(config: Path):
    """rviz2 with the shipped display config, as a child process (same ROS environment)."""
    import shutil
    import subprocess
    exe = shutil.which("rviz2")
    if exe is None:
        raise CliError("--rviz: rviz2 is not on PATH (it comes with a ROS 2 desktop install, "
                       "not with the PyPI wheels); start without --rviz")
    if not config.is_file():
        raise CliError(f"--rviz: display config not found: {config}")
    return subprocess.Popen([exe, "-d", str(config)], env=dict(os.environ))


def run_params(args) -> int:
    from ..ros.param_file import parameter_file_text, parameter_table_markdown
    text = parameter_table_markdown() if args.markdown else parameter_file_text()
    if args.check:
        path = Path(args.check)
        if not path.is_file():
            raise CliError(f"parameter file not found: {path}")
        if path.read_text(encoding="utf-8") != text:
            raise CliError(f"{path} is out of date: regenerate it with "
                           f"`openmask3d params -o {path}`")
        print(f"{path} is current")
    elif args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


def run_bag_record(args) -> int:
    from ..ros.bag import bag_summary, record_scene
    poses = ("tf", "pose") if args.poses == "both" else (args.poses,)
    out = record_scene(args.scene, args.bag, rate_hz=args.rate, depth_encoding=args.depth_encoding,
                       color_encoding=args.color_encoding, color_format=args.color_format,
                       depth_format=args.depth_format, poses=poses, pose_delay=args.pose_delay,
                       trigger=not args.no_trigger, max_frames=args.max_frames)
    summary = bag_summary(out)
    width = max(map(len, summary), default=0)
    for topic, (msgtype, count) in summary.items():
        print(f"{topic:{width}s}  {msgtype:32s} {count}")
    return 0


def run_bag_play(args) -> int:
    from ..ros.bag import play_bag
    counts = play_bag(args.bag, rate=args.rate, exclude=args.exclude,
                      wait_for_subscribers=args.wait, start_delay=args.delay, clock=args.clock,
                      clock_hz=args.clock_hz, camera_qos=args.qos.replace("-", "_"),
                      compress=args.compress)
    width = max(map(len, counts), default=0)
    for topic, count in sorted(counts.items()):
        print(f"{topic:{width}s}  {count}")
    return 0
