"""Record a scene folder as a ROS 2 bag, and replay a bag into ROS 2 with rclpy.

rosbag2_py / ``ros2 bag`` are not on PyPI; ``rosbags`` (pure Python) writes and reads the bag.
Messages are built as rclpy messages and serialised with ``rclpy.serialization`` (CDR, the same
bytes ``ros2 bag record`` stores), and replayed by publishing those bytes unchanged.

A recorded scene holds, for frame i at ``start + i / rate``:
  - ``/tf``: map -> camera_link (the camera pose, composed with the static optical rotation);
  - colour (rgb8), depth (16UC1 mm or 32FC1 m) and camera_info, frame ``camera_color_optical_frame``;
and once: ``/tf_static`` camera_link -> camera_color_optical_frame (first), the cloud (first and
last: the node keeps the latest) and the map-complete trigger (std_msgs/Empty, last).
"""
from __future__ import annotations

import importlib
import logging
import time
from pathlib import Path
from typing import Iterable

import numpy as np

from ..core.scene import SceneFolder
from .conversions import (BODY_T_OPTICAL, arrays_to_cloud, depth_to_image,
                          intrinsics_to_camera_info, matrix_to_transform, ns_to_stamp,
                          rgb_to_image)
from .params import DEFAULT_REMAPPINGS, NODE_NAME

log = logging.getLogger(__name__)

COLOR_TOPIC = DEFAULT_REMAPPINGS["color/image_raw"]
DEPTH_TOPIC = DEFAULT_REMAPPINGS["depth/image_raw"]
INFO_TOPIC = DEFAULT_REMAPPINGS["color/camera_info"]
CLOUD_TOPIC = DEFAULT_REMAPPINGS["cloud"]
TRIGGER_TOPIC = f"/{NODE_NAME}/map_complete"
DEFAULT_START_NS = 1_700_000_000 * 1_000_000_000


def _msg_class(msgtype: str):
    """'sensor_msgs/msg/Image' -> the rclpy message class."""
    pkg, kind, name = msgtype.split("/")
    return getattr(importlib.import_module(f"{pkg}.{kind}"), name)


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
                 trigger: bool = True, max_frames: int | None = None,
                 topics: dict[str, str] | None = None) -> Path:
    """Write the scene folder's frames, poses, cloud (and a trigger) as a ROS 2 bag (sqlite3).

    ``topics`` overrides the topic names: keys color, depth, camera_info, cloud, trigger.
    Returns the bag directory. The bag must not exist yet.
    """
    from rclpy.serialization import serialize_message
    from rosbags.rosbag2 import Writer
    from rosbags.typesys import Stores, get_typestore
    from sensor_msgs.msg import CameraInfo
    from std_msgs.msg import Empty
    from tf2_msgs.msg import TFMessage

    names = {"color": COLOR_TOPIC, "depth": DEPTH_TOPIC, "camera_info": INFO_TOPIC,
             "cloud": CLOUD_TOPIC, "trigger": TRIGGER_TOPIC, **(topics or {})}
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
    optical_to_body = np.linalg.inv(BODY_T_OPTICAL)

    with Writer(bag_path, version=9) as writer:
        conns = {key: writer.add_connection(topic, msgtype, typestore=typestore)
                 for key, topic, msgtype in (
                     ("tf_static", "/tf_static", "tf2_msgs/msg/TFMessage"),
                     ("tf", "/tf", "tf2_msgs/msg/TFMessage"),
                     ("color", names["color"], "sensor_msgs/msg/Image"),
                     ("depth", names["depth"], "sensor_msgs/msg/Image"),
                     ("camera_info", names["camera_info"], "sensor_msgs/msg/CameraInfo"),
                     ("cloud", names["cloud"], "sensor_msgs/msg/PointCloud2"),
                     ("trigger", names["trigger"], "std_msgs/msg/Empty"))
                 if key != "trigger" or trigger}

        def write(key: str, stamp_ns: int, msg) -> None:
            writer.write(conns[key], stamp_ns, serialize_message(msg))

        write("tf_static", start_ns, TFMessage(transforms=[
            _transform_stamped(body_frame, optical_frame, BODY_T_OPTICAL, start_ns)]))
        cloud = arrays_to_cloud(points, colors, frame_id=map_frame, stamp=ns_to_stamp(start_ns))
        write("cloud", start_ns, cloud)
        t = start_ns
        for i, fid in enumerate(frame_ids):
            t = start_ns + (i + 1) * dt_ns
            stamp = ns_to_stamp(t)
            pose = scene.pose(fid)
            if np.all(np.isfinite(pose)):   # lost tracking: no TF for this frame
                write("tf", t, TFMessage(transforms=[
                    _transform_stamped(map_frame, body_frame, pose @ optical_to_body, t)]))
            rgb = scene.color(fid)
            depth = scene.depth(fid)
            k = color_k if (color_k.width, color_k.height) == (rgb.shape[1], rgb.shape[0]) \
                else color_k.scaled(rgb.shape[1], rgb.shape[0])
            for key, msg in (("color", rgb_to_image(rgb, color_encoding)),
                             ("depth", depth_to_image(depth, depth_encoding)),
                             ("camera_info", intrinsics_to_camera_info(k, CameraInfo()))):
                msg.header.stamp, msg.header.frame_id = stamp, optical_frame
                write(key, t, msg)
        t_end = t + dt_ns
        cloud.header.stamp = ns_to_stamp(t_end)
        write("cloud", t_end, cloud)
        if trigger:
            write("trigger", t_end + dt_ns, Empty())
    log.info("recorded %d frames of %s into %s", len(frame_ids), scene_dir, bag_path)
    return bag_path


