"""The node's inputs: camera (raw or compressed, synchronised), cloud and pose source.

Callbacks only hand messages on (to the recorder's queue, the latest-cloud slot or the pose
history); decoding and disk writes happen on the recorder's worker thread (``decode_frame``).
Camera messages are taken serialized on a subscriber node and thread of their own
(ros/camera_input.py): matching and counting read their header bytes, and only keyframe
candidates are deserialised, by ``decode_frame``.
"""
from __future__ import annotations

import copy
import importlib
import threading

import numpy as np
from rclpy.qos import (DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy,
                       qos_profile_sensor_data)
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2

from .conversions import (BODY_T_OPTICAL, COLOR_ENCODINGS, DEPTH_ENCODINGS, ConversionError,
                          camera_info_to_intrinsics, compressed_to_depth, compressed_to_rgb,
                          image_to_depth, image_to_rgb, pose_to_matrix, stamp_to_ns)
from .camera_input import InputNode, materialize, message_type
from .sync import make_synchronizer
from .tf_buffer import TransformHistory, make_tf_lookup

RELIABILITY = {"best_effort": ReliabilityPolicy.BEST_EFFORT, "reliable": ReliabilityPolicy.RELIABLE}
DURABILITY = {"transient_local": DurabilityPolicy.TRANSIENT_LOCAL,
              "volatile": DurabilityPolicy.VOLATILE}


def camera_qos(depth: int, reliability: str) -> QoSProfile:
    """rclpy's sensor-data profile (best effort, volatile, keep last) with our history depth
    (its 5 drops frames during a Python pause) and, when asked, reliable delivery."""
    qos = copy.copy(qos_profile_sensor_data)
    qos.depth, qos.reliability = int(depth), RELIABILITY[reliability]
    return qos


def decode_frame(payload) -> tuple[np.ndarray, np.ndarray, object]:
    """(rgb uint8, depth float32 metres, colour Intrinsics) of a (colour, depth, info) triple;
    ConversionError (a ValueError) when an image cannot be used. Serialized messages
    (camera_input.SerializedMessage) are deserialised here, on the recorder's worker thread."""
    color, depth, info = (materialize(m) for m in payload)
    rgb = compressed_to_rgb(color) if isinstance(color, CompressedImage) else image_to_rgb(color)
    d = compressed_to_depth(depth) if isinstance(depth, CompressedImage) else image_to_depth(depth)
    h, w = rgb.shape[:2]
    return rgb, d, camera_info_to_intrinsics(info, w, h)


