"""The reconstructed cloud reaches the map frame with the transform at its own stamp, and the
camera subscriptions use rclpy's sensor-data QoS with the node's depth and reliability."""
import os

import numpy as np
import pytest
import rclpy
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import ReliabilityPolicy, qos_profile_sensor_data

from openmask3d_ros.ros.conversions import arrays_to_cloud, ns_to_stamp
from openmask3d_ros.ros.inputs import camera_qos
from openmask3d_ros.ros.node import OpenMask3DNode

from test_ros_node_inprocess import _set_tf  # same folder

S = 1_000_000_000


def _T(yaw, t):
    c, s = np.cos(yaw), np.sin(yaw)
    M = np.eye(4)
    M[:3, :3] = [[c, -s, 0], [s, c, 0], [0, 0, 1]]
    M[:3, 3] = t
    return M


@pytest.fixture
def node(tmp_path):
    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=int(os.environ["ROS_DOMAIN_ID"]) + 100)
    n = OpenMask3DNode(context=ctx, parameter_overrides=[
        Parameter("scene_dir", value=str(tmp_path / "rec")),
        Parameter("autostart", value=False), Parameter("tf_tolerance", value=0.1)])
    try:
        assert n.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert n.trigger_activate() == TransitionCallbackReturn.SUCCESS
        yield n
    finally:
        n.destroy_node()
        rclpy.shutdown(context=ctx)


def _moved(points, M):
    return points @ M[:3, :3].T + M[:3, 3]


def test_cloud_is_moved_with_the_transform_at_its_stamp(node):
    # The robot's odometry drifts: map -> odom is (0, 0, 0) at 10 s and 10 m / 90 deg at 20 s.
    _set_tf(node, "map", "odom", 10 * S, _T(0.0, (0, 0, 0)))
    _set_tf(node, "map", "odom", 20 * S, _T(np.pi / 2, (10, 0, 0)))
    pts = np.array([[1.0, 0.0, 0.0], [0.0, 2.0, 0.5], [3.0, -1.0, 1.0]], np.float32)
    cols = np.full((3, 3), 200, np.uint8)

    node.inputs.on_cloud(arrays_to_cloud(pts, cols, frame_id="odom", stamp=ns_to_stamp(15 * S)))
    got, got_cols = node.inputs.cloud_in_map(node.settings)
    at_15 = _T(np.pi / 4, (5, 0, 0))                  # halfway: the cloud's own time
    np.testing.assert_allclose(got, _moved(pts, at_15), atol=1e-5)
    np.testing.assert_array_equal(got_cols, cols)
    latest = _moved(pts, _T(np.pi / 2, (10, 0, 0)))
    assert np.abs(got - latest).max() > 1.0           # not the latest transform

    # stamped at the first sample, 50 ms before it (within tf_tolerance): that sample
    for t in (10 * S, 10 * S - S // 20):
        node.inputs.on_cloud(arrays_to_cloud(pts, cols, frame_id="odom", stamp=ns_to_stamp(t)))
        got, _ = node.inputs.cloud_in_map(node.settings)
        np.testing.assert_allclose(got, pts, atol=1e-5)


class _Log:
    """The node's logger, keeping the warnings it is given."""

    def __init__(self, real):
        self.real, self.warnings = real, []

    def warning(self, text, **kwargs):
        self.warnings.append(text)
        self.real.warning(text, **kwargs)

    def __getattr__(self, name):
        return getattr(self.real, name)


def test_cloud_without_a_transform_at_its_stamp(node, monkeypatch):
    log = _Log(node.get_logger())
    monkeypatch.setattr(node, "get_logger", lambda: log)
    _set_tf(node, "map", "odom", 10 * S, _T(0.0, (0, 0, 0)))
    _set_tf(node, "map", "odom", 20 * S, _T(np.pi / 2, (10, 0, 0)))
    pts = np.array([[1.0, 0.0, 0.0], [0.0, 2.0, 0.5]], np.float32)
    # unstamped (0) or far outside the history: the latest transform, with a warning
    for t in (0, 60 * S):
        node.inputs.on_cloud(arrays_to_cloud(pts, None, frame_id="odom", stamp=ns_to_stamp(t)))
        got, cols = node.inputs.cloud_in_map(node.settings)
        np.testing.assert_allclose(got, _moved(pts, _T(np.pi / 2, (10, 0, 0))), atol=1e-5)
        assert cols.shape == pts.shape
        assert f"stamped {t / S:.3f} s but no transform map -> odom" in log.warnings[-1]
        assert "the latest one is used" in log.warnings[-1]
    # a frame the TF tree does not know: an error that names the frames and the stamp
    node.inputs.on_cloud(arrays_to_cloud(pts, None, frame_id="lidar",
                                         stamp=ns_to_stamp(15 * S)))
    with pytest.raises(LookupError, match=r"no transform map -> lidar for the cloud stamped "
                                          r"15\.000 s .*'lidar' does not exist"):
        node.inputs.cloud_in_map(node.settings)


def test_camera_qos_is_sensor_data_with_our_depth_and_reliability():
    qos = camera_qos(30, "best_effort")
    assert qos.depth == 30 and qos.reliability == ReliabilityPolicy.BEST_EFFORT
    assert (qos.history, qos.durability) == (qos_profile_sensor_data.history,
                                             qos_profile_sensor_data.durability)
    reliable = camera_qos(7, "reliable")
    assert reliable.depth == 7 and reliable.reliability == ReliabilityPolicy.RELIABLE
    assert qos_profile_sensor_data.depth == 5          # rclpy's shared profile is untouched
    assert qos_profile_sensor_data.reliability == ReliabilityPolicy.BEST_EFFORT
