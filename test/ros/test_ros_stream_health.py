"""What the node says about a camera stream that is wrong in ways a robot meets (issue 21, W13,
W15-W17), seen from outside: `openmask3d node` as its own process, frames published from
another node, the status topic and /diagnostics read back.

- W13 camera_info whose K is for another image size: refused when recording, with the reason;
- W15 use_sim_time without /clock: the status says no /clock came, not that poses lag;
- W16 a pause in the stream (stamps jump 1003 s -> 2000 s) is a pause, not 9965 lost frames;
- W17 input faster than the node can take: said so, and counted apart from transport losses.
"""
import time

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticStatus
from sensor_msgs.msg import CameraInfo, Image

from openmask3d_ros.core.camera import Intrinsics
from openmask3d_ros.msg import PipelineStatus
from openmask3d_ros.ros.conversions import (depth_to_image, intrinsics_to_camera_info,
                                            matrix_to_pose, ns_to_stamp, rgb_to_image)
from openmask3d_ros.ros.qos import latched_qos

from nodeproc import stop_node  # test/ros/nodeproc.py
from test_ros_node_services import Client, start_node  # same folder

S = 1_000_000_000
TOPICS = ((Image, "/camera/color/image_raw"), (Image, "/camera/aligned_depth_to_color/image_raw"),
          (CameraInfo, "/camera/color/camera_info"))


class Watch(Client):
    """The client node, also keeping every status message and publishing camera frames."""

    def __init__(self):
        super().__init__()
        self.statuses: list[PipelineStatus] = []
        self.node.create_subscription(PipelineStatus, "/openmask3d/status",
                                      self.statuses.append, latched_qos())
        self.pubs = [self.node.create_publisher(t, topic, 100) for t, topic in TOPICS]
        self.pose_pub = None

    def camera_qos(self, qos) -> None:
        """Publish the camera topics with ``qos`` instead (before the node starts)."""
        for p in self.pubs:
            self.node.destroy_publisher(p)
        self.pubs = [self.node.create_publisher(t, topic, qos) for t, topic in TOPICS]

    def wait_subscribed(self) -> None:
        assert self.spin_until(lambda: all(p.get_subscription_count() for p in self.pubs), 30)

    @staticmethod
    def frame_msgs(size=(80, 60), info: CameraInfo | None = None) -> tuple:
        """A colour/depth/camera_info triple of ``size`` (w, h), to stamp and ``send``."""
        w, h = size
        if info is None:
            info = intrinsics_to_camera_info(Intrinsics(np.array(
                [[w, 0, w / 2], [0, w, h / 2], [0, 0, 1.0]]), w, h))
        return (rgb_to_image(np.full((h, w, 3), 90, np.uint8), "rgb8"),
                depth_to_image(np.ones((h, w), np.float32), "16UC1"), info)

    def send(self, msgs: tuple, stamp_ns: int) -> None:
        for m, p in zip(msgs, self.pubs):
            m.header.stamp, m.header.frame_id = ns_to_stamp(stamp_ns), "cam"
            p.publish(m)

    def frame(self, stamp_ns: int, size=(80, 60), info: CameraInfo | None = None,
              pose: bool = False) -> None:
        """One triple (and a PoseStamped first, with ``pose``)."""
        if pose:
            self._pose(stamp_ns)
        self.send(self.frame_msgs(size, info), stamp_ns)

    def _pose(self, stamp_ns: int) -> None:
        from geometry_msgs.msg import PoseStamped
        if self.pose_pub is None:
            self.pose_pub = self.node.create_publisher(PoseStamped, "/camera_pose", 100)
            assert self.spin_until(lambda: self.pose_pub.get_subscription_count(), 30)
        msg = PoseStamped()
        msg.header.frame_id, msg.header.stamp = "map", ns_to_stamp(stamp_ns)
        matrix_to_pose(np.eye(4), msg.pose)
        self.pose_pub.publish(msg)

    def stream(self, stamps, rate: float, **kw) -> None:
        """Publish a frame per stamp at ``rate`` Hz (0: as fast as possible), spinning."""
        t0 = time.monotonic()
        for k, stamp in enumerate(stamps):
            self.frame(stamp, **kw)
            due = t0 + (k + 1) / rate if rate else 0.0
            while True:
                self.executor.spin_once(timeout_sec=0)
                if time.monotonic() >= due:
                    break
                time.sleep(min(0.005, max(due - time.monotonic(), 0.0)))

    def status(self, pred, timeout: float = 20.0) -> PipelineStatus | None:
        ok = self.spin_until(lambda: bool(self.statuses) and pred(self.statuses[-1]), timeout)
        return self.statuses[-1] if ok else None

    def warnings(self) -> list[str]:
        return [s.message for a in self.diagnostics for s in a.status
                if "keyframe recording" in s.name and s.level == DiagnosticStatus.WARN]


@pytest.fixture
def watch():
    w = Watch()
    yield w
    w.close()


def _run(tmp_path, watch, *assignments: str, qos: str = "reliable"):
    proc = start_node(tmp_path / "node.log", f"scene_dir:={tmp_path / 'rec'}",
                      f"qos_reliability:={qos}", *assignments)
    watch.wait_subscribed()
    return proc


