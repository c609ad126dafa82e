"""Record a scene folder as a ROS 2 bag, and replay a bag into ROS 2 with rclpy.

rosbag2_py / ``ros2 bag`` are not on PyPI; ``rosbags`` (pure Python) writes and reads the bag.
Messages are built as rclpy messages and serialised with ``rclpy.serialization`` (CDR, the same
bytes ``ros2 bag record`` stores), and replayed by publishing those bytes unchanged.

A recorded scene holds, for frame i with header stamp ``start + (i + 1) / rate``:
  - ``/tf``: map -> camera_link (the camera pose, composed with the static optical rotation)
    and/or a PoseStamped of the optical frame on the pose topic, written ``pose_delay`` s after
    the images (a SLAM system publishes the pose after the frame it came from);
  - colour, depth and camera_info, frame ``camera_color_optical_frame``: raw Images (rgb8 /
    16UC1 mm / 32FC1 m), or as image_transport publishes them compressed: colour JPEG/PNG on
    ``<colour topic>/compressed``, depth on ``<depth topic>/compressedDepth``;
and once: ``/tf_static`` camera_link -> camera_color_optical_frame (first), the cloud (first and
last: the node keeps the latest) and the map-complete trigger (std_msgs/Empty, last).
"""
from __future__ import annotations

import logging
from pathlib import Path
from collections.abc import Iterable
from typing import NamedTuple

import numpy as np

from ..core.camera import usable_pose
from ..core.scene import SceneFolder
from .conversions import (BODY_T_OPTICAL, arrays_to_cloud, depth_to_compressed_depth,
                          depth_to_image, intrinsics_to_camera_info, matrix_to_pose,
                          matrix_to_transform, ns_to_stamp, rgb_to_compressed, rgb_to_image)
from .bag_play import open_bag, play_bag  # noqa: F401  (play_bag re-exported)
from .params import NODE_NAME, NODE_PARAMETERS

log = logging.getLogger(__name__)

# The node's default input topics (its topic parameters' defaults).
COLOR_TOPIC = NODE_PARAMETERS["color_topic"].default
DEPTH_TOPIC = NODE_PARAMETERS["depth_topic"].default
INFO_TOPIC = NODE_PARAMETERS["camera_info_topic"].default
CLOUD_TOPIC = NODE_PARAMETERS["cloud_topic"].default
POSE_TOPIC = NODE_PARAMETERS["pose_topic"].default
TRIGGER_TOPIC = f"/{NODE_NAME}/map_complete"
DEFAULT_START_NS = 1_700_000_000 * 1_000_000_000
COLOR_FORMATS = ("raw", "jpeg", "png")
DEPTH_FORMATS = ("raw", "compressedDepth")


def _transform_stamped(parent: str, child: str, M: np.ndarray, stamp_ns: int):
    from geometry_msgs.msg import TransformStamped
    ts = TransformStamped()
    ts.header.frame_id, ts.child_frame_id = parent, child
    ts.header.stamp = ns_to_stamp(stamp_ns)
    matrix_to_transform(M, ts.transform)
    return ts


