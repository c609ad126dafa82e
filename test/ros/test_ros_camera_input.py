"""Camera messages taken serialized (ros/camera_input.py).

The header stamp, frame_id and Image encoding read from the CDR bytes equal the deserialised
ones (Image, CompressedImage and CameraInfo; both byte orders; every frame_id length, which
moves the alignment of what follows); layouts not read there fall back to deserialising; and
only keyframe candidates are ever deserialised and decoded while every frame is counted, both
when frames are fed to the recorder directly and when they come through the node's serialized
subscriptions.
"""
import os
import struct
import threading
import time

import numpy as np
import pytest
import rclpy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rclpy.executors import MultiThreadedExecutor
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.serialization import deserialize_message, serialize_message
from rosbags.typesys import Stores, get_typestore
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

import openmask3d_ros.ros.camera_input as camera_input
import openmask3d_ros.ros.inputs as inputs_mod
from openmask3d_ros.core.camera import Intrinsics
from openmask3d_ros.core.recorder import KeyframeRecorder
from openmask3d_ros.ros.camera_input import (SerializedMessage, header_stamp_ns, materialize,
                                             read_header, wrap)
from openmask3d_ros.ros.conversions import (depth_to_compressed_depth, depth_to_image,
                                            intrinsics_to_camera_info, ns_to_stamp,
                                            rgb_to_compressed, rgb_to_image, stamp_to_ns)
from openmask3d_ros.ros.sync import ApproximateTimeSync

from nodeproc import ros_context  # test/ros/nodeproc.py

S = 1_000_000_000
SETTINGS = settings(max_examples=int(os.environ.get("HYPOTHESIS_EXAMPLES", "150")),
                    deadline=None, suppress_health_check=[HealthCheck.too_slow])
TYPES = {"sensor_msgs/msg/Image": Image, "sensor_msgs/msg/CompressedImage": CompressedImage,
         "sensor_msgs/msg/CameraInfo": CameraInfo}
STORE = get_typestore(Stores.ROS2_KILTED)


# -- the header read from the bytes ----------------------------------------------------------------
def _rosbags_msg(typename: str, sec: int, nanosec: int, frame_id: str, encoding: str,
                 data: bytes):
    """A rosbags message of ``typename`` (rosbags serialises both byte orders; rclpy only
    little-endian)."""
    T = STORE.types
    header = T["std_msgs/msg/Header"](stamp=T["builtin_interfaces/msg/Time"](sec=sec,
                                                                             nanosec=nanosec),
                                      frame_id=frame_id)
    payload = np.frombuffer(data, np.uint8).copy()
    if typename == "sensor_msgs/msg/Image":
        return T[typename](header=header, height=1, width=len(data), encoding=encoding,
                           is_bigendian=0, step=len(data), data=payload)
    if typename == "sensor_msgs/msg/CompressedImage":
        return T[typename](header=header, format=encoding, data=payload)
    ros = intrinsics_to_camera_info(Intrinsics(np.diag([500.0, 500.0, 1.0]), 640, 480))
    roi = T["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0,
                                                do_rectify=False)
    return T[typename](header=header, height=ros.height, width=ros.width,
                       distortion_model=encoding, d=np.zeros(5), k=np.array(ros.k),
                       r=np.array(ros.r), p=np.array(ros.p), binning_x=0, binning_y=0, roi=roi)


@SETTINGS
@given(typename=st.sampled_from(sorted(TYPES)), sec=st.integers(-2 ** 31, 2 ** 31 - 1),
       nanosec=st.integers(0, 2 ** 32 - 1),
       frame_id=st.text(st.characters(blacklist_characters="\x00",
                                      blacklist_categories=("Cs",)), max_size=20),
       encoding=st.sampled_from(["rgb8", "bgr8", "16UC1", "32FC1", "", "8UC3",
                                 "rgb8; jpeg compressed bgr8"]),
       data=st.binary(min_size=1, max_size=64), little_endian=st.booleans())