def test_camera_info_for_another_image_size_is_refused_when_recording(tmp_path, watch):
    """W13: camera_info says 640x480 but holds the K of 320x240, images are 320x240. Rescaled
    to the images, its principal point lies at (80, 60): the K is for another resolution. Before,
    the keyframes were recorded and only the map build failed."""
    proc = _run(tmp_path, watch, "pose_source:=pose", "pipeline.frame_step:=1")
    try:
        info = intrinsics_to_camera_info(Intrinsics(np.array(
            [[250.0, 0, 160], [0, 250.0, 120], [0, 0, 1]]), 320, 240))
        info.width, info.height = 640, 480
        watch.stream([100 * S + k * S // 10 for k in range(3)], 10.0, size=(320, 240),
                     info=info, pose=True)
        st = watch.status(lambda s: s.frames_rejected >= 3, 20)
        assert st is not None, watch.statuses[-1:]
        assert st.keyframes == 0
        assert "principal point (80.0, 60.0) does not fit the 320x240" in st.message, st.message
        assert watch.spin_until(lambda: any("frames_rejected: " in m and "principal point" in m
                                            and "camera_info" in m for m in watch.warnings()),
                                10), watch.warnings()
    finally:
        assert stop_node(proc) == 0


def test_use_sim_time_without_clock_says_so(tmp_path, watch):
    """W15: with use_sim_time and no /clock, ROS time reads 0 and candidates cannot end their
    pose wait; they overflow. The status and /diagnostics say no /clock was received, instead of
    blaming the pose source."""
    proc = _run(tmp_path, watch, "use_sim_time:=true", "pipeline.frame_step:=1",
                "keyframe_queue_size:=2")
    try:
        watch.stream([100 * S + k * S // 30 for k in range(10)], 30.0)
        st = watch.status(lambda s: s.frames_received >= 10 and "/clock" in s.message, 20)
        assert st is not None, watch.statuses[-1:]
        assert st.frames_overflow > 0 and "no /clock" in st.message, st.message
        assert watch.spin_until(lambda: any("no /clock has been received" in m
                                            for m in watch.warnings()), 10), watch.warnings()
        assert not any("pose source lags" in m for m in watch.warnings()), watch.warnings()
    finally:
        assert stop_node(proc) == 0


def test_a_pause_in_the_stream_is_not_a_loss(tmp_path, watch):
    """W16: 30 frames stamped 1000.0-1000.97 s, then 30 from 2000 s on (a camera restarted, a
    paused bag). Before: frames_missed = 29970 and advice about the DDS profile. Also the calm
    case of W17: a 30 Hz stream the node keeps up with has no overrun."""
    proc = _run(tmp_path, watch, "pose_wait:=0.1")
    try:
        stamps = [1000 * S + k * S // 30 for k in range(30)]
        watch.stream(stamps + [s + 1000 * S for s in stamps], 30.0)
        st = watch.status(lambda s: s.frames_received >= 60, 20)
        assert st is not None, watch.statuses[-1:]
        assert (st.stream_pauses, st.frames_missed, st.frames_overrun) == (1, 0, 0), st
        values = {kv.key: kv.value for a in watch.diagnostics[-1:] for kv in a.status[0].values}
        assert watch.spin_until(lambda: {kv.key: kv.value for kv in watch.diagnostics[-1].status[
            0].values}.get("stream_pauses") == "1", 10), values
    finally:
        assert stop_node(proc) == 0
    assert "the stream paused for 999.0 s" in (tmp_path / "node.log").read_text()


def test_input_faster_than_the_node_can_take_is_said(tmp_path, watch):
    """W17: what an overrun looks like from inside the node, replayed deterministically (a real
    400 Hz flood is lost in transport or kept up with by chance, depending on the load): 20
    frames of a 30 Hz stream arrive on time, 15 are missing, and the next 10 arrive 2 s after
    their stamps, as frames that waited in a full input queue do. The status and /diagnostics
    count the missing ones as frames_overrun (not as transport losses that the DDS profile
    fixes) and say the input is faster than the node can take."""
    proc = _run(tmp_path, watch, "pipeline.frame_step:=1000")   # few candidates, few warnings
    try:
        msgs, period = watch.frame_msgs((640, 480)), S // 30
        wall0 = time.time_ns()
        for k in range(20):                         # on time: stamped as sent
            watch.send(msgs, wall0 + k * period)
            watch.spin_until(lambda: False, 1 / 30)
        late = [wall0 + k * period for k in range(35, 45)]
        watch.spin_until(lambda: False, (late[0] + 2 * S - time.time_ns()) / S)
        for stamp in late:                          # 2 s after their stamps
            watch.send(msgs, stamp)
            watch.spin_until(lambda: False, 1 / 30)
        st = watch.status(lambda s: s.frames_received >= 30, 20)
        assert st is not None, watch.statuses[-1:]
        assert (st.frames_overrun, st.frames_missed) == (15, 0), st
        said = [s.message for s in watch.statuses if "input faster than the node" in s.message]
        assert said, [s.message for s in watch.statuses[-5:]]
        assert watch.spin_until(lambda: any(
            "frames_overrun" in m and "input faster than the node can take" in m
            for m in watch.warnings()), 10), watch.warnings()
    finally:
        assert stop_node(proc) == 0
