"""Launch the OpenMask3D node.

    ros2 launch openmask3d_ros pipeline.launch.py \
        color_topic:=/camera/color/image_raw depth_topic:=/camera/aligned_depth_to_color/image_raw \
        camera_info_topic:=/camera/color/camera_info cloud_topic:=/cloud_map \
        params_file:=/path/to/openmask3d.yaml

Without ``ros2 launch`` (e.g. the PyPI-wheel install), ``openmask3d node --params
config/openmask3d.yaml`` starts the same node with the same parameters and remappings (the
defaults below are kept equal to openmask3d_ros/ros/params.py by the tests).
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

PACKAGE = "openmask3d_ros"
NODE_NAME = "openmask3d"
NODE_EXECUTABLE = "openmask3d_node"
PARAMS_FILE = "openmask3d.yaml"

# launch argument: (topic name inside the node, default topic it is remapped to)
TOPIC_ARGUMENTS = {
    "color_topic": ("color/image_raw", "/camera/color/image_raw"),
    "depth_topic": ("depth/image_raw", "/camera/aligned_depth_to_color/image_raw"),
    "camera_info_topic": ("color/camera_info", "/camera/color/camera_info"),
    "cloud_topic": ("cloud", "/cloud_map"),
    "pose_topic": ("pose", "/camera_pose"),
    "odom_topic": ("odom", "/odom"),
}


def generate_launch_description():
    share = get_package_share_directory(PACKAGE)
    arguments = [
        DeclareLaunchArgument("params_file",
                              default_value=os.path.join(share, "config", PARAMS_FILE),
                              description="ROS 2 parameter file for the node"),
        DeclareLaunchArgument("namespace", default_value="",
                              description="namespace of the node (services become "
                                          "<ns>/openmask3d/query, ...)"),
    ]
    arguments += [
        DeclareLaunchArgument(name, default_value=default,
                              description=f"topic remapped to the node's '{topic}'")
        for name, (topic, default) in TOPIC_ARGUMENTS.items()
    ]
    node = Node(
        package=PACKAGE,
        executable=NODE_EXECUTABLE,
        name=NODE_NAME,
        namespace=LaunchConfiguration("namespace"),
        parameters=[LaunchConfiguration("params_file")],
        remappings=[(topic, LaunchConfiguration(name))
                    for name, (topic, _) in TOPIC_ARGUMENTS.items()],
        output="screen",
        emulate_tty=True,
    )
    return LaunchDescription(arguments + [node])