def test_header_read_from_the_bytes_equals_the_deserialised_one(typename, sec, nanosec, frame_id,
                                                                 encoding, data, little_endian):
    msg_type = TYPES[typename]
    raw = bytes(STORE.serialize_cdr(_rosbags_msg(typename, sec, nanosec, frame_id, encoding,
                                                 data), typename, little_endian=little_endian))
    assert raw[:2] == (b"\x00\x01" if little_endian else b"\x00\x00")
    full = deserialize_message(raw, msg_type)
    wire = [raw]
    if little_endian:      # what rclpy itself publishes
        wire.append(bytes(serialize_message(full)))
    for data_bytes in wire:
        got = SerializedMessage(data_bytes, msg_type)
        assert (got.header.stamp.sec, got.header.stamp.nanosec) == (full.header.stamp.sec,
                                                                     full.header.stamp.nanosec)
        assert got.header.frame_id == full.header.frame_id
        assert header_stamp_ns(data_bytes) == stamp_to_ns(full.header.stamp)
        assert stamp_to_ns(got.header.stamp) == stamp_to_ns(full.header.stamp)
        if msg_type is Image:
            assert got.encoding == full.encoding
        assert materialize(got) == full


def test_real_frames_both_byte_orders():
    """640x480 frames as the node gets them: raw colour and depth, JPEG and compressedDepth."""
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)
    depth = rng.uniform(0.3, 4.0, (480, 640))
    stamp = ns_to_stamp(1_700_000_000 * S + 33_333_333)
    for msg in (rgb_to_image(rgb, "bgr8"), depth_to_image(depth, "32FC1"),
                rgb_to_compressed(rgb), depth_to_compressed_depth(depth),
                intrinsics_to_camera_info(Intrinsics(np.diag([525.0, 525.0, 1.0]), 640, 480))):
        msg.header.stamp, msg.header.frame_id = stamp, "camera_color_optical_frame"
        le = bytes(serialize_message(msg))
        typename = f"sensor_msgs/msg/{type(msg).__name__}"
        be = bytes(STORE.serialize_cdr(STORE.deserialize_cdr(le, typename), typename,
                                       little_endian=False))
        for raw in (le, be):
            got = SerializedMessage(raw, type(msg))
            assert got.header.stamp == stamp
            assert got.header.frame_id == "camera_color_optical_frame"
            if isinstance(msg, Image):
                assert got.encoding == msg.encoding
            assert deserialize_message(raw, type(msg)) == msg


def test_layouts_not_read_here_are_deserialised_instead(monkeypatch):
    msg = rgb_to_image(np.zeros((2, 3, 3), np.uint8))
    msg.header.stamp, msg.header.frame_id = ns_to_stamp(5 * S + 7), "cam"
    raw = bytes(serialize_message(msg))
    with pytest.raises(ValueError, match="encapsulation 0x0003"):     # PL_CDR_LE
        read_header(b"\x00\x03" + raw[2:])
    with pytest.raises(ValueError, match="too few"):
        read_header(raw[:12])
    with pytest.raises(ValueError, match="does not fit"):               # frame_id cut short
        read_header(raw[:18])
    bad_length = raw[:12] + struct.pack("<I", 10 ** 6) + raw[16:]
    with pytest.raises(ValueError, match="does not fit"):
        read_header(bad_length)
    assert isinstance(wrap(raw, Image), SerializedMessage)
    monkeypatch.setattr(camera_input, "_BYTE_ORDER", {})               # nothing read here
    got = wrap(raw, Image)
    assert type(got) is Image and got == msg                          # same fields either way
    assert got.header.stamp == msg.header.stamp and got.encoding == "rgb8"


# -- only candidates are paid for ------------------------------------------------------------------
W, H = 64, 48
K = Intrinsics(np.array([[60.0, 0, 31.5], [0, 60.0, 23.5], [0, 0, 1]]), W, H)


def _frame_bytes(i: int, t_ns: int, compressed: bool) -> list[tuple[type, bytes]]:
    """(type, serialized message) of frame ``i``'s colour, depth and camera_info."""
    rgb = np.full((H, W, 3), (i * 7) % 256, np.uint8)
    depth = np.full((H, W), 1.0 + i / 100)
    msgs = ([rgb_to_compressed(rgb, "png"), depth_to_compressed_depth(depth)] if compressed
            else [rgb_to_image(rgb), depth_to_image(depth)])
    msgs.append(intrinsics_to_camera_info(K))
    for m in msgs:
        m.header.stamp, m.header.frame_id = ns_to_stamp(t_ns), "cam"
    return [(type(m), bytes(serialize_message(m))) for m in msgs]