def _qos_for(topic: str, depth: int):
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
    latched = topic == "/tf_static"
    return QoSProfile(depth=depth, reliability=ReliabilityPolicy.RELIABLE,
                      durability=(DurabilityPolicy.TRANSIENT_LOCAL if latched
                                  else DurabilityPolicy.VOLATILE),
                      history=HistoryPolicy.KEEP_LAST)


def play_bag(bag_path: str | Path, node=None, *, rate: float = 1.0,
             topics: Iterable[str] | None = None, exclude: Iterable[str] = (),
             remap: dict[str, str] | None = None, wait_for_subscribers: float = 5.0,
             qos_depth: int = 100, start_delay: float = 1.5,
             latched_repeat: float = 1.0) -> dict[str, int]:
    """Publish a bag's messages with rclpy, keeping their relative timing scaled by ``rate``
    (0 = as fast as possible). Returns messages published per topic.

    ``node``: an rclpy node to publish from (one is created, with rclpy.init if needed, when
    None). ``wait_for_subscribers``: seconds to wait until every topic has a subscriber;
    ``start_delay``: seconds more before the first message, so that discovery completes on the
    subscriber side too: the publisher sees a subscription before the subscription has matched
    the publisher, and a sample sent in between can be lost even when it is transient-local
    (seen here with Fast DDS: one /tf_static sample in about five runs without the delay).
    ``latched_repeat``: the /tf_static messages so far are published again every this many
    seconds during playback (static transforms are idempotent; 0 = never), as a second guard.
    """
    import rclpy
    from rosbags.rosbag2 import Reader

    own_init = own_node = False
    if node is None:
        if not rclpy.ok():
            rclpy.init()
            own_init = True
        node = rclpy.create_node("openmask3d_bag_player")
        own_node = True
    remap = dict(remap or {})
    wanted = set(topics) if topics else None
    skip = set(exclude)
    counts: dict[str, int] = {}
    publishers = {}
    try:
        with Reader(bag_path) as reader:
            conns = [c for c in reader.connections
                     if (wanted is None or c.topic in wanted) and c.topic not in skip]
            for c in conns:
                if c.topic not in publishers:
                    publishers[c.topic] = node.create_publisher(
                        _msg_class(c.msgtype), remap.get(c.topic, c.topic),
                        _qos_for(c.topic, qos_depth))
            _wait_subscribed(node, publishers, wait_for_subscribers)
            if start_delay:
                time.sleep(start_delay)
            t_wall0 = time.monotonic()
            t_bag0 = None
            latched: list[tuple[str, bytes]] = []   # every /tf_static message so far
            next_repeat = t_wall0 + latched_repeat
            for conn, stamp, raw in reader.messages(connections=conns):
                if t_bag0 is None:
                    t_bag0 = stamp
                if rate > 0:
                    due = t_wall0 + (stamp - t_bag0) / 1e9 / rate
                    delay = due - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                data = bytes(raw)
                publishers[conn.topic].publish(data)
                counts[conn.topic] = counts.get(conn.topic, 0) + 1
                if conn.topic == "/tf_static":
                    latched.append((conn.topic, data))
                if latched_repeat > 0 and latched and time.monotonic() >= next_repeat:
                    for topic, payload in latched:
                        publishers[topic].publish(payload)
                    next_repeat = time.monotonic() + latched_repeat
        time.sleep(0.2)   # let the last samples leave before the publishers go away
    finally:
        if own_node:
            node.destroy_node()
            if own_init:
                rclpy.shutdown()
    log.info("replayed %s: %s", bag_path, counts)
    return counts


def _wait_subscribed(node, publishers: dict, timeout: float) -> None:
    if timeout <= 0:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(p.get_subscription_count() > 0 for p in publishers.values()):
            return
        time.sleep(0.05)
    missing = [t for t, p in publishers.items() if p.get_subscription_count() == 0]
    log.warning("no subscriber after %.1f s on: %s (publishing anyway)", timeout,
                ", ".join(missing))


def bag_summary(bag_path: str | Path) -> dict[str, tuple[str, int]]:
    """topic -> (message type, message count)."""
    from rosbags.rosbag2 import Reader
    with Reader(bag_path) as reader:
        return {c.topic: (c.msgtype, c.msgcount) for c in reader.connections}
