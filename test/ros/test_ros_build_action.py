"""The node's BuildMap action (/openmask3d/build_map) driven from a separate client node, with the
node as its own process: feedback and result, what changed on the result, the latched
~/map_changes topic and the RViz change markers; cancel leaves the previous map current and
answering; a second goal while a build runs is rejected with its reason.

A running build is held deterministically (no timing race) with the node's test-only hook
OPENMASK3D_BUILD_TEST_HOLD=STAGE:FILE (ros/map_builder.py): the build waits at STAGE until FILE
exists or the build is cancelled."""
import contextlib
import io
import json
import re
import shutil
import time

import numpy as np
import pytest
from rclpy.action import ActionClient
from visualization_msgs.msg import Marker, MarkerArray

from openmask3d_ros.action import BuildMap
from openmask3d_ros.core import map_versions
from openmask3d_ros.core.scene import SceneFolder, replace_ply
from openmask3d_ros.msg import MapChanges
from openmask3d_ros.ros.client import OpenMask3DClient, OpenMask3DError
from openmask3d_ros.ros.map_builder import TEST_HOLD_ENV
from openmask3d_ros.ros.qos import latched_qos

import nodeproc  # test/ros/nodeproc.py
from nodeproc import ROOT, ClientNode, node_env, params, stop_node

NS = "/openmask3d"
LIFT = np.array([0.0, 0.0, 0.5])


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A node-recorded-like scene folder (4 keyframes, step 10, cloud.ply) with a map built."""
    from openmask3d_ros.core.config import PipelineConfig
    from openmask3d_ros.core.pipeline import run_pipeline
    from openmask3d_ros.core.synthetic import make_scene
    root = make_scene(tmp_path_factory.mktemp("built") / "scene", seed=3, num_frames=4,
                      width=160, height=120)
    meta = json.loads((root / "scene.json").read_text())
    (root / "scene.json").write_text(json.dumps(dict(meta, keyframe_step=10)))
    run_pipeline(root, PipelineConfig())
    return root


@pytest.fixture
def scene(built, tmp_path):
    return shutil.copytree(built, tmp_path / "scene")


@pytest.fixture
def client():
    c = ClientNode("om3d_build_client")
    om3d = OpenMask3DClient(c.node)
    yield c.node, om3d
    om3d.destroy()
    c.close()


def start_node(tmp_path, scene, **env):
    return nodeproc.start_node(tmp_path / "node.log", "--params", "config/openmask3d.yaml",
                               *params(f"scene_dir:={scene}", "pose_source:=pose"),
                               env=node_env(**env))


def latest(node, msg_type, topic):
    """A latched subscription; returns the list its messages are appended to."""
    got = []
    node.create_subscription(msg_type, topic, got.append, latched_qos())
    return got


def lift_and_remove(scene):
    """The whole scene lifted by LIFT (cloud and camera poses: the images stay consistent) and
    one object's points removed from the cloud; returns that object's old centroid."""
    sc = SceneFolder(scene)
    points, colors = sc.cloud()
    gt = sc.ground_truth()
    obj = next(i for i in sorted(gt.labels) if gt.labels[i]["label"] not in ("table", "floor"))
    keep = gt.instance_ids != obj
    replace_ply(scene / "cloud.ply", points[keep] + LIFT, colors[keep])
    for f in sorted((scene / "pose").glob("*.txt")):
        pose = np.loadtxt(f)
        pose[:3, 3] += LIFT
        np.savetxt(f, pose)
    return points[~keep].mean(axis=0)


def run_documented_example(om3d) -> str:
    """docs/ros.md's build_map example, as written, with its ``om3d``; what it printed."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "docs/ros.md").read_text(), re.S)
    code = next(b for b in blocks if "om3d.build_map(" in b)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(code, {"om3d": om3d})
    return out.getvalue()