def record_scene(scene_dir: str | Path, bag_path: str | Path, *, rate_hz: float = 10.0,
                 start_ns: int = DEFAULT_START_NS, map_frame: str = "map",
                 body_frame: str = "camera_link",
                 optical_frame: str = "camera_color_optical_frame",
                 depth_encoding: str = "16UC1", color_encoding: str = "rgb8",
                 color_format: str = "raw", depth_format: str = "raw", jpeg_quality: int = 90,
                 poses: Iterable[str] = ("tf",), pose_delay: float = 0.0,
                 trigger: bool = True, max_frames: int | None = None,
                 topics: dict[str, str] | None = None) -> Path:
    """Write the scene folder's frames, poses, cloud (and a trigger) as a ROS 2 bag (sqlite3).

    ``color_format``: raw (an Image in ``color_encoding``), jpeg or png (a CompressedImage on
    ``<color topic>/compressed``). ``depth_format``: raw or compressedDepth (on
    ``<depth topic>/compressedDepth``, 16UC1 or 32FC1 by ``depth_encoding``). ``poses``: any of
    tf and pose (PoseStamped of the optical frame in ``map_frame``). ``topics`` overrides the
    topic names: keys color, depth, camera_info, cloud, pose, trigger. Returns the bag directory,
    which must not exist yet.
    """
    from rclpy.serialization import serialize_message
    from rosbags.rosbag2 import Writer
    from rosbags.typesys import Stores, get_typestore

    poses, topic_types = _topic_layout(color_format, depth_format, poses, topics, trigger)
    scene = SceneFolder(scene_dir)
    frame_ids = scene.frame_ids[:max_frames] if max_frames else scene.frame_ids
    if not frame_ids:
        raise ValueError(f"{scene_dir}: no frames to record")
    color_k = scene.color_intrinsics()
    points, colors = scene.cloud()
    bag_path = Path(bag_path)
    if bag_path.exists():
        raise FileExistsError(f"bag {bag_path} already exists")
    typestore = get_typestore(Stores.ROS2_KILTED)
    dt_ns = int(round(1e9 / rate_hz))
    delay_ns = int(round(pose_delay * 1e9))
    frames = _FrameNames(map_frame, body_frame, optical_frame)
    images = _ImageEncoding(color_format, color_encoding, depth_format, depth_encoding,
                            jpeg_quality)

    with Writer(bag_path, version=9) as writer:
        conns = {key: writer.add_connection(topic, msgtype, typestore=typestore)
                 for key, (topic, msgtype) in topic_types.items()}
        out = _PoseDelayingWriter(writer, conns, serialize_message, delay_ns)
        cloud = _write_static(out, frames, points, colors, start_ns)
        t = start_ns
        for i, fid in enumerate(frame_ids):
            t = start_ns + (i + 1) * dt_ns
            _write_frame(out, scene, fid, t, color_k, images, frames, poses)
        _write_final(out, cloud, t + max(dt_ns, delay_ns + 1), dt_ns, trigger)
    log.info("recorded %d frames of %s into %s", len(frame_ids), scene_dir, bag_path)
    return bag_path


_OPTICAL_T_BODY = np.linalg.inv(BODY_T_OPTICAL)


class _FrameNames(NamedTuple):
    """The map, camera body and camera optical frame ids."""

    map: str
    body: str
    optical: str


class _ImageEncoding(NamedTuple):
    """How record_scene writes colour and depth images."""

    color_format: str
    color_encoding: str
    depth_format: str
    depth_encoding: str
    jpeg_quality: int

    def color_msg(self, rgb: np.ndarray):
        if self.color_format == "raw":
            return rgb_to_image(rgb, self.color_encoding)
        return rgb_to_compressed(rgb, self.color_format, quality=self.jpeg_quality)

    def depth_msg(self, depth: np.ndarray):
        if self.depth_format == "raw":
            return depth_to_image(depth, self.depth_encoding)
        return depth_to_compressed_depth(depth, self.depth_encoding)


def _topic_layout(color_format: str, depth_format: str, poses: Iterable[str],
                  topics: dict[str, str] | None, trigger: bool
                  ) -> tuple[set[str], dict[str, tuple[str, str]]]:
    """Check the formats and pose kinds; (pose kinds, connection key -> (topic, message type)
    of the connections to add, in order)."""
    if color_format not in COLOR_FORMATS:
        raise ValueError(f"color_format must be one of {COLOR_FORMATS}, got '{color_format}'")
    if depth_format not in DEPTH_FORMATS:
        raise ValueError(f"depth_format must be one of {DEPTH_FORMATS}, got '{depth_format}'")
    poses = set(poses)
    if not poses or poses - {"tf", "pose"}:
        raise ValueError(f"poses must be tf and/or pose, got {sorted(poses)}")
    names = {"color": COLOR_TOPIC, "depth": DEPTH_TOPIC, "camera_info": INFO_TOPIC,
             "cloud": CLOUD_TOPIC, "pose": POSE_TOPIC, "trigger": TRIGGER_TOPIC, **(topics or {})}
    color_type = depth_type = "sensor_msgs/msg/Image"
    if color_format != "raw":
        names["color"] += "/compressed"
        color_type = "sensor_msgs/msg/CompressedImage"
    if depth_format != "raw":
        names["depth"] += "/compressedDepth"
        depth_type = "sensor_msgs/msg/CompressedImage"
    layout = {"tf_static": ("/tf_static", "tf2_msgs/msg/TFMessage"),
              "tf": ("/tf", "tf2_msgs/msg/TFMessage"),
              "pose": (names["pose"], "geometry_msgs/msg/PoseStamped"),
              "color": (names["color"], color_type),
              "depth": (names["depth"], depth_type),
              "camera_info": (names["camera_info"], "sensor_msgs/msg/CameraInfo"),
              "cloud": (names["cloud"], "sensor_msgs/msg/PointCloud2"),
              "trigger": (names["trigger"], "std_msgs/msg/Empty")}
    return poses, {key: topic_type for key, topic_type in layout.items()
                   if (key != "trigger" or trigger) and (key not in ("tf", "pose") or key in poses)}