class Counting:
    """Counts the deserialisations of camera_input (by type) and the decodes of inputs."""

    def __init__(self, monkeypatch):
        self.deserialised: dict[str, int] = {}
        self.decoded: dict[str, int] = {}
        real = camera_input.deserialize_message

        def deserialize(data, msg_type):
            name = msg_type.__name__
            self.deserialised[name] = self.deserialised.get(name, 0) + 1
            return real(data, msg_type)
        monkeypatch.setattr(camera_input, "deserialize_message", deserialize)
        for fn in ("image_to_rgb", "image_to_depth", "compressed_to_rgb", "compressed_to_depth"):
            monkeypatch.setattr(inputs_mod, fn, self._counted(fn, getattr(inputs_mod, fn)))

    def _counted(self, name, fn):
        def call(msg):
            self.decoded[name] = self.decoded.get(name, 0) + 1
            return fn(msg)
        return call


@pytest.mark.parametrize("compressed", [False, True], ids=["raw", "compressed"])
def test_only_keyframe_candidates_are_deserialised_and_decoded(tmp_path, monkeypatch, compressed):
    """30 frames, frame_step 10: all 30 counted, 3 candidates; 3 x 3 messages deserialised
    and 3 frames decoded, none of the 27 others."""
    count = Counting(monkeypatch)
    recorder = KeyframeRecorder(tmp_path / "rec", 10, inputs_mod.decode_frame,
                                lambda stamp, strict: np.eye(4), lambda: 1)
    sync = ApproximateTimeSync(3, lambda c, d, i: recorder.offer(stamp_to_ns(c.header.stamp),
                                                                 (c, d, i)), 30, 0.01)
    for i in range(30):
        for k, (msg_type, raw) in enumerate(_frame_bytes(i, 100 * S + i * S // 30, compressed)):
            sync.add(k, wrap(raw, msg_type))
    assert count.deserialised == {} and count.decoded == {}    # counting read the headers only
    assert recorder.process(force=True) == 3
    c = recorder.counters()
    assert c.frames_received == 30 and c.keyframes == 3 and not any(c.drops.values())
    assert sync.received == [30, 30, 30] and sync.dropped == 0
    colour = "CompressedImage" if compressed else "Image"
    assert count.deserialised == ({"CompressedImage": 6, "CameraInfo": 3} if compressed
                                  else {"Image": 6, "CameraInfo": 3})
    assert count.decoded == ({"compressed_to_rgb": 3, "compressed_to_depth": 3} if compressed
                             else {"image_to_rgb": 3, "image_to_depth": 3}), colour


@pytest.fixture
def context():
    # A DDS domain of its own: the replay tests' nodes must not see these.
    with ros_context(domain_offset=110) as ctx:
        yield ctx


@pytest.mark.parametrize("compressed", [False, True], ids=["raw", "compressed"])
def test_node_subscriptions_deserialise_only_candidates(context, tmp_path, monkeypatch,
                                                        compressed):
    """Through the node's own serialized subscriptions (on its input node): every frame is
    counted per input and synchronised, only the candidates are deserialised and decoded."""
    from geometry_msgs.msg import PoseStamped
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from openmask3d_ros.ros.node import OpenMask3DNode

    count = Counting(monkeypatch)
    values = {"scene_dir": str(tmp_path / "rec"), "autostart": False, "pose_source": "pose",
              "qos_reliability": "reliable", "pose_wait": 5.0}
    if compressed:
        values.update(color_transport="compressed", depth_transport="compressedDepth")
    node = OpenMask3DNode(context=context, parameter_overrides=[
        Parameter(k, value=v) for k, v in values.items()])
    assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
    assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
    executor = MultiThreadedExecutor(num_threads=4, context=context)
    executor.add_node(node)
    spin = threading.Thread(target=executor.spin, daemon=True)
    spin.start()
    camera = rclpy.create_node("camera", context=context)
    try:
        qos = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
        topics = node.inputs.topics
        pose_pub = camera.create_publisher(PoseStamped, "/camera_pose", 100)
        pubs = [camera.create_publisher(t, topic, qos)
                for t, topic in zip((CompressedImage if compressed else Image,) * 2 +
                                    (CameraInfo,), topics)]
        end = time.monotonic() + 20
        while time.monotonic() < end and any(p.get_subscription_count() < 1
                                             for p in [pose_pub, *pubs]):
            time.sleep(0.05)
        frames = 30
        for i in range(frames):
            t = 100 * S + i * S // 30
            pose = PoseStamped()
            pose.header.stamp, pose.header.frame_id = ns_to_stamp(t), "map"
            pose.pose.orientation.w = 1.0
            pose_pub.publish(pose)
            for pub, (_, raw) in zip(pubs, _frame_bytes(i, t, compressed)):
                pub.publish(raw)
            time.sleep(0.01)
        end = time.monotonic() + 30
        while time.monotonic() < end and not (node.status()["frames_received"] >= frames and
                                              node.status()["keyframes"] >= 3):
            time.sleep(0.05)
        st = node.status()
        assert st["frames_received"] == frames and st["keyframes"] == 3, st
        assert st["inputs"] == f"colour {frames}, depth {frames}, camera_info {frames}; 0 unmatched"
        image = "CompressedImage" if compressed else "Image"
        assert count.deserialised == {image: 6, "CameraInfo": 3}, count.deserialised
        assert sum(count.decoded.values()) == 6, count.decoded
        # the camera topics have one subscriber each: the input node's, not the node's
        assert all(camera.count_subscribers(t) == 1 for t in topics)
        assert node.get_subscriptions_info_by_topic(topics[0])[0].node_name == \
            node.get_name() + "_inputs"
        executor.shutdown()
        spin.join(10)
        node.destroy_node()        # the input node and its subscriptions go with it
        end = time.monotonic() + 10
        while time.monotonic() < end and any(camera.count_subscribers(t) for t in topics):
            time.sleep(0.05)
        assert not any(camera.count_subscribers(t) for t in topics)
    finally:
        executor.shutdown()
        spin.join(10)
        node.destroy_node()
        camera.destroy_node()


# -- the synchronisers' serialized mode --------------------------------------------------------------
class _FakeNode:
    """Records create_subscription calls; ``deliver`` plays a subscription's callback."""

    def __init__(self):
        self.subs, self.destroyed = [], []

    def create_subscription(self, msg_type, topic, callback, qos, callback_group=None,
                            raw=False):
        sub = dict(msg_type=msg_type, topic=topic, callback=callback, raw=raw)
        self.subs.append(sub)
        return sub

    def destroy_subscription(self, sub):
        self.destroyed.append(sub["topic"])


def _fake_message_filters():
    """What message_filters' Python API offers that the node uses (it is not on PyPI): a
    SimpleFilter and an exact-stamp synchroniser reading ``msg.header.stamp`` through
    rclpy.time.Time.from_msg, as message_filters' ApproximateTimeSynchronizer does."""
    import types
    from rclpy.time import Time

    class SimpleFilter:
        def __init__(self):
            self.callbacks = {}

        def registerCallback(self, cb, *args):
            self.callbacks[len(self.callbacks)] = (cb, args)

        def signalMessage(self, *msg):
            for cb, args in list(self.callbacks.values()):
                cb(*(msg + args))

    class ApproximateTimeSynchronizer(SimpleFilter):
        def __init__(self, fs, queue_size, slop):
            super().__init__()
            self.lock = threading.Lock()
            self.queues = [{} for _ in fs]
            for i, f in enumerate(fs):
                f.registerCallback(self.add, i)

        def add(self, msg, i):
            self.queues[i][Time.from_msg(msg.header.stamp).nanoseconds] = msg
            common = set.intersection(*(set(q) for q in self.queues))
            for t in sorted(common):
                self.signalMessage(*(q.pop(t) for q in self.queues))

    return types.SimpleNamespace(SimpleFilter=SimpleFilter, Subscriber=None,
                                 ApproximateTimeSynchronizer=ApproximateTimeSynchronizer)


@pytest.mark.parametrize("with_message_filters", [False, True], ids=["own", "message_filters"])
def test_synchronisers_take_serialized_messages(monkeypatch, with_message_filters):
    import sys
    from openmask3d_ros.ros.sync import make_synchronizer
    if with_message_filters:
        monkeypatch.setitem(sys.modules, "message_filters", _fake_message_filters())
    node, sets = _FakeNode(), []
    specs = [(Image, "/c"), (Image, "/d"), (CameraInfo, "/i")]
    sync = make_synchronizer(node, specs, 10, lambda *m: sets.append(m), 10, 0.01,
                             prefer_message_filters=with_message_filters, raw=True)
    assert sync.name == ("message_filters" if with_message_filters
                         else "openmask3d ApproximateTimeSync")
    assert [s["raw"] for s in node.subs] == [True] * 3
    for i in range(3):
        for sub, (_, raw) in zip(node.subs, _frame_bytes(i, 100 * S + i * S // 30, False)):
            sub["callback"](raw)
    assert len(sets) == 3
    assert all(isinstance(m, SerializedMessage) for m in sets[-1])
    assert [stamp_to_ns(m.header.stamp) for m in sets[-1]] == [100 * S + 2 * S // 30] * 3
    assert sync.counts()[0] == [3, 3, 3]
    sync.destroy()
    assert node.destroyed == ["/c", "/d", "/i"]