def test_feedback_result_changes_topic_and_markers(tmp_path, scene, client):
    node, om3d = client
    changes = latest(node, MapChanges, f"{NS}/map_changes")
    markers = latest(node, MarkerArray, f"{NS}/instance_markers")
    proc = start_node(tmp_path, scene)
    try:
        assert om3d.wait_for_status(lambda s: s.state == "ready", 60), \
            (tmp_path / "node.log").read_text()
        before = map_versions.current(scene / "openmask3d").name
        feedback = []
        first = om3d.build_map(feedback_callback=feedback.append, timeout=120)
        assert first.success and not first.cancelled, first.message
        assert first.generation and first.generation != before
        assert first.num_instances > 0 and {"proposals", "features"} <= set(first.timings)
        assert om3d._wait(lambda: feedback, 5)
        assert {f.stage for f in feedback} & {"proposals", "visibility", "features", "done"}
        assert all(f.elapsed >= 0 for f in feedback)
        ch = first.changes
        assert ch.compared and ch.previous == before and ch.generation == first.generation
        assert len(ch.unchanged) == first.num_instances and not (ch.added or ch.removed
                                                                  or ch.moved)
        assert om3d._wait(lambda: changes and changes[-1].generation == first.generation, 10)

        old_centroid = lift_and_remove(scene)
        second = om3d.build_map(mode="full", timeout=120)
        assert second.success, second.message
        ch = second.changes
        assert ch.previous == first.generation
        assert len(ch.removed) == 1 and not ch.added, (ch.removed, ch.added)
        np.testing.assert_allclose(ch.removed_centroids[ch.removed[0]], old_centroid, atol=0.05)
        assert len(ch.moved) == second.num_instances == first.num_instances - 1
        for disp in ch.moved.values():
            np.testing.assert_allclose(disp, LIFT, atol=0.01)
        assert set(ch.moved) | set(ch.removed) == set(first.changes.unchanged)  # stable ids

        assert om3d._wait(lambda: changes[-1].generation == second.generation, 10)
        msg = changes[-1]
        assert msg.compared and list(msg.removed_ids) == ch.removed
        shown = [(d.x, d.y, d.z) for d in msg.moved_displacements]
        np.testing.assert_allclose(shown, np.tile(LIFT, (len(shown), 1)), atol=0.01)
        assert om3d._wait(lambda: any(m.ns == "openmask3d/changes"
                                      for m in markers[-1].markers), 10)
        ours = [m for m in markers[-1].markers if m.ns == "openmask3d/changes"]
        arrows = [m for m in ours if m.type == Marker.ARROW]
        assert len(arrows) == len(ch.moved) and sum(m.type == Marker.SPHERE for m in ours) == 1
        a, b = arrows[0].points
        np.testing.assert_allclose([b.x - a.x, b.y - a.y, b.z - a.z], LIFT, atol=0.01)
        assert om3d.ask("a red thing").best_id >= 0      # the new map answers
        printed = run_documented_example(om3d)
        assert re.search(rf"^gen-\d+: {second.num_instances} instances in ", printed, re.M), printed
        assert "added: [] removed: []" in printed, printed
        assert re.search(r"^\w[\w ]* \d+/\d+ \d+\.\d s \(~-?\d+ s left\)$", printed, re.M), printed
    finally:
        assert stop_node(proc) == 0
    log = (tmp_path / "node.log").read_text()
    assert "Traceback" not in log, log


def test_cancel_keeps_the_previous_map_and_a_second_goal_is_rejected(tmp_path, scene, client):
    node, om3d = client
    release = tmp_path / "release"
    proc = start_node(tmp_path, scene, **{TEST_HOLD_ENV: f"visibility:{release}"})
    log = tmp_path / "node.log"
    try:
        assert om3d.wait_for_status(lambda s: s.state == "ready", 60), log.read_text()
        gens = [g.name for g in map_versions.generations(scene / "openmask3d")]
        current = map_versions.current(scene / "openmask3d").name
        best = om3d.ask("a red thing").best_id
        assert best >= 0
        actions = ActionClient(node, BuildMap, f"{NS}/build_map")
        assert om3d._wait(actions.server_is_ready, 20)
        feedback = []
        sent = actions.send_goal_async(BuildMap.Goal(mode=BuildMap.Goal.MODE_INCREMENTAL),
                                       feedback_callback=lambda m: feedback.append(m.feedback))
        assert om3d._wait(sent.done, 20) and sent.result().accepted
        goal = sent.result()
        # held at 'visibility' until cancelled: the feedback is there, the build still runs
        assert om3d._wait(lambda: any(f.stage == "visibility" for f in feedback), 30), \
            log.read_text()

        with pytest.raises(OpenMask3DError, match="rejected: already processing"):
            om3d.build_map(timeout=20)
        assert om3d._wait(lambda: "build_map goal rejected: already processing"
                          in log.read_text(), 10)
        ok, text = om3d.map_complete()
        assert not ok and "already processing" in text
        assert om3d.ask("a red thing").best_id == best         # the previous map answers

        result = goal.get_result_async()
        t0 = time.monotonic()
        goal.cancel_goal_async()
        assert om3d._wait(result.done, 10)
        waited = time.monotonic() - t0
        print(f"cancel -> result in {waited:.2f} s")
        assert waited < 2.0
        res = result.result().result
        assert res.cancelled and not res.success and "cancelled" in res.message
        assert not res.generation
        assert om3d.wait_for_status(lambda s: s.state == "ready", 10)
        assert map_versions.current(scene / "openmask3d").name == current
        assert [g.name for g in map_versions.generations(scene / "openmask3d")] == gens
        assert om3d.ask("a red thing").best_id == best         # the previous map answers

        release.touch()                         # the next build runs through
        after = om3d.build_map(timeout=120)
        assert after.success and after.changes.previous == current, after.message
        actions.destroy()
    finally:
        assert stop_node(proc) == 0
    assert "Traceback" not in log.read_text(), log.read_text()


