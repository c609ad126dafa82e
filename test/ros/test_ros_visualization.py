"""What RViz sees: the map's instance cloud and markers, and a query's detections (vision_msgs),
heatmap, hit markers and points, received by a second node over DDS; and config/openmask3d.rviz
names only topics the node publishes."""
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from sensor_msgs.msg import PointCloud2
from visualization_msgs.msg import Marker, MarkerArray
from vision_msgs.msg import Detection3DArray

from openmask3d_ros.core import render
from openmask3d_ros.core.instance_map import InstanceMap
from openmask3d_ros.core.query import QueryResult
from openmask3d_ros.ros import params as P
from openmask3d_ros.ros.conversions import cloud_to_arrays
from openmask3d_ros.ros.qos import latched_qos
from openmask3d_ros.ros.visualization import MapPublishers

from nodeproc import ros_context  # test/ros/nodeproc.py

RVIZ = Path(__file__).resolve().parents[2] / "config" / "openmask3d.rviz"


@pytest.fixture
def context():
    # A domain of its own (derived from conftest's): no other test's nodes are seen.
    with ros_context(domain_offset=120) as ctx:
        yield ctx


def _scene():
    """A floor and four boxes (instances 0-3; instances 0 and 3 both hold 50 floor points)."""
    rng = np.random.default_rng(0)
    floor = np.c_[rng.uniform(0, 4, 3000), rng.uniform(0, 3, 3000), np.zeros(3000)]
    boxes = [rng.uniform(0, 0.3, (400 + 100 * k, 3)) + [0.5 + 0.8 * k, 1.0, 0.0]
             for k in range(4)]
    points = np.vstack([floor] + boxes).astype(np.float32)
    starts = np.cumsum([len(floor)] + [len(b) for b in boxes])
    indices = [np.arange(starts[k], starts[k + 1] if k < 3 else len(points)) for k in range(4)]
    for m in (0, 3):                                   # an overlap: both claim 50 floor points
        indices[m] = np.concatenate([indices[m], np.arange(0, 50)])
    return InstanceMap(points, indices, np.eye(4, 8, dtype=np.float32))


def _result(imap, m, score):
    pts = imap.points[imap.point_indices[m]]
    return QueryResult(m, score, pts.mean(0), pts.min(0), pts.max(0), imap.point_indices[m], pts)


class Listener:
    """A second node that keeps the last message of each visualisation topic."""

    TOPICS = {"instances_cloud": PointCloud2, "instance_markers": MarkerArray,
              "detections": Detection3DArray, "heatmap": PointCloud2, "markers": MarkerArray,
              "query_points": PointCloud2}

    def __init__(self, context, executor):
        self.node = Node("viz_listener", context=context)
        self.last = {}
        for name, typ in self.TOPICS.items():
            self.node.create_subscription(typ, f"/openmask3d/{name}",
                                          lambda msg, n=name: self.last.__setitem__(n, msg),
                                          latched_qos())
        executor.add_node(self.node)
        self.executor = executor

    def wait(self, names, since: dict, timeout=15.0):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            self.executor.spin_once(timeout_sec=0.05)
            if all(n in self.last and self.last[n] is not since.get(n) for n in names):
                return dict(self.last)
        raise AssertionError(f"no message on {[n for n in names if n not in self.last]}")