class Inputs:
    """Subscriptions of an active node. ``on_frame(stamp_ns, payload)`` or ``on_reject(reason)``
    receive each synchronised frame, ``wake()`` is called when a pose arrives. The cloud is
    taken in ``sensor_group`` of ``node``; camera and pose messages on the input node's thread
    (``input_node``), so ``pose_group`` is not used."""

    def __init__(self, node, settings, sensor_group, pose_group, on_frame, on_reject, wake):
        self.node, self.s = node, settings
        self._on_frame_cb, self._on_reject, self._wake = on_frame, on_reject, wake
        self._lock = threading.Lock()
        self.latest_cloud: PointCloud2 | None = None
        self.clouds_received = 0        # tells a new cloud from the one a build used
        self.camera_frame_seen = ""
        self._first_logged = False
        self.pose_lookup = None
        self.pose_history: TransformHistory | None = None
        self._subs = []
        self._input_subs = []      # on the input node
        log = node.get_logger()
        s = settings
        color, depth = s.color_topic, s.depth_topic
        specs = [(CompressedImage, color + "/compressed") if s.color_transport == "compressed"
                 else (Image, color),
                 (CompressedImage, depth + "/compressedDepth")
                 if s.depth_transport == "compressedDepth" else (Image, depth),
                 (CameraInfo, s.camera_info_topic)]
        self.topics = [node.resolve_topic_name(t) for _, t in specs]
        # Camera (serialized) and pose messages: on a node and thread of their own
        # (ros/camera_input.py), with the names this node resolves (its remappings apply).
        self.input_node = InputNode(node)
        try:
            self._subscribe(node, settings, specs, sensor_group, wake)
        except BaseException:
            self.input_node.destroy()
            raise
        self.input_node.start()
        # Rotations (TF, pose messages) need scipy.spatial, a ~1 s import kept off the start-up
        # path: load it now, before the first pose arrives, without delaying the node.
        threading.Thread(target=importlib.import_module, args=("scipy.spatial.transform",),
                         name="import-scipy-spatial", daemon=True).start()
        log.info(f"inputs: {', '.join(self.topics)} ({self.sync.name}, "
                 f"{s.qos_reliability}); cloud {self.cloud_topic} ({s.cloud_qos_durability}); "
                 f"poses from {self.pose_text}")

    def _subscribe(self, node, s, specs, sensor_group, wake) -> None:
        cam_qos = camera_qos(s.qos_depth, s.qos_reliability)
        inputs = self.input_node.node
        self.sync = make_synchronizer(
            inputs, [(t, name) for (t, _), name in zip(specs, self.topics)], cam_qos,
            self.on_frame, s.sync_queue_size, s.sync_slop, raw=True)
        cloud_qos = QoSProfile(depth=1, reliability=RELIABILITY[s.cloud_qos_reliability],
                               durability=DURABILITY[s.cloud_qos_durability],
                               history=HistoryPolicy.KEEP_LAST)
        self.cloud_topic = node.resolve_topic_name(s.cloud_topic)
        self._subs.append(node.create_subscription(PointCloud2, self.cloud_topic, self.on_cloud,
                                                   cloud_qos, callback_group=sensor_group))
        if s.pose_source == "tf":
            self.pose_lookup = make_tf_lookup(inputs, s.tf_cache_time, on_update=wake)
            self.pose_text = (f"TF ({self.pose_lookup.name}): {s.map_frame} -> "
                              f"{s.camera_frame or 'the colour frame_id'}")
        else:
            self.pose_history = TransformHistory(int(s.tf_cache_time * 1e9))
            if s.pose_source == "pose":
                from geometry_msgs.msg import PoseStamped
                topic, cb = s.pose_topic, self.on_pose
                msg_type = PoseStamped
            else:
                from nav_msgs.msg import Odometry
                topic, cb = s.odom_topic, self.on_odom
                msg_type = Odometry
            topic = node.resolve_topic_name(topic)
            self._input_subs.append(inputs.create_subscription(msg_type, topic, cb, 100))
            self.pose_text = f"{msg_type.__name__} on {topic}"

    def input_counts(self) -> str:
        """Messages received per camera input and those the synchroniser could not match: says
        whether lost frames were lost before the node (low counts) or in matching."""
        received, unmatched = self.sync.counts()
        names = ("colour", "depth", "camera_info")
        text = ", ".join(f"{name} {n}" for name, n in zip(names, received))
        return text + (f"; {unmatched} unmatched" if unmatched is not None else "")

    # -- callbacks (cheap) ------------------------------------------------------------------------
    def on_frame(self, color, depth, info) -> None:
        if message_type(color) is Image and color.encoding not in COLOR_ENCODINGS:
            return self._on_reject(f"unsupported colour encoding '{color.encoding}' (use one of "
                                   f"{', '.join(COLOR_ENCODINGS)})")
        if message_type(depth) is Image and depth.encoding not in DEPTH_ENCODINGS:
            return self._on_reject(f"unsupported depth encoding '{depth.encoding}' (16UC1 mm or "
                                   "32FC1 m)")
        if not self._first_logged:
            self._first_logged = True
            self.node.get_logger().info(f"first synchronised frame (colour frame "
                                        f"'{color.header.frame_id}')")
        self.camera_frame_seen = color.header.frame_id
        self._on_frame_cb(stamp_to_ns(color.header.stamp), (color, depth, info))

    def on_cloud(self, msg: PointCloud2) -> None:
        with self._lock:
            first, self.latest_cloud = self.latest_cloud is None, msg
            self.clouds_received += 1
        if first:
            self.node.get_logger().info(f"cloud received: {msg.width * msg.height} points in "
                                        f"frame '{msg.header.frame_id}'")

    def on_pose(self, msg) -> None:
        self._add_pose(msg.header, msg.pose, "PoseStamped")

    def on_odom(self, msg) -> None:
        self._add_pose(msg.header, msg.pose.pose, "Odometry")

    def _add_pose(self, header, pose, kind: str) -> None:
        try:
            M = pose_to_matrix(pose, f"{kind} at {stamp_to_ns(header.stamp) / 1e9:.3f} s")
        except ConversionError as exc:   # a bad pose is skipped with its reason, never fatal
            self.node.get_logger().warning(f"pose rejected: {exc}", throttle_duration_sec=5.0)
            return
        frame = header.frame_id.lstrip("/")
        if frame and frame != self.s.map_frame:
            self.node.get_logger().warning(
                f"pose messages are in frame '{frame}', not the map frame '{self.s.map_frame}': "
                "used as they are", throttle_duration_sec=10.0)
        if not self.s.pose_is_optical:
            M = M @ BODY_T_OPTICAL
        self.pose_history.add(stamp_to_ns(header.stamp), M)
        self._wake()

    # -- used by the worker ------------------------------------------------------------------------
    def camera_pose(self, settings, stamp_ns: int, strict: bool) -> np.ndarray:
        """map_T_camera at ``stamp_ns``; ``strict``: only an interpolated or exact pose. Pose
        messages are interpolated only between two at most tf_tolerance apart."""
        tol = 0.0 if strict else settings.tf_tolerance
        if self.pose_lookup is not None:
            frame = settings.camera_frame.strip() or self.camera_frame_seen
            if not frame:
                raise LookupError("the colour image has no header.frame_id and parameter "
                                  "camera_frame is empty")
            return self.pose_lookup.lookup(settings.map_frame, frame, stamp_ns, tol)
        return self.pose_history.lookup(stamp_ns, int(tol * 1e9),
                                        max_gap_ns=int(settings.tf_tolerance * 1e9))

    def reset_time(self) -> None:
        """ROS time jumped backwards: forget the poses and the unmatched camera messages."""
        self.sync.reset()
        if self.pose_lookup is not None:
            self.pose_lookup.clear()
        else:
            self.pose_history.clear()

    def cloud_in_map(self, settings) -> tuple[np.ndarray, np.ndarray] | None:
        """The latest cloud as (points in map_frame, colours), or None; ValueError/LookupError
        when it cannot be used. A cloud in another frame is moved with the transform at its
        stamp (``cloud_transform``)."""
        from .conversions import cloud_to_arrays
        with self._lock:
            msg = self.latest_cloud
        if msg is None:
            return None
        points, colors = cloud_to_arrays(msg)
        if len(points) == 0:
            raise ValueError("the cloud has no finite points")
        frame = msg.header.frame_id.lstrip("/")
        if frame and frame != settings.map_frame:
            if self.pose_lookup is None:
                raise ValueError(f"the cloud is in frame '{frame}', not '{settings.map_frame}', "
                                 "and pose_source is not tf")
            M = self.cloud_transform(settings, frame, stamp_to_ns(msg.header.stamp))
            points = (points @ M[:3, :3].T + M[:3, 3]).astype(np.float32)
        if colors is None:
            colors = np.full(points.shape, 128, np.uint8)
        return points, colors

    def cloud_transform(self, settings, frame: str, stamp_ns: int) -> np.ndarray:
        """map_T_frame for a cloud stamped ``stamp_ns``: the transform at that stamp (within
        tf_tolerance); when none is known there (stamp 0, or older than tf_cache_time), the
        latest one with a warning that says so; LookupError naming both failures otherwise."""
        target = settings.map_frame
        try:
            return self.pose_lookup.lookup(target, frame, stamp_ns, settings.tf_tolerance)
        except LookupError as at_stamp:
            try:
                M = self.pose_lookup.lookup(target, frame, None, 0.0)
            except LookupError as latest:
                raise LookupError(f"no transform {target} -> {frame} for the cloud stamped "
                                  f"{stamp_ns / 1e9:.3f} s ({at_stamp}) and none at all "
                                  f"({latest})") from None
            self.node.get_logger().warning(
                f"the cloud in frame '{frame}' is stamped {stamp_ns / 1e9:.3f} s but no "
                f"transform {target} -> {frame} is known at that time ({at_stamp}): the latest "
                "one is used, so the cloud is misplaced if that frame moved since")
            return M

    def destroy(self) -> None:
        self.input_node.stop()     # no camera or pose callback runs after this
        self.sync.destroy()
        if self.pose_lookup is not None and hasattr(self.pose_lookup, "destroy"):
            self.pose_lookup.destroy()
        for sub in self._subs:
            self.node.destroy_subscription(sub)
        for sub in self._input_subs:
            self.input_node.node.destroy_subscription(sub)
        self._subs, self._input_subs = [], []
        self.input_node.destroy()
