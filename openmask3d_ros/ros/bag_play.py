"""Replay a ROS 2 bag into ROS 2 with rclpy (``openmask3d bag-play``), like ``ros2 bag play``.

Messages are published as the serialised bytes the bag holds, with their recorded timing scaled
by ``rate``, optionally with ``/clock`` from the bag stamps (for nodes with use_sim_time), camera
topics as best-effort (like a camera driver) or reliable, and raw images re-encoded as
image_transport's compressed / compressedDepth on the fly.
"""
from __future__ import annotations

import importlib
import logging
import time
from contextlib import contextmanager
from pathlib import Path
from collections.abc import Iterable, Iterator

from ..core.errors import InputError
from .dds import apply_profile

log = logging.getLogger(__name__)

CAMERA_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage",
                "sensor_msgs/msg/CameraInfo")
LATCHED_TYPES = ("sensor_msgs/msg/PointCloud2",)   # a map: late joiners need the last one
CAMERA_QOS = ("reliable", "best_effort")


def msg_class(msgtype: str):
    """'sensor_msgs/msg/Image' -> the rclpy message class."""
    pkg, kind, name = msgtype.split("/")
    return getattr(importlib.import_module(f"{pkg}.{kind}"), name)


def topic_qos(topic: str, msgtype: str, depth: int, camera_qos: str = "reliable"):
    """Camera topics: ``camera_qos`` (best_effort = sensor-data QoS, as camera drivers publish);
    /tf_static and clouds: reliable transient-local (latched); the rest reliable volatile."""
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
    latched = topic == "/tf_static" or msgtype in LATCHED_TYPES
    best_effort = msgtype in CAMERA_TYPES and camera_qos == "best_effort"
    return QoSProfile(depth=depth,
                      reliability=(ReliabilityPolicy.BEST_EFFORT if best_effort
                                   else ReliabilityPolicy.RELIABLE),
                      durability=(DurabilityPolicy.TRANSIENT_LOCAL if latched
                                  else DurabilityPolicy.VOLATILE),
                      history=HistoryPolicy.KEEP_LAST)


class _Compressor:
    """Raw Image bytes -> the CompressedImage image_transport would publish for it."""

    def __init__(self, kind: str, jpeg_quality: int):
        self.kind, self.quality = kind, jpeg_quality

    def __call__(self, raw: bytes):
        from rclpy.serialization import deserialize_message
        from sensor_msgs.msg import Image
        from .conversions import (depth_to_compressed_depth, image_to_depth, image_to_rgb,
                                  rgb_to_compressed)
        img = deserialize_message(raw, Image)
        if self.kind == "compressed":
            out = rgb_to_compressed(image_to_rgb(img), "jpeg", quality=self.quality)
        else:
            enc = "32FC1" if img.encoding == "32FC1" else "16UC1"
            out = depth_to_compressed_depth(image_to_depth(img), enc)
        out.header = img.header
        return out


def _transport_for(reader, conn) -> str | None:
    """'compressed' for a colour Image topic, 'compressedDepth' for a depth one, else None."""
    from .conversions import COLOR_ENCODINGS, DEPTH_ENCODINGS
    if conn.msgtype != "sensor_msgs/msg/Image":
        return None
    from rclpy.serialization import deserialize_message
    from sensor_msgs.msg import Image
    for _, _, raw in reader.messages(connections=[conn]):
        enc = deserialize_message(bytes(raw), Image).encoding
        return ("compressed" if enc in COLOR_ENCODINGS else
                "compressedDepth" if enc in DEPTH_ENCODINGS else None)
    return None


