"""Launch the OpenMask3D node (and optionally RViz).

    ros2 launch openmask3d_ros pipeline.launch.py \
        color_topic:=/camera/color/image_raw depth_topic:=/camera/aligned_depth_to_color/image_raw \
        camera_info_topic:=/camera/color/camera_info cloud_topic:=/cloud_map \
        color_transport:=compressed use_sim_time:=true rviz:=true

Arguments named like node parameters (use_sim_time, autostart, scene_dir, the input topics and
transports: the rows of openmask3d_ros/ros/params.py marked ``launch=True``) override the
parameter file when given; left empty, the file's value holds.
The node (and RViz) get the shipped Fast DDS profile config/fastdds.xml unless
FASTDDS_DEFAULT_PROFILES_FILE / FASTRTPS_DEFAULT_PROFILES_FILE is already set; give the camera
driver the same profile (docs/ros.md).

Without ``ros2 launch`` (e.g. the PyPI-wheel install), ``openmask3d node`` takes the same
arguments as options (--use-sim-time, --color-topic, ..., --rviz), built from the same table.
"""
import os
from pathlib import Path

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from openmask3d_ros.ros.dds import PROFILE_VARIABLES, profile_variable
from openmask3d_ros.ros.params import NODE_NAME, argument_value, launch_arguments

PACKAGE = "openmask3d_ros"
NODE_EXECUTABLE = "openmask3d_node"
PARAMS_FILE = "openmask3d.yaml"
RVIZ_CONFIG = "openmask3d.rviz"
DDS_PROFILE = "fastdds.xml"
# Launch arguments that set the node parameter of the same name when not empty.
PARAMETER_ARGUMENTS = launch_arguments()


def _config(name):
    """config/<name> next to this launch file (installed share or a source checkout)."""
    here = Path(globals().get("__file__", "")).resolve().parent.parent / "config" / name
    if here.is_file():
        return str(here)
    return os.path.join(get_package_share_directory(PACKAGE), "config", name)


def _profile_env():
    """The shipped Fast DDS profile, unless the user set one."""
    if any(os.environ.get(v) for v in PROFILE_VARIABLES):
        return {}
    return {profile_variable(): _config(DDS_PROFILE)}


def _is_true(text):
    return text.strip().lower() in ("true", "1", "yes", "on")


def _nodes(context, *args, **kwargs):
    def value(name):
        return LaunchConfiguration(name).perform(context)

    overrides = {}
    for name in PARAMETER_ARGUMENTS:
        text = value(name)
        if text != "":
            overrides[name] = argument_value(name, text)
    env = _profile_env()
    actions = [Node(
        package=PACKAGE,
        executable=NODE_EXECUTABLE,
        name=NODE_NAME,
        namespace=value("namespace"),
        parameters=[value("params_file")] + ([overrides] if overrides else []),
        arguments=["--ros-args", "--log-level", value("log_level")],
        additional_env=env,
        output="screen",
        emulate_tty=True,
    )]
    if _is_true(value("rviz")):
        actions.append(Node(
            package="rviz2",
            executable="rviz2",
            name="rviz2",
            arguments=["-d", _config(RVIZ_CONFIG)],
            parameters=[{"use_sim_time": _is_true(value("use_sim_time") or "false")}],
            additional_env=env,
            output="screen",
        ))
    return actions


def generate_launch_description():
    arguments = [
        DeclareLaunchArgument("params_file", default_value=_config(PARAMS_FILE),
                              description="ROS 2 parameter file for the node"),
        DeclareLaunchArgument("namespace", default_value="",
                              description="namespace of the node (services become "
                                          "<ns>/openmask3d/query, ...)"),
        DeclareLaunchArgument("log_level", default_value="info",
                              description="ROS log level: debug, info, warn, error or fatal"),
        DeclareLaunchArgument("rviz", default_value="false",
                              description=f"also start RViz with config/{RVIZ_CONFIG}"),
    ]
    arguments += [
        DeclareLaunchArgument(name, default_value="",
                              description=f"{p.description} (empty: the parameter file's value)",
                              **({"choices": ["", *p.choices]} if p.choices else {}))
        for name, p in PARAMETER_ARGUMENTS.items()
    ]
    return LaunchDescription(arguments + [OpaqueFunction(function=_nodes)])
