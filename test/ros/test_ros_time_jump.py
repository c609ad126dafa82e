"""ROS time that runs backwards (issue 21, F2): a bag replayed with /clock into a node with
use_sim_time and PoseStamped poses, then the same bag started again earlier in time (a looped or
restarted `ros2 bag play`, a simulator reset), then a stretch with images but no poses.

30 frames stamped 100.1-103.0 s, 30 at 50.1-53.0 s, 30 at 60.1-63.0 s without any pose. Before
the fix the pose history still held the poses of 100.1-103.0 s, and the frames of 60.1-63.0 s
were saved with poses interpolated between the one at 53.0 s and the stale one at 100.1 s. Now
every saved pose must be the ground truth of its frame, and the candidates of the stretch
without poses must be counted as frames without pose.
"""
import numpy as np
import pytest

from openmask3d_ros.core.scene import SceneFolder
from openmask3d_ros.ros.bag import CLOUD_TOPIC, POSE_TOPIC, play_bag, record_scene
from openmask3d_ros.ros.client import OpenMask3DClient

import nodeproc  # test/ros/nodeproc.py
from nodeproc import client_node, params, stop_node

S = 1_000_000_000
FRAMES, RATE, STEP = 30, 10.0, 5
STARTS = (100 * S, 50 * S, 60 * S)     # bag starts: frame i is stamped start + (i + 1) / RATE
NO_POSE = 60 * S                       # the last replay has images only


@pytest.fixture(scope="module")
def bags(tmp_path_factory):
    from openmask3d_ros.core.synthetic import make_scene
    root = tmp_path_factory.mktemp("jump")
    scene = SceneFolder(make_scene(root / "scene", seed=4, num_frames=FRAMES, width=160,
                                   height=120))
    made = [record_scene(scene.root, root / f"at{start // S}.bag", rate_hz=RATE, start_ns=start,
                         poses=("pose",), trigger=False) for start in STARTS]
    return scene, made, root


def _truth(scene: SceneFolder, stamp_ns: int) -> np.ndarray:
    """The ground-truth pose of the frame stamped ``stamp_ns`` in a replay with poses."""
    start = max(s for s in STARTS[:2] if s < stamp_ns)
    assert start != NO_POSE
    i = int(round((stamp_ns - start) * RATE / S)) - 1
    return scene.pose(scene.frame_ids[i])


def test_time_jump_back_never_saves_made_up_poses(bags):
    scene, made, root = bags
    log = root / "node.log"
    proc = nodeproc.start_node(log, "--params", "config/openmask3d.yaml", "--use-sim-time",
                               "--scene-dir", str(root / "rec"), *params(
                                   "pose_source:=pose", f"pipeline.frame_step:={STEP}",
                                   "qos_reliability:=reliable", "qos_depth:=200",
                                   "pose_wait:=1.0"))
    try:
        with client_node("openmask3d_jump_test") as ros:
            client = OpenMask3DClient(ros)
            assert client.wait_for_node(60), log.read_text()[-3000:]
            for bag, start in zip(made, STARTS):
                # each replay is a new player: its /clock starts again at the bag's first stamp
                exclude = ["/tf_static", CLOUD_TOPIC] + ([POSE_TOPIC] if start == NO_POSE else [])
                counts = play_bag(bag, ros, rate=2.0, clock=True, exclude=exclude,
                                  wait_for_subscribers=10)
                assert sum(counts.values()) >= 3 * FRAMES, counts
            _advance_clock(ros, STARTS[-1] + 5 * S)     # the last candidates' pose wait ends
            candidates = 3 * FRAMES // STEP
            st = client.wait_for_status(
                lambda s: s.frames_received >= 3 * FRAMES and s.keyframes + s.frames_without_pose
                + s.frames_time_jump >= candidates, 30)
            assert st is not None, (client.last_status, log.read_text()[-3000:])
    finally:
        stop_node(proc)
    # every candidate of the replay without poses is counted as such, none is saved
    assert st.frames_without_pose == FRAMES // STEP, st
    assert st.keyframes + st.frames_time_jump == 2 * FRAMES // STEP, st
    rows = [line.split(",") for line in (root / "rec" / "keyframes.csv").read_text().split()]
    assert len(rows) == st.keyframes
    saved = SceneFolder(root / "rec")
    for name, _, stamp in rows:
        assert not NO_POSE < int(stamp) < NO_POSE + 4 * S, f"keyframe {name} has no true pose"
        np.testing.assert_allclose(saved.pose(name), _truth(scene, int(stamp)), atol=1e-5,
                                   err_msg=f"keyframe {name} stamped {int(stamp) / S:.1f} s")
    text = log.read_text()
    assert "ROS time jumped back" in text, text[-3000:]      # and it says so


def _advance_clock(ros, stamp_ns: int) -> None:
    """Publish /clock at ``stamp_ns`` for a second (the players stop at their last message)."""
    import time
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from rosgraph_msgs.msg import Clock
    from openmask3d_ros.ros.conversions import ns_to_stamp
    pub = ros.create_publisher(Clock, "/clock",
                               QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE))
    for k in range(10):
        pub.publish(Clock(clock=ns_to_stamp(stamp_ns + k * S // 10)))
        time.sleep(0.1)
    ros.destroy_publisher(pub)