def test_map_and_query_topics(context):
    imap = _scene()
    node = Node("openmask3d", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    viz = MapPublishers(node, lambda: "map")
    listener = Listener(context, executor)
    try:
        viz.publish_map(imap)
        got = listener.wait(["instances_cloud", "instance_markers"], {})

        # instance cloud: every point, each instance one colour of its own, the rest grey
        pts, cols = cloud_to_arrays(got["instances_cloud"])
        assert got["instances_cloud"].header.frame_id == "map"
        assert len(pts) == len(imap.points) and np.allclose(pts, imap.points)
        labels = render.point_labels(len(pts), imap.point_indices)
        own = [cols[labels == m] for m in range(4)]
        assert all(len(np.unique(c, axis=0)) == 1 for c in own)
        assert len({tuple(c[0]) for c in own}) == 4
        bg = cols[labels < 0]
        assert (bg[:, 0] == bg[:, 1]).all() and (bg[:, 1] == bg[:, 2]).all()
        assert labels[:50].tolist() == [0] * 50        # the smaller instance wins an overlap

        # instance markers: delete-all, then a box and an "id (N pts)" label per instance
        ms = got["instance_markers"].markers
        assert ms[0].action == Marker.DELETEALL
        boxes = [m for m in ms if m.type == Marker.LINE_LIST]
        texts = sorted(m.text for m in ms if m.type == Marker.TEXT_VIEW_FACING)
        assert len(boxes) == 4 and all(m.header.frame_id == "map" for m in ms)
        assert texts == sorted(f"{m} ({len(imap.point_indices[m])} pts)" for m in range(4))

        # a query with two hits, instance 2 best
        values = np.array([0.1, 0.3, 0.9, 0.5])
        hits = [_result(imap, 2, 0.31), _result(imap, 3, 0.22)]
        since = dict(listener.last)
        viz.publish_query("red box", hits, values)
        got = listener.wait(["detections", "heatmap", "markers", "query_points"], since)

        dets = got["detections"]
        assert dets.header.frame_id == "map" and len(dets.detections) == 2
        for det, hit in zip(dets.detections, hits):
            assert det.header.frame_id == "map" and det.id == str(hit.instance_id)
            assert det.results[0].hypothesis.class_id == "red box"
            assert det.results[0].hypothesis.score == pytest.approx(hit.score)
            c = det.bbox.center.position
            assert [c.x, c.y, c.z] == pytest.approx((hit.bbox_min + hit.bbox_max) / 2, abs=1e-5)
            s = det.bbox.size
            assert [s.x, s.y, s.z] == pytest.approx(hit.bbox_max - hit.bbox_min, abs=1e-5)

        boxes = [m for m in got["markers"].markers if m.type == Marker.CUBE]
        assert len(boxes) == 2 and all(m.header.frame_id == "map" for m in boxes)
        qpts, _ = cloud_to_arrays(got["query_points"])
        assert len(qpts) == sum(len(h.points) for h in hits)

        # heatmap: the whole scene; the hottest colour is exactly on the top hit's points
        hpts, hcols = cloud_to_arrays(got["heatmap"])
        assert len(hpts) == len(imap.points)
        hottest = np.flatnonzero((hcols == render.HEAT_LUT[-1]).all(axis=1))
        assert set(hottest.tolist()) == set(imap.point_indices[2].tolist())
    finally:
        viz.destroy()
        executor.shutdown()
        listener.node.destroy_node()
        node.destroy_node()


def _rviz_topics(cfg) -> list[tuple[str, str]]:
    out = []
    for d in cfg["Visualization Manager"]["Displays"]:
        if isinstance(d.get("Topic"), dict):
            out.append((d["Class"], d["Topic"]["Value"]))
    return out


def test_rviz_config_names_published_topics(context, tmp_path):
    from rclpy.lifecycle import TransitionCallbackReturn
    from rclpy.parameter import Parameter

    from openmask3d_ros.ros.node import OpenMask3DNode
    cfg = yaml.safe_load(RVIZ.read_text())
    assert cfg["Visualization Manager"]["Global Options"]["Fixed Frame"] == "map"
    topics = _rviz_topics(cfg)
    assert topics, "no display with a topic"

    node = OpenMask3DNode(context=context, parameter_overrides=[
        Parameter("autostart", value=False), Parameter("scene_dir", value=str(tmp_path / "rec"))])
    try:
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        published = {name: types for name, types in
                     node.get_publisher_names_and_types_by_node(node.get_name(),
                                                                node.get_namespace())}
        cloud_input = P.NODE_PARAMETERS["cloud_topic"].default
        for cls, topic in topics:
            assert topic == cloud_input or topic in published, f"{cls}: {topic} not published"
        wanted = {"/openmask3d/instances_cloud", "/openmask3d/heatmap", "/openmask3d/detections",
                  "/openmask3d/markers", "/openmask3d/instance_markers", cloud_input}
        assert wanted <= {t for _, t in topics}
        kinds = {t: cls for cls, t in topics}
        assert kinds["/openmask3d/detections"] == "vision_msgs_rviz_plugins/Detection3DArray"
        assert published["/openmask3d/detections"] == ["vision_msgs/msg/Detection3DArray"]
    finally:
        node.destroy_node()


def test_lifecycle_query_topics_wait_for_activation(context):
    from rclpy.lifecycle import LifecycleNode, TransitionCallbackReturn
    imap = _scene()
    node = LifecycleNode("openmask3d", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    viz = MapPublishers(node, "map", lifecycle=True)
    listener = Listener(context, executor)
    try:
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        viz.publish_map(imap)                   # map views: published while inactive too
        listener.wait(["instances_cloud", "instance_markers"], {})
        hits = [_result(imap, 1, 0.5)]
        viz.publish_query("box", hits, np.arange(4.0))
        with pytest.raises(AssertionError):     # inactive: the answer topics stay silent
            listener.wait(["detections"], {}, timeout=1.5)
        assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
        viz.publish_query("box", hits, np.arange(4.0))
        got = listener.wait(["detections", "heatmap", "markers", "query_points"], {})
        assert [d.id for d in got["detections"].detections] == ["1"]
    finally:
        viz.destroy()
        executor.shutdown()
        listener.node.destroy_node()
        node.destroy_node()


def test_synthetic_map_query_hottest_is_the_match(context, tmp_path):
    """A map built by the pipeline (stand-ins) and a colour query: the top detection is the
    ground-truth object of that colour and its points are the heatmap's hottest."""
    from openmask3d_ros.core.pipeline import run_pipeline
    from openmask3d_ros.core.query import open_map
    from openmask3d_ros.core.scene import SceneFolder
    from openmask3d_ros.core.synthetic import make_scene
    scene = make_scene(tmp_path / "scene", seed=1, num_frames=30, width=160, height=120)
    run_pipeline(scene)
    engine = open_map(scene)
    gt = SceneFolder(scene).ground_truth()
    colours = {info.get("color"): g for g, info in gt.labels.items()}
    word = next(c for c in ("red", "green", "blue", "yellow") if c in colours)
    truth = set(np.flatnonzero(gt.instance_ids == colours[word]).tolist())

    node = Node("openmask3d", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    viz = MapPublishers(node, "map")
    listener = Listener(context, executor)
    try:
        viz.publish_map(engine)
        answer = engine.ask(word, top_k=3)
        hits = answer.results
        viz.publish_query(word, hits, answer.instance_values)
        got = listener.wait(["instances_cloud", "detections", "heatmap"], {})
        top = int(got["detections"].detections[0].id)
        mine = set(engine.map.point_indices[top].tolist())
        assert len(mine & truth) / len(mine | truth) >= 0.5        # the object of that colour
        _, hcols = cloud_to_arrays(got["heatmap"])
        hottest = np.flatnonzero((hcols == render.HEAT_LUT[-1]).all(axis=1))
        assert len(hottest) and set(hottest.tolist()) <= mine
    finally:
        viz.destroy()
        executor.shutdown()
        listener.node.destroy_node()
        node.destroy_node()


def test_views_published_later_never_hold_the_caller(context):
    """publish_query_later returns before the views are built (the node's reply does not wait
    for them); answers that arrive while one is being published replace each other, and the
    latest is what the latched topics end on."""
    import threading
    imap = _scene()
    node = Node("openmask3d", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    viz = MapPublishers(node, "map")
    listener = Listener(context, executor)
    release, started, computed = threading.Event(), threading.Event(), []

    def slow_values(tag):
        def values():
            computed.append(tag)
            started.set()
            assert release.wait(60)          # held until the test lets it go
            return np.arange(4.0)
        return values
    try:
        viz.publish_map(imap)
        listener.wait(["instances_cloud"], {})
        viz.publish_query_later("first", [_result(imap, 0, 0.1)], slow_values("first"))
        assert started.wait(60)
        for word, m in (("second", 1), ("third", 2)):        # queued behind the held one
            viz.publish_query_later(word, [_result(imap, m, 0.2)], slow_values(word))
        assert not viz.wait_published(0.2)                   # still held: the caller was not
        release.set()
        assert viz.wait_published(60)
        assert computed == ["first", "third"]                # "second" was replaced unbuilt
        end = time.monotonic() + 30
        while time.monotonic() < end:                         # the latched topic ends on "third"
            executor.spin_once(timeout_sec=0.05)
            det = listener.last.get("detections")
            if det is not None and det.detections[0].results[0].hypothesis.class_id == "third":
                break
        assert [d.id for d in det.detections] == ["2"]
        assert det.detections[0].results[0].hypothesis.class_id == "third"
    finally:
        release.set()
        viz.destroy()
        executor.shutdown()
        listener.node.destroy_node()
        node.destroy_node()


def test_views_keep_to_their_rate_and_end_on_the_latest_answer(context):
    """A planner querying faster than ``max_rate`` does not make the node publish every answer's
    views (they cost more than the answers): at most ``max_rate`` a second reach RViz, the
    first at once, and the latched topics end on the latest answer."""
    from rclpy.qos import QoSProfile
    imap = _scene()
    node = Node("openmask3d", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    viz = MapPublishers(node, "map", max_rate=2.0)
    listener = Listener(context, executor)
    got = []            # every detections message, in order (a deep volatile queue)
    listener.node.create_subscription(Detection3DArray, "/openmask3d/detections",
                                      got.append, QoSProfile(depth=100))
    try:
        viz.publish_map(imap)
        listener.wait(["instances_cloud"], {})
        t0 = time.monotonic()
        words = [f"query {i}" for i in range(30)]
        for i, word in enumerate(words):
            viz.publish_query_later(word, [_result(imap, i % 4, 0.1)])
            pause = time.monotonic() + 0.05                 # 20 queries a second
            while time.monotonic() < pause:
                executor.spin_once(timeout_sec=0.01)
        assert viz.wait_published(60)
        elapsed = time.monotonic() - t0
        end = time.monotonic() + 30
        while time.monotonic() < end and (
                not got or got[-1].detections[0].results[0].hypothesis.class_id != words[-1]):
            executor.spin_once(timeout_sec=0.05)
        classes = [m.detections[0].results[0].hypothesis.class_id for m in got]
        assert classes[0] == words[0]                 # the first answer is shown at once
        assert classes[-1] == words[-1]               # and the last one is never lost
        assert 2 <= len(classes) <= elapsed * 2.0 + 2, (len(classes), elapsed)
    finally:
        viz.destroy()
        executor.shutdown()
        listener.node.destroy_node()
        node.destroy_node()