def play_bag(bag_path: str | Path, node=None, *, rate: float = 1.0,
             topics: Iterable[str] | None = None, exclude: Iterable[str] = (),
             remap: dict[str, str] | None = None, wait_for_subscribers: float = 5.0,
             qos_depth: int = 100, start_delay: float = 1.5, latched_repeat: float = 1.0,
             clock: bool = False, clock_hz: float = 40.0, camera_qos: str = "reliable",
             compress: bool = False, jpeg_quality: int = 90,
             ack_timeout: float = 10.0) -> dict[str, int]:
    """Publish a bag's messages with rclpy, keeping their relative timing scaled by ``rate``
    (1 = real time, 0 = as fast as possible). Returns messages published per topic.

    ``node``: an rclpy node to publish from (one is created, with rclpy.init and the shipped
    Fast DDS profile if none is set, when None). ``wait_for_subscribers``: seconds to wait until
    every topic has a subscriber; ``start_delay``: seconds more before the first message, so that
    discovery completes on the subscriber side too: the publisher sees a subscription before the
    subscription has matched the publisher, and a sample sent in between can be lost even when
    it is transient-local (seen here with Fast DDS: one /tf_static sample in about five runs
    without the delay). ``latched_repeat``: the /tf_static messages so far are published again
    every this many seconds during playback (static transforms are idempotent; 0 = never).
    ``clock``: publish rosgraph_msgs/Clock on /clock from the bag stamps (before each message
    and ``clock_hz`` times a second in between), for nodes with use_sim_time.
    ``camera_qos``: reliability of Image/CompressedImage/CameraInfo topics (best_effort as a
    camera driver publishes). ``compress``: raw colour images go out as JPEG on
    ``<topic>/compressed`` and depth images as compressedDepth on ``<topic>/compressedDepth``.
    ``ack_timeout``: seconds to wait at the end until subscribers have acknowledged every
    reliable sample: a reliable sample still unread when its publisher is destroyed is lost.
    """
    import rclpy

    if camera_qos not in CAMERA_QOS:
        raise ValueError(f"camera_qos must be one of {CAMERA_QOS}, got '{camera_qos}'")
    node, own_node, own_init = _player_node(node)
    remap = dict(remap or {})
    wanted = set(topics) if topics else None
    skip = set(exclude)
    try:
        with open_bag(bag_path) as reader:
            conns = [c for c in reader.connections
                     if (wanted is None or c.topic in wanted) and c.topic not in skip]
            publishers, convert = _create_publishers(node, reader, conns, remap, compress,
                                                     jpeg_quality, qos_depth, camera_qos)
            clock_pub = _ClockPublisher(node, clock_hz) if clock else None
            _wait_subscribed(node, publishers, wait_for_subscribers)
            _hold_start(reader, conns, clock_pub, start_delay)
            counts = _publish_all(reader, conns, publishers, convert, clock_pub, rate,
                                  latched_repeat)
            _wait_acked(publishers.values(), ack_timeout)
    finally:
        if own_node:
            node.destroy_node()
            if own_init:
                rclpy.shutdown()
    log.info("replayed %s: %s", bag_path, counts)
    return counts


@contextmanager
def open_bag(bag_path: str | Path) -> Iterator:
    """An open rosbags Reader on ``bag_path``; InputError naming it when it is no ROS 2 bag (a
    folder with metadata.yaml, or a .db3 / .mcap file) or its metadata cannot be read."""
    from rosbags.rosbag2 import Reader, ReaderError
    try:
        reader = Reader(bag_path)
        reader.open()
    except (ReaderError, OSError, KeyError, ValueError) as exc:
        raise InputError(f"not a readable ROS 2 bag (a folder with metadata.yaml, or a .db3 or "
                         f".mcap file): {' '.join(str(exc).split())}", bag_path) from None
    try:
        yield reader
    finally:
        reader.close()


def _player_node(node) -> tuple[object, bool, bool]:
    """(node, own_node, own_init): ``node``, or a new one (after rclpy.init with the shipped
    Fast DDS profile when rclpy is not initialised) when it is None."""
    import rclpy
    if node is not None:
        return node, False, False
    own_init = False
    if not rclpy.ok():
        apply_profile()
        rclpy.init()
        own_init = True
    return rclpy.create_node("openmask3d_bag_player"), True, own_init


def _create_publishers(node, reader, conns: list, remap: dict[str, str], compress: bool,
                       jpeg_quality: int, qos_depth: int, camera_qos: str
                       ) -> tuple[dict, dict[str, _Compressor]]:
    """A publisher per bag topic, remapped (raw images as compressed ones with ``compress``);
    (publishers, compressors), both by bag topic."""
    publishers, convert = {}, {}
    for c in conns:
        if c.topic in publishers:
            continue
        name, msgtype = remap.get(c.topic, c.topic), c.msgtype
        kind = _transport_for(reader, c) if compress else None
        if kind:
            convert[c.topic] = _Compressor(kind, jpeg_quality)
            name, msgtype = f"{name}/{kind}", "sensor_msgs/msg/CompressedImage"
        publishers[c.topic] = node.create_publisher(
            msg_class(msgtype), name, topic_qos(name, msgtype, qos_depth, camera_qos))
    return publishers, convert


def _hold_start(reader, conns: list, clock_pub: _ClockPublisher | None,
                start_delay: float) -> None:
    """Wait ``start_delay`` s before playback, publishing the first bag stamp on /clock."""
    first = next((stamp for _, stamp, _ in reader.messages(connections=conns)), None)
    if clock_pub is not None and first is not None:
        clock_pub.hold(first, start_delay)      # sim-time nodes get a time at once
    elif start_delay:
        time.sleep(start_delay)


