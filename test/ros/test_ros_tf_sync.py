"""The fallback TF buffer (chains, interpolation, tolerance) and the approximate-time sync."""
import numpy as np
import pytest
from geometry_msgs.msg import TransformStamped
from std_msgs.msg import Header

from openmask3d_ros.ros.conversions import (BODY_T_OPTICAL, matrix_to_transform, ns_to_stamp,
                                            quat_to_matrix)
from openmask3d_ros.ros.sync import ApproximateTimeSync
from openmask3d_ros.ros.tf_buffer import TransformBuffer, TransformHistory

S = 1_000_000_000


def _T(yaw=0.0, t=(0, 0, 0)):
    M = np.eye(4)
    M[:3, :3] = quat_to_matrix((0, 0, np.sin(yaw / 2), np.cos(yaw / 2)))
    M[:3, 3] = t
    return M


def _robot_buffer():
    buf = TransformBuffer()
    buf.set_transform("map", "odom", 0, _T(0.1, (1, 0, 0)), static=True)
    buf.set_transform("odom", "base_link", 10 * S, _T(0.0, (0, 0, 0)))
    buf.set_transform("odom", "base_link", 12 * S, _T(np.pi / 2, (2, 0, 0)))
    buf.set_transform("base_link", "camera_link", 0, _T(0, (0.1, 0, 0.5)), static=True)
    buf.set_transform("camera_link", "camera_optical", 0, BODY_T_OPTICAL, static=True)
    return buf


def test_chain_composition_and_interpolation():
    buf = _robot_buffer()
    got = buf.lookup("map", "camera_optical", 11 * S)
    base = _T(np.pi / 4, (1, 0, 0))                       # halfway: slerp + lerp
    want = _T(0.1, (1, 0, 0)) @ base @ _T(0, (0.1, 0, 0.5)) @ BODY_T_OPTICAL
    np.testing.assert_allclose(got, want, atol=1e-9)
    # the inverse direction and a lookup between two leaves of the tree
    np.testing.assert_allclose(buf.lookup("camera_optical", "map", 11 * S), np.linalg.inv(want),
                               atol=1e-9)
    np.testing.assert_allclose(buf.lookup("camera_link", "camera_optical", 11 * S),
                               BODY_T_OPTICAL, atol=1e-12)
    np.testing.assert_allclose(buf.lookup("map", "map", 0), np.eye(4))


def test_exact_samples_and_tolerance():
    buf = _robot_buffer()
    at12 = buf.lookup("odom", "base_link", 12 * S)
    np.testing.assert_allclose(at12, _T(np.pi / 2, (2, 0, 0)), atol=1e-12)
    # 50 ms after the last sample: nearest within the 0.1 s tolerance
    np.testing.assert_allclose(buf.lookup("odom", "base_link", 12 * S + S // 20), at12)
    with pytest.raises(LookupError, match="after the last"):
        buf.lookup("odom", "base_link", 13 * S)
    with pytest.raises(LookupError, match="before the first"):
        buf.lookup("map", "camera_optical", 9 * S, tolerance_s=0.5)
    with pytest.raises(LookupError, match="before the first"):
        buf.lookup("odom", "base_link", 10 * S - 1, tolerance_s=0.0)


def test_unknown_and_disconnected_frames():
    buf = _robot_buffer()
    with pytest.raises(LookupError, match="does not exist"):
        buf.lookup("map", "nowhere", 11 * S)
    buf.set_transform("world", "other", 0, np.eye(4), static=True)
    with pytest.raises(LookupError, match="not connected"):
        buf.lookup("map", "other", 11 * S)


def test_tf_message_and_out_of_order_samples():
    buf = TransformBuffer()
    msgs = []
    for t in (3, 1, 2):           # out of order
        ts = TransformStamped()
        ts.header.frame_id, ts.child_frame_id = "/map", "cam"   # a leading slash is ignored
        ts.header.stamp = ns_to_stamp(t * S)
        matrix_to_transform(_T(0, (t, 0, 0)), ts.transform)
        msgs.append(ts)

    bad = TransformStamped()
    bad.header.frame_id, bad.child_frame_id = "map", "cam"
    bad.transform.rotation.w = float("nan")
    msgs.append(bad)

    class Msg:
        transforms = msgs
    rejected = buf.add_message(Msg)           # the three good ones are used, the NaN one says why
    assert len(rejected) == 1 and "'map' -> 'cam'" in rejected[0] and "nan" in rejected[0].lower()
    np.testing.assert_allclose(buf.lookup("map", "cam", int(1.5 * S))[:3, 3], [1.5, 0, 0])
    np.testing.assert_allclose(buf.lookup("map", "cam", int(2.5 * S))[:3, 3], [2.5, 0, 0])
    assert buf.frames() == ["cam", "map"]


def test_history_drops_old_samples():
    h = TransformHistory(max_age_ns=5 * S)
    for t in range(20):
        h.add(t * S, _T(0, (t, 0, 0)))
    assert len(h) == 6 and h.lookup(None, 0)[0, 3] == 19
    np.testing.assert_allclose(h.lookup(None, 0)[:3, 3], [19, 0, 0])


class _Stamped:
    def __init__(self, t_ns, tag):
        self.header = Header(stamp=ns_to_stamp(t_ns))
        self.tag = tag


def test_sync_exact_and_approximate():
    out = []
    sync = ApproximateTimeSync(3, lambda *m: out.append(tuple(x.tag for x in m)), slop=0.02)
    a, b, c = sync.inputs()
    a(_Stamped(100 * S, "a0"))
    b(_Stamped(100 * S, "b0"))
    assert out == []
    c(_Stamped(100 * S + 10_000_000, "c0"))               # 10 ms apart: within slop
    assert out == [("a0", "b0", "c0")]
    a(_Stamped(101 * S, "a1"))
    b(_Stamped(101 * S + 50_000_000, "b1"))               # 50 ms: too far
    c(_Stamped(101 * S, "c1"))
    assert out[-1] == ("a0", "b0", "c0")
    b(_Stamped(101 * S + 5_000_000, "b1b"))               # a late, better match arrives
    assert out[-1] == ("a1", "b1b", "c1")


def test_sync_drops_older_and_handles_reordering():
    out = []
    sync = ApproximateTimeSync(2, lambda *m: out.append(tuple(x.tag for x in m)), queue_size=3,
                               slop=0.001)
    for t in range(5):
        sync.add(0, _Stamped(t * S, f"a{t}"))
    sync.add(1, _Stamped(4 * S, "b4"))
    assert out == [("a4", "b4")]
    assert sync.dropped >= 2                               # a0, a1 left the full queue
    sync.add(1, _Stamped(6 * S, "b6"))                     # second input ahead of the first
    sync.add(0, _Stamped(5 * S, "a5"))
    sync.add(0, _Stamped(6 * S, "a6"))
    assert out[-1] == ("a6", "b6")
    sync.add(1, _Stamped(5 * S, "b5"))                     # older than the last emitted set
    assert out[-1] == ("a6", "b6")                         # a5 was dropped with the older ones


def test_sync_counts_what_each_input_delivered_and_what_never_matched():
    out = []
    sync = ApproximateTimeSync(2, lambda *m: out.append(m), queue_size=5, slop=0.01)
    a, b = sync.inputs()
    for k in range(4):
        a(_Stamped(k * 100_000_000, "a"))
    b(_Stamped(300_000_000, "b"))     # matches a's last; a's three older ones never matched
    assert len(out) == 1
    assert sync.received == [4, 1] and sync.dropped == 3