def test_first_map_has_nothing_to_compare_and_time_left_estimate(monkeypatch):
    """In process: a map without a change record gives compared=False and no change markers;
    the time left is the current stage's rest at its rate, or the previous build's duration
    minus the time spent, whichever is larger, and -1 when neither is known."""
    from openmask3d_ros.core.instance_map import InstanceMap
    from openmask3d_ros.core.map_meta import MapMeta
    from openmask3d_ros.ros import map_builder
    from openmask3d_ros.ros.map_builder import BuildJob
    from openmask3d_ros.ros.visualization import _change_markers, map_changes_msg
    imap = InstanceMap(np.zeros((4, 3), np.float32), [np.arange(4)], np.ones((1, 2), np.float32),
                       MapMeta())
    msg = map_changes_msg(imap)
    assert not msg.compared and not msg.previous and not list(msg.unchanged_ids)
    assert _change_markers(None, imap) == []

    clock = [100.0]
    monkeypatch.setattr(map_builder.time, "perf_counter", lambda: clock[0])
    job = BuildJob("full")
    assert job.report("proposals", 0, 1).remaining == -1.0
    clock[0] = 102.0
    job.report("features", 0, 10)
    clock[0] = 104.0
    assert job.report("features", 2, 10).remaining == pytest.approx(8.0)   # 2 s per 2 frames
    job.expected = 20.0
    assert job.snapshot().remaining == pytest.approx(16.0)    # 20 s last time, 4 s spent
    with pytest.raises(ValueError, match="incremental or full"):
        BuildJob("fast")


def test_rebuild_period_rebuilds_when_the_cloud_changes_and_only_then(tmp_path, scene, client):
    """rebuild_period (issue 25 item 4): a restarted node whose map is up to date does not
    rebuild; a new cloud on the cloud topic starts one incremental build, and no further ones
    follow while nothing changes."""
    from sensor_msgs.msg import PointCloud2

    from openmask3d_ros.ros.conversions import arrays_to_cloud
    node, om3d = client
    gens = lambda: [g.name for g in map_versions.generations(scene / "openmask3d")]  # noqa: E731
    before = gens()
    proc = nodeproc.start_node(tmp_path / "node.log", "--params", "config/openmask3d.yaml",
                               *params(f"scene_dir:={scene}", "pose_source:=pose",
                                       "rebuild_period:=0.3"))
    try:
        assert om3d.wait_for_status(lambda s: s.state == "ready", 60), \
            (tmp_path / "node.log").read_text()
        om3d._wait(lambda: False, 2.0)            # about 6 periods: the map is up to date
        assert gens() == before, (tmp_path / "node.log").read_text()
        pub = node.create_publisher(PointCloud2, "/cloud_map", latched_qos())
        points, colors = SceneFolder(scene).cloud()
        pub.publish(arrays_to_cloud(points, colors, "map"))
        assert om3d._wait(lambda: len(gens()) > len(before) and om3d.last_status is not None
                          and om3d.last_status.state == "ready", 60), \
            (tmp_path / "node.log").read_text()
        after = gens()
        om3d._wait(lambda: False, 2.0)
        assert gens() == after
        log = (tmp_path / "node.log").read_text()
        assert log.count("scheduled rebuild: processing") == 1, log
    finally:
        assert stop_node(proc) == 0