def _publish_all(reader, conns: list, publishers: dict, convert: dict[str, _Compressor],
                 clock_pub: _ClockPublisher | None, rate: float,
                 latched_repeat: float) -> dict[str, int]:
    """Publish every message at its time scaled by ``rate``, repeating /tf_static every
    ``latched_repeat`` s; messages published per topic."""
    counts: dict[str, int] = {}
    t_wall0 = time.monotonic()
    t_bag0 = None
    latched: list[bytes] = []   # every /tf_static message so far
    next_repeat = t_wall0 + latched_repeat
    for conn, stamp, raw in reader.messages(connections=conns):
        if t_bag0 is None:
            t_bag0 = stamp
        _wait_due(stamp, t_wall0, t_bag0, rate, clock_pub)
        data = bytes(raw)
        pub = publishers[conn.topic]
        pub.publish(convert[conn.topic](data) if conn.topic in convert else data)
        counts[conn.topic] = counts.get(conn.topic, 0) + 1
        if conn.topic == "/tf_static":
            latched.append(data)
        if latched_repeat > 0 and latched and time.monotonic() >= next_repeat:
            for payload in latched:
                publishers["/tf_static"].publish(payload)
            next_repeat = time.monotonic() + latched_repeat
    return counts


def _wait_due(stamp: int, t_wall0: float, t_bag0: int, rate: float,
              clock_pub: _ClockPublisher | None) -> None:
    """Sleep until the message's wall time (none when ``rate`` is 0), ticking /clock, then
    publish its stamp on /clock."""
    if rate > 0:
        due = t_wall0 + (stamp - t_bag0) / 1e9 / rate
        if clock_pub is not None:
            clock_pub.run_until(due, t_wall0, t_bag0, rate, stamp)
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    if clock_pub is not None:
        clock_pub.publish(stamp)


class _ClockPublisher:
    """/clock from bag stamps: at each message, and ``hz`` times a second while waiting."""

    def __init__(self, node, hz: float):
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from rosgraph_msgs.msg import Clock
        self._msg = Clock()
        self._period = 1.0 / hz if hz > 0 else None
        self._pub = node.create_publisher(
            Clock, "/clock", QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE))
        self._last = None

    def publish(self, stamp_ns: int) -> None:
        if self._last is not None and stamp_ns <= self._last:
            return     # ROS time never runs backwards (bag entries are not all in stamp order)
        from .conversions import ns_to_stamp
        self._last = stamp_ns
        ns_to_stamp(stamp_ns, self._msg.clock)
        self._pub.publish(self._msg)

    def hold(self, stamp_ns: int, seconds: float) -> None:
        """Publish ``stamp_ns`` repeatedly for ``seconds`` (before playback starts)."""
        self.publish(stamp_ns)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            time.sleep(min(self._period or seconds, max(end - time.monotonic(), 0.0)))
            self._pub.publish(self._msg)

    def run_until(self, due: float, t_wall0: float, t_bag0: int, rate: float,
                  next_stamp: int) -> None:
        """Tick the clock in bag time until wall time ``due`` (never past ``next_stamp``)."""
        if self._period is None:
            return
        while True:
            now = time.monotonic()
            if now + self._period >= due:
                return
            time.sleep(self._period)
            bag_now = t_bag0 + int((time.monotonic() - t_wall0) * rate * 1e9)
            self.publish(min(bag_now, next_stamp))


def _wait_acked(publishers: Iterable, timeout: float) -> None:
    """Wait until every reliable sample is acknowledged (slow readers still receive the end of
    the stream after the last publish), at most ``timeout`` seconds in all."""
    from rclpy.duration import Duration
    deadline = time.monotonic() + timeout
    late = [p.topic_name for p in publishers
            if not p.wait_for_all_acked(Duration(seconds=max(deadline - time.monotonic(), 0.0)))]
    # Best-effort samples have no acknowledgement, and a reader that is a few frames behind
    # loses those still in shared memory when the publisher goes: give it time to take them.
    time.sleep(1.0)
    if late:
        log.warning("samples on %s not acknowledged by every subscriber after %.1f s",
                    ", ".join(late), timeout)


def _wait_subscribed(node, publishers: dict, timeout: float) -> None:
    if timeout <= 0:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(p.get_subscription_count() > 0 for p in publishers.values()):
            return
        time.sleep(0.05)
    missing = [p.topic_name for p in publishers.values() if p.get_subscription_count() == 0]
    log.warning("no subscriber after %.1f s on: %s (publishing anyway)", timeout,
                ", ".join(missing))