class _PoseDelayingWriter:
    """Writes messages by connection key; pose messages wait ``delay_ns`` after their frame."""

    def __init__(self, writer, conns: dict, serialize, delay_ns: int):
        self.writer, self.conns, self.serialize, self.delay_ns = writer, conns, serialize, delay_ns
        self.pending: list[tuple[int, str, object]] = []   # pose messages due after their frame

    def write(self, key: str, stamp_ns: int, msg) -> None:
        """Write the pose messages due by ``stamp_ns``, then ``msg``."""
        while self.pending and self.pending[0][0] <= stamp_ns:
            t_due, k, m = self.pending.pop(0)
            self.writer.write(self.conns[k], t_due, self.serialize(m))
        self.writer.write(self.conns[key], stamp_ns, self.serialize(msg))

    def add_poses(self, t: int, msgs: list[tuple[str, object]]) -> None:
        """Queue the pose messages of the frame at ``t`` (written at once without a delay)."""
        self.pending.extend((t + self.delay_ns, k, m) for k, m in msgs)
        self.pending.sort(key=lambda item: item[0])
        if self.delay_ns == 0:
            for _, k, m in self.pending:
                self.writer.write(self.conns[k], t, self.serialize(m))
            self.pending.clear()


def _write_static(out: _PoseDelayingWriter, frames: _FrameNames, points: np.ndarray,
                  colors: np.ndarray, start_ns: int):
    """Write /tf_static and the first cloud at ``start_ns``; return the cloud message."""
    from tf2_msgs.msg import TFMessage
    out.write("tf_static", start_ns, TFMessage(transforms=[
        _transform_stamped(frames.body, frames.optical, BODY_T_OPTICAL, start_ns)]))
    cloud = arrays_to_cloud(points, colors, frame_id=frames.map, stamp=ns_to_stamp(start_ns))
    out.write("cloud", start_ns, cloud)
    return cloud


def _write_frame(out: _PoseDelayingWriter, scene: SceneFolder, fid: str, t: int, color_k,
                 images: _ImageEncoding, frames: _FrameNames, poses: set[str]) -> None:
    """Queue the frame's pose messages (none on lost tracking), write its images and info."""
    from sensor_msgs.msg import CameraInfo
    from tf2_msgs.msg import TFMessage
    stamp = ns_to_stamp(t)
    pose = usable_pose(scene.pose(fid))
    if pose is not None:   # lost tracking: no pose for this frame
        msgs = []
        if "tf" in poses:
            msgs.append(("tf", TFMessage(transforms=[
                _transform_stamped(frames.map, frames.body, pose @ _OPTICAL_T_BODY, t)])))
        if "pose" in poses:
            msgs.append(("pose", _pose_stamped(frames.map, pose, t)))
        out.add_poses(t, msgs)
    rgb = scene.color(fid)
    depth = scene.depth(fid)
    k = color_k if (color_k.width, color_k.height) == (rgb.shape[1], rgb.shape[0]) \
        else color_k.scaled(rgb.shape[1], rgb.shape[0])
    for key, msg in (("color", images.color_msg(rgb)), ("depth", images.depth_msg(depth)),
                     ("camera_info", intrinsics_to_camera_info(k, CameraInfo()))):
        msg.header.stamp, msg.header.frame_id = stamp, frames.optical
        out.write(key, t, msg)


def _write_final(out: _PoseDelayingWriter, cloud, t_end: int, dt_ns: int, trigger: bool) -> None:
    """Write the cloud again at ``t_end`` (after every pose) and the trigger one period later."""
    from std_msgs.msg import Empty
    cloud.header.stamp = ns_to_stamp(t_end)
    out.write("cloud", t_end, cloud)
    if trigger:
        out.write("trigger", t_end + dt_ns, Empty())


def _pose_stamped(frame: str, M: np.ndarray, stamp_ns: int):
    from geometry_msgs.msg import PoseStamped
    ps = PoseStamped()
    ps.header.frame_id, ps.header.stamp = frame, ns_to_stamp(stamp_ns)
    matrix_to_pose(M, ps.pose)
    return ps


def bag_summary(bag_path: str | Path) -> dict[str, tuple[str, int]]:
    """topic -> (message type, message count)."""
    with open_bag(bag_path) as reader:
        return {c.topic: (c.msgtype, c.msgcount) for c in reader.connections}
