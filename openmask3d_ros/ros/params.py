"""Names shared by the node, the launch file, the runner and the tests (no rclpy import here).

Every node parameter with its default and description, the node name, the node's topic names
and the default remappings that the launch file and ``openmask3d node`` both apply.
"""
from __future__ import annotations

from typing import Any

from ..core.config import PipelineConfig

NODE_NAME = "openmask3d"
PIPELINE_PREFIX = "pipeline."

# name: (default, description). Pipeline parameters (``pipeline.*``) come from PipelineConfig.
NODE_PARAMETERS: dict[str, tuple[Any, str]] = {
    "autostart": (True, "drive the lifecycle node to active at start-up (configure + activate)"),
    "map_frame": ("map", "fixed frame of the map: poses, the cloud and all answers are in it"),
    "camera_frame": ("", "optical frame of the colour camera; empty = the colour image's "
                         "header.frame_id"),
    "color_topic": ("/camera/color/image_raw", "colour image topic (sensor_msgs/Image; with "
                    "color_transport compressed: <color_topic>/compressed)"),
    "depth_topic": ("/camera/aligned_depth_to_color/image_raw", "depth image topic registered "
                    "to colour (with depth_transport compressedDepth: "
                    "<depth_topic>/compressedDepth)"),
    "camera_info_topic": ("/camera/color/camera_info", "camera_info of the colour camera"),
    "cloud_topic": ("/cloud_map", "reconstructed cloud (sensor_msgs/PointCloud2)"),
    "pose_topic": ("/camera_pose", "geometry_msgs/PoseStamped topic (pose_source pose)"),
    "odom_topic": ("/odom", "nav_msgs/Odometry topic (pose_source odometry)"),
    "color_transport": ("raw", "colour input: raw (sensor_msgs/Image) or compressed "
                               "(sensor_msgs/CompressedImage, jpeg/png)"),
    "depth_transport": ("raw", "depth input: raw (sensor_msgs/Image) or compressedDepth "
                               "(16UC1 PNG with the 12-byte compressedDepth header)"),
    "pose_source": ("tf", "where camera poses come from: tf (map_frame -> camera frame at the "
                          "image stamp), pose (geometry_msgs/PoseStamped on pose_topic) or "
                          "odometry (nav_msgs/Odometry on odom_topic)"),
    "pose_is_optical": (True, "pose/odometry sources: the pose is that of the optical frame "
                              "(z forward); false = a REP-103 camera body frame (x forward)"),
    "tf_tolerance": (0.1, "seconds: a pose outside the recorded interval is used only if its "
                          "stamp is this close to the image stamp"),
    "pose_wait": (2.0, "seconds (ROS time) a keyframe candidate waits for its pose before it is "
                       "counted as 'without pose'"),
    "keyframe_queue_size": (32, "keyframe candidates that may wait for their pose at once; more "
                                "are dropped (counted as queue overflow)"),
    "tf_cache_time": (60.0, "seconds of pose history kept"),
    "sync_slop": (0.05, "seconds: colour, depth and camera_info stamps must agree this closely"),
    "sync_queue_size": (10, "messages per input kept for approximate-time matching"),
    "qos_reliability": ("best_effort", "camera topics: best_effort (sensor data) or reliable"),
    "qos_depth": (30, "camera topics: history depth; 30 = 1 s at 30 Hz, so a Python pause "
                  "(garbage collection, a busy core) delays frames instead of losing them"),
    "cloud_qos_reliability": ("reliable", "cloud topic: reliable or best_effort"),
    "cloud_qos_durability": ("transient_local", "cloud topic: transient_local (also receives a "
                             "cloud latched before the node started) or volatile"),
    "scene_dir": ("", "scene folder keyframes are written to; empty = "
                      "~/.ros/openmask3d/<date-time>"),
    "load_scene_map": (True, "at configure, load the latest map of scene_dir (if it has one) so "
                             "queries work at once after a restart"),
    "load_map": ("", "scene folder (or its openmask3d/ map folder) whose map is loaded at start-up "
                     "so queries work before the next map_complete"),
    "default_top_k": (5, "instances returned when a query asks for top_k = 0"),
    "max_points_per_instance": (0, "cap on the points returned per instance (0 = all)"),
    "publish_markers": (True, "publish RViz markers and points of the last query's hits"),
    "status_period": (1.0, "seconds between status and /diagnostics messages (status is also "
                           "sent on every change)"),
}

