"""Every parameter of the node, in one table (no rclpy import here).

To add or change a node parameter, edit ``NODE_PARAMETERS`` below; for a ``pipeline.*`` one,
edit the field (and its comment) in core/config.py. From these the node declares its parameters
(ros/settings.py), the launch file and ``openmask3d node`` build their arguments (rows with
``launch=True``), and config/openmask3d.yaml is generated (``openmask3d params -o
config/openmask3d.yaml``; test_ros_launch_config.py checks the committed file is current).
Also here: the node name and its topic and service names.
"""
from __future__ import annotations

from typing import Any, NamedTuple

from ..core.config import PipelineConfig
from ..core.config_docs import field_docs

NODE_NAME = "openmask3d"
PIPELINE_PREFIX = "pipeline."


class Param(NamedTuple):
    """One parameter: its default (whose type is the parameter's type) and description;
    ``choices`` (strings) or an inclusive ``range`` (numbers); ``live``: may be set on a running
    node (all others are read-only); ``launch``: also a launch argument / ``openmask3d node``
    option; ``syntax``: ``topic`` (a ROS topic name) or ``frame`` (a frame id), checked like
    the ROS names they are."""
    default: Any
    description: str
    choices: tuple[str, ...] = ()
    range: tuple[float, float] | None = None
    live: bool = False
    launch: bool = False
    syntax: str = ""

    @property
    def type(self) -> type:
        return type(self.default)

    def constraints(self) -> str:
        """The allowed values in words ('' when any value of the type is)."""
        if self.choices:
            return "one of: " + ", ".join(self.choices)
        if self.range:
            return f"from {self.range[0]} to {self.range[1]}"
        return SYNTAX.get(self.syntax, "")


# What a name parameter must look like (``Param.syntax``), in words.
SYNTAX = {"topic": "a ROS topic name",
          "frame": "a frame id: letters, digits, _ - . with / between parts"}


_RELIABILITY = ("best_effort", "reliable")

NODE_PARAMETERS: dict[str, Param] = {
    "autostart": Param(True, "drive the lifecycle node to active at start-up (configure + "
                             "activate)", launch=True),
    "map_frame": Param("map", "fixed frame of the map: poses, the cloud and all answers are in "
                              "it", live=True, syntax="frame"),
    "camera_frame": Param("", "optical frame of the colour camera; empty = the colour image's "
                              "header.frame_id", syntax="frame"),
    "color_topic": Param("/camera/color/image_raw", "colour image topic (sensor_msgs/Image; with "
                         "color_transport compressed: <color_topic>/compressed)", launch=True,
                         syntax="topic"),
    "depth_topic": Param("/camera/aligned_depth_to_color/image_raw", "depth image topic "
                         "registered to colour (with depth_transport compressedDepth: "
                         "<depth_topic>/compressedDepth)", launch=True, syntax="topic"),
    "camera_info_topic": Param("/camera/color/camera_info", "camera_info of the colour camera",
                               launch=True, syntax="topic"),
    "cloud_topic": Param("/cloud_map", "reconstructed cloud (sensor_msgs/PointCloud2)",
                         launch=True, syntax="topic"),
    "pose_topic": Param("/camera_pose", "geometry_msgs/PoseStamped topic (pose_source pose)",
                        launch=True, syntax="topic"),
    "odom_topic": Param("/odom", "nav_msgs/Odometry topic (pose_source odometry)", launch=True,
                        syntax="topic"),
    "color_transport": Param("raw", "colour input: raw (sensor_msgs/Image) or compressed "
                                    "(sensor_msgs/CompressedImage, jpeg/png)",
                             choices=("raw", "compressed"), launch=True),
    "depth_transport": Param("raw", "depth input: raw (sensor_msgs/Image) or compressedDepth "
                                    "(16UC1 PNG with the 12-byte compressedDepth header)",
                             choices=("raw", "compressedDepth"), launch=True),
    "pose_source": Param("tf", "where camera poses come from: tf (map_frame -> camera frame at "
                               "the image stamp), pose (geometry_msgs/PoseStamped on pose_topic) "
                               "or odometry (nav_msgs/Odometry on odom_topic)",
                         choices=("tf", "pose", "odometry")),
    "pose_is_optical": Param(True, "pose/odometry sources: the pose is that of the optical frame "
                                   "(z forward); false = a REP-103 camera body frame (x forward)"),
    "tf_tolerance": Param(0.1, "seconds: a pose outside the recorded interval is used only if "
                               "its stamp is this close to the image stamp; PoseStamped and "
                               "Odometry poses are interpolated only between two at most this "
                               "far apart (raise it for a pose source slower than 10 Hz)",
                          range=(0.0, 10.0), live=True),
    "pose_wait": Param(2.0, "seconds (ROS time) a keyframe candidate waits for its pose before "
                            "it is counted in frames_without_pose", range=(0.0, 60.0)),
    "pause_gap": Param(1.0, "seconds: a gap in the image stamps longer than this is a pause of "
                            "the stream (counted in stream_pauses), not lost frames",
                       range=(0.05, 3600.0)),
    "keyframe_queue_size": Param(32, "keyframe candidates that may wait for their pose at once; "
                                     "more are dropped (counted in frames_overflow)",
                                 range=(1, 10000)),
    "tf_cache_time": Param(60.0, "seconds of pose history kept", range=(1.0, 3600.0)),
    "sync_slop": Param(0.05, "seconds: colour, depth and camera_info stamps must agree this "
                             "closely", range=(0.0, 1.0)),
    "sync_queue_size": Param(30, "messages per input kept for approximate-time matching; keep "
                                  "it at least qos_depth: a node catching up after a pause may "
                                  "take one topic's backlog before another's",
                             range=(1, 1000)),
    "qos_reliability": Param("best_effort", "camera topics: best_effort (sensor data) or "
                                            "reliable", choices=_RELIABILITY),
    "qos_depth": Param(30, "camera topics: history depth; 30 = 1 s at 30 Hz, so a Python pause "
                           "(garbage collection, a busy core) delays frames instead of losing "
                           "them", range=(1, 10000)),
    "cloud_qos_reliability": Param("reliable", "cloud topic: reliable or best_effort",
                                   choices=_RELIABILITY),
    "cloud_qos_durability": Param("transient_local", "cloud topic: transient_local (also "
                                  "receives a cloud latched before the node started) or volatile",
                                  choices=("transient_local", "volatile")),
    "rebuild_period": Param(0.0, "seconds between scheduled incremental rebuilds while the "
                                 "node is active, each only when keyframes or the cloud changed "
                                 "since the last build started; 0 = off (builds start on "
                                 "map_complete or the build_map action)",
                            range=(0.0, 86400.0)),
    "scene_dir": Param("", "scene folder keyframes are written to; empty = "
                           "~/.ros/openmask3d/<date-time>", launch=True),
    "load_scene_map": Param(True, "at configure, load the latest map of scene_dir (if it has "
                                  "one) so queries work at once after a restart"),
    "load_map": Param("", "scene folder (or its openmask3d/ map folder) whose map is loaded at "
                          "start-up so queries work before the next map_complete"),
    "default_top_k": Param(5, "instances returned when a query asks for top_k = 0",
                           range=(1, 10000), live=True),
    "max_points_per_instance": Param(0, "cap on the points returned per instance (0 = all)",
                                     range=(0, 100_000_000), live=True),
    "publish_markers": Param(True, "publish RViz markers and points of the last query's hits",
                             live=True),
    "views_max_rate": Param(10.0, "Hz: the query views (detections, heatmap, markers, query "
                                  "points) are published at most this often; a faster stream "
                                  "of queries shows its latest answer", range=(0.1, 1000.0),
                            live=True),
    "status_period": Param(1.0, "seconds between status and /diagnostics messages, on the "
                                "steady clock also with use_sim_time (status is also sent on "
                                "every change)", range=(0.05, 60.0)),
}

