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
    "pose_source": ("tf", "where camera poses come from: tf (map_frame -> camera frame at the "
                          "image stamp), pose (geometry_msgs/PoseStamped on 'pose') or odometry "
                          "(nav_msgs/Odometry on 'odom')"),
    "pose_is_optical": (True, "pose/odometry sources: the pose is that of the optical frame "
                              "(z forward); false = a REP-103 camera body frame (x forward)"),
    "tf_tolerance": (0.1, "seconds: a pose outside the recorded interval is used only if its "
                          "stamp is this close to the image stamp"),
    "tf_wait": (0.5, "seconds a keyframe waits for its pose to arrive before it is counted as "
                     "'without pose'"),
    "tf_cache_time": (60.0, "seconds of pose history kept"),
    "sync_slop": (0.05, "seconds: colour, depth and camera_info stamps must agree this closely"),
    "sync_queue_size": (10, "messages per input kept for approximate-time matching"),
    "qos_reliability": ("best_effort", "camera topics: best_effort (sensor data) or reliable"),
    "qos_depth": (10, "camera topics: history depth"),
    "cloud_qos_reliability": ("reliable", "cloud topic: reliable or best_effort"),
    "scene_dir": ("", "scene folder keyframes are written to; empty = "
                      "~/.ros/openmask3d/<date-time>"),
    "load_map": ("", "scene folder (or its openmask3d/ map folder) whose map is loaded at start-up "
                     "so queries work before the next map_complete"),
    "default_top_k": (5, "instances returned when a query asks for top_k = 0"),
    "max_points_per_instance": (0, "cap on the points returned per instance (0 = all)"),
    "publish_markers": (True, "publish RViz markers and points of the last query's hits"),
    "status_period": (1.0, "seconds between status messages (also sent on every change)"),
}

# Topic names used inside the node (relative, so namespaces and remapping work) ...
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
    return out