# Parameters that take effect when set on a running node; every other one is read-only (set it
# in the parameter file or on the command line and restart).
LIVE_PARAMETERS = frozenset({"map_frame", "tf_tolerance", "default_top_k",
                             "max_points_per_instance", "publish_markers"})
# Allowed values of the string choices and inclusive ranges of the numbers.
CHOICES: dict[str, tuple[str, ...]] = {
    "pose_source": ("tf", "pose", "odometry"),
    "color_transport": ("raw", "compressed"),
    "depth_transport": ("raw", "compressedDepth"),
    "qos_reliability": ("best_effort", "reliable"),
    "cloud_qos_reliability": ("best_effort", "reliable"),
    "cloud_qos_durability": ("transient_local", "volatile"),
}
RANGES: dict[str, tuple[float, float]] = {
    "tf_tolerance": (0.0, 10.0), "pose_wait": (0.0, 60.0), "keyframe_queue_size": (1, 10000),
    "tf_cache_time": (1.0, 3600.0), "sync_slop": (0.0, 1.0), "sync_queue_size": (1, 1000),
    "qos_depth": (1, 10000), "default_top_k": (1, 10000),
    "max_points_per_instance": (0, 100_000_000), "status_period": (0.05, 60.0),
}
# Declared by rclpy itself on every node (accepted in parameter files).
ROS_PARAMETERS: dict[str, Any] = {"use_sim_time": False}

# Topic names used inside the node before topic parameters existed; remapping one of them
# (``-r color/image_raw:=/x``) still selects the input when its parameter is left at the default.
COLOR_TOPIC = "color/image_raw"
DEPTH_TOPIC = "depth/image_raw"
INFO_TOPIC = "color/camera_info"
CLOUD_TOPIC = "cloud"
POSE_TOPIC = "pose"
ODOM_TOPIC = "odom"
# ... and the node-private ones (``~/``: /openmask3d/... for the default node name).
TRIGGER_TOPIC = "~/map_complete"        # std_msgs/Empty, same purpose as the service
TRIGGER_SERVICE = "~/map_complete"      # std_srvs/Trigger
QUERY_SERVICE = "~/query"               # openmask3d_ros/srv/QueryObjects
STATUS_TOPIC = "~/status"               # openmask3d_ros/msg/PipelineStatus
MARKERS_TOPIC = "~/markers"             # visualization_msgs/MarkerArray
QUERY_POINTS_TOPIC = "~/query_points"   # sensor_msgs/PointCloud2

# Launch argument -> (node topic, default remapping target). Both pipeline.launch.py and
# ``openmask3d node`` remap the node's topics to these defaults (a RealSense-style camera).
TOPIC_ARGUMENTS: dict[str, tuple[str, str]] = {
    "color_topic": (COLOR_TOPIC, "/camera/color/image_raw"),
    "depth_topic": (DEPTH_TOPIC, "/camera/aligned_depth_to_color/image_raw"),
    "camera_info_topic": (INFO_TOPIC, "/camera/color/camera_info"),
    "cloud_topic": (CLOUD_TOPIC, "/cloud_map"),
    "pose_topic": (POSE_TOPIC, "/camera_pose"),
    "odom_topic": (ODOM_TOPIC, "/odom"),
}
DEFAULT_REMAPPINGS: dict[str, str] = {topic: target for topic, target in TOPIC_ARGUMENTS.values()}


def pipeline_defaults() -> dict[str, Any]:
    """``pipeline.<key>`` -> default, from PipelineConfig (the paper's values)."""
    return {PIPELINE_PREFIX + k: v for k, v in PipelineConfig().flat().items()}


def all_defaults() -> dict[str, Any]:
    """Every parameter the node declares, with its default."""
    out = {name: default for name, (default, _) in NODE_PARAMETERS.items()}
    out.update(pipeline_defaults())
    out.update(ROS_PARAMETERS)
    return out