# Declared by rclpy itself on every node: accepted in parameter files, not declared by the node
# and not written to the generated parameter file.
ROS_PARAMETERS: dict[str, Param] = {
    "use_sim_time": Param(False, "use /clock (e.g. from `openmask3d bag-play --clock`) as ROS "
                                 "time", launch=True),
    "start_type_description_service": Param(True, "offer ~/get_type_description"),
}

# Parameters that take effect when set on a running node.
LIVE_PARAMETERS = frozenset(name for name, p in NODE_PARAMETERS.items() if p.live)

# The node-private topics and services (``~/``: /openmask3d/... for the default node name).
TRIGGER_TOPIC = "~/map_complete"        # std_msgs/Empty, same purpose as the service
TRIGGER_SERVICE = "~/map_complete"      # std_srvs/Trigger
QUERY_SERVICE = "~/query"               # openmask3d_ros/srv/QueryObjects
BUILD_ACTION = "~/build_map"            # openmask3d_ros/action/BuildMap (ros/build_action.py)
STATUS_TOPIC = "~/status"               # openmask3d_ros/msg/PipelineStatus
MARKERS_TOPIC = "~/markers"             # visualization_msgs/MarkerArray
QUERY_POINTS_TOPIC = "~/query_points"   # sensor_msgs/PointCloud2


def launch_arguments() -> dict[str, Param]:
    """The parameters that are also launch arguments and runner options, in table order."""
    table = {**ROS_PARAMETERS, **NODE_PARAMETERS}
    return {name: p for name, p in table.items() if p.launch}


def argument_value(name: str, text: str) -> Any:
    """A launch argument's text as the value of parameter ``name`` (ValueError when it is not
    one)."""
    p = launch_arguments()[name]
    if p.type is bool:
        low = text.strip().lower()
        if low not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
            raise ValueError(f"argument {name} must be true or false, got '{text}'")
        return low in ("true", "1", "yes", "on")
    value = p.type(text)
    if p.choices and value not in p.choices:
        raise ValueError(f"argument {name} must be {p.constraints()}, got '{text}'")
    return value


def pipeline_parameters() -> dict[str, Param]:
    """``pipeline.<key>`` -> Param from PipelineConfig's defaults and config.py's comments
    (read-only: they shape the map). Ranges are checked by core/config_check.py."""
    docs = field_docs()
    return {PIPELINE_PREFIX + key: Param(value, docs[key].text if key in docs else "")
            for key, value in PipelineConfig().flat().items()}


def pipeline_defaults() -> dict[str, Any]:
    """``pipeline.<key>`` -> default, from PipelineConfig (the paper's values)."""
    return {PIPELINE_PREFIX + k: v for k, v in PipelineConfig().flat().items()}


def all_defaults() -> dict[str, Any]:
    """Every parameter a parameter file may set (the node's, the pipeline's and rclpy's)."""
    table = {**NODE_PARAMETERS, **ROS_PARAMETERS}
    return {**{name: p.default for name, p in table.items()}, **pipeline_defaults()}
