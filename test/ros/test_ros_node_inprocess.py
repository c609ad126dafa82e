"""The node's logic driven in-process: keyframe selection, pose handling, bad inputs, the trigger
while processing, and queries. Messages built from a synthetic scene are handed to the node's
input callbacks (deterministic); the node runs on its multi-threaded executor and the services
are called from a client node."""
import threading
import time

import numpy as np
import pytest
import rclpy
from rclpy.executors import MultiThreadedExecutor
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.parameter import Parameter
from std_srvs.srv import Trigger

from openmask3d_ros.core.instance_map import InstanceMap
from openmask3d_ros.core.scene import SceneFolder
from openmask3d_ros.msg import PipelineStatus
from openmask3d_ros.ros.conversions import (BODY_T_OPTICAL, arrays_to_cloud, depth_to_image,
                                            intrinsics_to_camera_info, matrix_to_transform,
                                            ns_to_stamp, rgb_to_image)
from openmask3d_ros.ros.node import OpenMask3DNode
from openmask3d_ros.srv import QueryObjects

from nodeproc import ros_context  # test/ros/nodeproc.py

S = 1_000_000_000
OPTICAL = "camera_color_optical_frame"


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    from openmask3d_ros.core.synthetic import make_scene
    return SceneFolder(make_scene(tmp_path_factory.mktemp("scene"), seed=1, num_frames=30,
                                  width=160, height=120))


@pytest.fixture
def context():
    # Another DDS domain than the replay tests: nodes of this process must not linger in theirs.
    with ros_context(domain_offset=100) as ctx:
        yield ctx


class Running:
    """The node on a MultiThreadedExecutor (as in main()) plus a client node for its services."""

    def __init__(self, node):
        self.node = node
        self.client = rclpy.create_node("test_client", context=node.context)
        self.executor = MultiThreadedExecutor(num_threads=4, context=node.context)
        self.executor.add_node(node)
        self.executor.add_node(self.client)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()
        self.trigger = self.client.create_client(Trigger, "/openmask3d/map_complete")
        self.query_client = self.client.create_client(QueryObjects, "/openmask3d/query")

    def call(self, client, request, timeout=30.0):
        assert client.wait_for_service(timeout_sec=10.0)
        future = client.call_async(request)
        done = threading.Event()
        future.add_done_callback(lambda f: done.set())
        assert done.wait(timeout), "no answer"
        return future.result()

    def map_complete(self):
        return self.call(self.trigger, Trigger.Request())

    def query(self, text, top_k=0, min_score=-1.0, **fields):
        return self.call(self.query_client, QueryObjects.Request(query=text, top_k=top_k,
                                                                 min_score=min_score, **fields))

    def wait_status(self, pred, timeout=30.0):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            st = self.node.status()
            if pred(st):
                return st
            time.sleep(0.02)
        raise AssertionError(f"status never matched: {self.node.status()}")

    def close(self):
        self.executor.shutdown()
        self.thread.join(10)
        self.client.destroy_node()
        self.node.destroy_node()


def _node(context, tmp_path, **params):
    values = {"scene_dir": str(tmp_path / "rec"), "pose_wait": 0.0, "autostart": False, **params}
    node = OpenMask3DNode(context=context, parameter_overrides=[
        Parameter(k, value=v) for k, v in values.items()])
    assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
    assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
    return Running(node)


def _set_tf(node, parent, child, t_ns, M):
    lookup = node.inputs.pose_lookup
    if hasattr(lookup.buffer, "lookup"):               # our TransformBuffer
        lookup.buffer.set_transform(parent, child, t_ns, M)
    else:                                              # tf2_ros on a real ROS install
        from geometry_msgs.msg import TransformStamped
        ts = TransformStamped()
        ts.header.frame_id, ts.child_frame_id = parent, child
        ts.header.stamp = ns_to_stamp(t_ns)
        matrix_to_transform(M, ts.transform)
        lookup.buffer.set_transform(ts, "test")


def _frame_msgs(scene, fid, t_ns, depth_encoding="16UC1"):
    color = rgb_to_image(scene.color(fid), "bgr8")
    depth = depth_to_image(scene.depth(fid), depth_encoding)
    info = intrinsics_to_camera_info(scene.color_intrinsics())
    for m in (color, depth, info):
        m.header.stamp, m.header.frame_id = ns_to_stamp(t_ns), OPTICAL
    return color, depth, info


def test_record_trigger_process_query(context, tmp_path, scene, monkeypatch):
    run = _node(context, tmp_path)
    node = run.node
    try:
        resp = run.query("red")
        assert not resp.success and "no map yet" in resp.message
        st = run.wait_status(lambda s: s["models"] not in ("", "loading"))
        # the stand-ins in use are named in the status
        assert "proposals=geometric-standin" in st["models"] and "device=cpu" in st["models"]
        assert any("colour STAND-IN" in n for n in st["notes"])
        trig = run.map_complete()
        assert not trig.success and "no keyframes" in trig.message

        for i, fid in enumerate(scene.frame_ids):
            t = 100 * S + i * S // 10
            if i <= 15:           # tracking lost after frame 15: keyframe 20 has no pose
                _set_tf(node, "map", OPTICAL, t, scene.pose(fid))
            node.inputs.on_frame(*_frame_msgs(scene, fid, t))
        st = run.wait_status(lambda s: s["keyframes"] + s["frames_without_pose"] == 3)
        assert st["frames_received"] == 30
        assert st["keyframes"] == 2 and st["frames_without_pose"] == 1
        rec = SceneFolder(tmp_path / "rec")
        assert rec.frame_ids == ["0", "1"] and rec.keyframe_step == 10
        np.testing.assert_allclose(rec.pose("1"), scene.pose(scene.frame_ids[10]), atol=1e-6)
        np.testing.assert_array_equal(rec.color("0"), scene.color(scene.frame_ids[0]))
        np.testing.assert_allclose(rec.depth("1"), scene.depth(scene.frame_ids[10]), atol=1e-3)

        # unsupported depth encoding: counted and skipped, nothing raised
        bad = _frame_msgs(scene, scene.frame_ids[0], 200 * S)
        bad[1].encoding = "8UC3"
        node.inputs.on_frame(*bad)
        assert node.status()["frames_rejected"] == 1

        trig = run.map_complete()
        assert not trig.success and "no reconstructed cloud" in trig.message
        assert not node.status()["have_cloud"]

        pts, cols = scene.cloud()
        node.inputs.on_cloud(arrays_to_cloud(pts, cols, frame_id="map"))
        assert node.status()["have_cloud"]

        import openmask3d_ros.core.pipeline as pipeline
        real, release, started = pipeline.run_pipeline, threading.Event(), threading.Event()
        calls = []

        def slow_pipeline(*args, **kwargs):
            calls.append(kwargs)
            started.set()
            assert release.wait(30)
            return real(*args, **kwargs)
        monkeypatch.setattr(pipeline, "run_pipeline", slow_pipeline)

        first = run.map_complete()
        assert first.success, first.message
        assert started.wait(10)
        assert len(calls[0]["cloud"][0]) == len(pts)     # the received cloud, not a file
        second = run.map_complete()
        assert not second.success and "already processing" in second.message
        assert node.status()["state"] == PipelineStatus.STATE_PROCESSING
        during = run.query("red")
        assert not during.success and "being built" in during.message
        release.set()
        st = run.wait_status(lambda s: s["state"] != PipelineStatus.STATE_PROCESSING, 60)
        assert st["state"] == PipelineStatus.STATE_READY, st["message"]
        assert "map ready" in st["message"] and "proposals" in st["message"]
        assert st["elapsed"] > 0
        from openmask3d_ros.core.instance_map import InstanceMap
        imap = InstanceMap.load(tmp_path / "rec")
        assert imap.meta.frame_step == 10 and imap.meta.frames.keyframes == 2

        gt = scene.ground_truth()
        colour = gt.labels[1]["color"]          # object 1; the stand-in encoder knows colours
        resp = run.query(colour, top_k=2)
        assert resp.success, resp.message
        assert 1 <= len(resp.instances) <= 2
        assert resp.instances[0].score >= resp.instances[-1].score
        hit = resp.instances[0]
        assert hit.header.frame_id == "map" and hit.label == colour
        assert hit.points.width == hit.num_points > 0
        want = pts[gt.instance_ids == 1].mean(axis=0)
        got = np.array([hit.centroid.x, hit.centroid.y, hit.centroid.z])
        assert np.linalg.norm(got - want) < 0.03

        for req, text in ((dict(text=""), "empty"), (dict(text="  "), "empty"),
                          (dict(text="red", top_k=-1), "top_k"),
                          (dict(text="red", min_score=float("nan")), "min_score")):
            r = run.query(**req)
            assert not r.success and text in r.message and not r.instances
    finally:
        run.close()


def test_pose_topic_source_and_32fc1_depth(context, tmp_path, scene):
    from geometry_msgs.msg import PoseStamped
    from openmask3d_ros.ros.conversions import matrix_to_pose
    run = _node(context, tmp_path, pose_source="pose", pose_is_optical=False, pose_wait=1.0,
                **{"pipeline.frame_step": 5})
    node = run.node
    try:
        fid = scene.frame_ids[3]
        # the frame arrives first; its poses (halfway between two) follow within the wait
        node.inputs.on_frame(*_frame_msgs(scene, fid, 10 * S, depth_encoding="32FC1"))
        time.sleep(0.2)
        assert node.status()["keyframes"] == 0
        body_pose = scene.pose(fid) @ np.linalg.inv(BODY_T_OPTICAL)
        for t in (10 * S - S // 20, 10 * S + S // 20):   # within tf_tolerance of each other
            msg = PoseStamped()
            msg.header.frame_id, msg.header.stamp = "map", ns_to_stamp(t)
            matrix_to_pose(body_pose, msg.pose)
            node.inputs.on_pose(msg)
        run.wait_status(lambda s: s["keyframes"] == 1, 5)
        rec = SceneFolder(tmp_path / "rec")
        np.testing.assert_allclose(rec.pose("0"), scene.pose(fid), atol=1e-6)
        np.testing.assert_allclose(rec.depth("0"), scene.depth(fid), atol=1e-3)
        # 4 more frames, then the next keyframe (frame_step 5) has no pose within tolerance:
        # counted once its wait (1 s of node time) is over
        for i in range(1, 6):
            node.inputs.on_frame(*_frame_msgs(scene, fid, (20 + i) * S))
        st = run.wait_status(lambda s: s["frames_without_pose"] == 1, 5)
        assert st["keyframes"] == 1
    finally:
        run.close()


def test_bad_parameters_fail_configure(context, tmp_path):
    node = OpenMask3DNode(context=context, parameter_overrides=[
        Parameter("scene_dir", value=str(tmp_path / "x")),
        Parameter("pose_source", value="gps")])
    try:
        assert node.trigger_configure() == TransitionCallbackReturn.FAILURE
        assert node.status()["state"] == PipelineStatus.STATE_ERROR
        assert "pose_source" in node.status()["message"]
    finally:
        node.destroy_node()
    node = OpenMask3DNode(context=context, parameter_overrides=[
        Parameter("scene_dir", value=str(tmp_path / "y")),
        Parameter("pipeline.visibility.k_threshold", value="far")])
    try:
        assert node.trigger_configure() == TransitionCallbackReturn.FAILURE
        assert "k_threshold" in node.status()["message"]
    finally:
        node.destroy_node()


def test_node_builds_its_map_with_clip_and_sam(context, tmp_path, scene):
    """The node through open_clip + segment-anything (random-weight checkpoint files, as a user
    configures downloaded weights): one keyframe, so SAM embeds exactly one image."""

    import torch
    open_clip = pytest.importorskip("open_clip")
    segment_anything = pytest.importorskip("segment_anything")
    torch.manual_seed(0)
    torch.save(open_clip.create_model("ViT-B-32", pretrained=None).state_dict(), tmp_path / "c.pt")
    torch.save(segment_anything.sam_model_registry["vit_b"](checkpoint=None).state_dict(),
               tmp_path / "s.pth")
    run = _node(context, tmp_path, **{
        "pipeline.encoder.backend": "clip", "pipeline.encoder.clip_model": "ViT-B-32",
        "pipeline.encoder.clip_checkpoint": str(tmp_path / "c.pt"),
        "pipeline.segmenter.backend": "sam", "pipeline.segmenter.sam_model": "vit_b",
        "pipeline.segmenter.sam_checkpoint": str(tmp_path / "s.pth")})
    node = run.node
    try:
        st = run.wait_status(lambda s: s["models"] not in ("", "loading"), 120)
        assert "segmenter=sam:vit_b" in st["models"]
        assert "image_encoder=clip:ViT-B-32" in st["models"]
        for i, fid in enumerate(scene.frame_ids[:10]):
            t = 100 * S + i * S // 10
            _set_tf(node, "map", OPTICAL, t, scene.pose(fid))
            node.inputs.on_frame(*_frame_msgs(scene, fid, t))
        run.wait_status(lambda s: s["keyframes"] == 1)
        pts, cols = scene.cloud()
        node.inputs.on_cloud(arrays_to_cloud(pts, cols, frame_id="map"))
        assert run.map_complete().success
        st = run.wait_status(lambda s: s["state"] != PipelineStatus.STATE_PROCESSING, 600)
        assert st["state"] == PipelineStatus.STATE_READY, st["message"]
        meta = InstanceMap.load(tmp_path / "rec").meta
        assert meta.models.segmenter == "sam:vit_b" and meta.segmenter_images == 1
        # random weights: relevance means nothing, so ask for everything (min_relevance 0)
        resp = run.query("a red mug", top_k=3, min_relevance=0.0)
        assert resp.success, resp.message
        rel = [i.relevance for i in resp.instances]
        assert rel and rel == sorted(rel, reverse=True)
    finally:
        run.close()


def test_pose_wait_runs_on_ros_time(context, tmp_path, scene):
    """With use_sim_time a candidate waits for its pose in /clock time, not wall time."""
    from rosgraph_msgs.msg import Clock
    run = _node(context, tmp_path, pose_source="pose", pose_wait=1.0, use_sim_time=True)
    node = run.node
    try:
        pub = run.client.create_publisher(Clock, "/clock", 10)

        def set_clock(sec):
            pub.publish(Clock(clock=ns_to_stamp(sec * S)))
            run.wait_status(lambda s: node.get_clock().now().nanoseconds >= sec * S, 10)
        set_clock(100)
        node.inputs.on_frame(*_frame_msgs(scene, scene.frame_ids[0], 100 * S))
        time.sleep(1.5)                                  # wall time passes, the clock does not
        st = node.status()
        assert st["frames_without_pose"] == 0 and st["keyframes"] == 0
        set_clock(102)
        run.wait_status(lambda s: s["frames_without_pose"] == 1, 5)
    finally:
        run.close()


def test_status_keeps_coming_when_the_sim_clock_stops(context, tmp_path, scene):
    """With use_sim_time the status is still published on time when /clock stops (end of a
    bag, paused simulator): a subscriber sees the frames that arrive after the last tick."""
    from rosgraph_msgs.msg import Clock
    run = _node(context, tmp_path, pose_source="pose", use_sim_time=True, status_period=0.1)
    node = run.node
    seen = []
    try:
        run.client.create_subscription(PipelineStatus, "/openmask3d/status", seen.append, 10)
        run.client.create_publisher(Clock, "/clock", 10).publish(Clock(clock=ns_to_stamp(100 * S)))
        run.wait_status(lambda s: node.get_clock().now().nanoseconds >= 100 * S, 10)
        for i, fid in enumerate(scene.frame_ids[:3]):
            node.inputs.on_frame(*_frame_msgs(scene, fid, 100 * S + i * S // 30))
        before = len(seen)
        end = time.monotonic() + 10          # 5 periods, with room for a loaded machine
        while time.monotonic() < end and len(seen) < before + 5:
            time.sleep(0.05)
        assert len(seen) >= before + 5, f"{len(seen) - before} status messages in 10 s"
        assert seen[-1].frames_received == 3
        assert seen[-1].header.stamp.sec == 100          # stamped in ROS (sim) time
    finally:
        run.close()


def test_compressed_inputs(context, tmp_path, scene):
    """color_transport compressed / depth_transport compressedDepth subscribe to
    <topic>/compressed and <topic>/compressedDepth (of a set and of a default topic)."""
    from openmask3d_ros.ros.conversions import depth_to_compressed_depth, rgb_to_compressed
    values = {"scene_dir": str(tmp_path / "rec"), "autostart": False,
              "color_transport": "compressed", "depth_transport": "compressedDepth",
              "color_topic": "/robot/rgb"}
    node = OpenMask3DNode(context=context, parameter_overrides=[
        Parameter(k, value=v) for k, v in values.items()])
    assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
    assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
    run = Running(node)
    try:
        assert run.wait_status(lambda s: run.client.count_subscribers(
            "/robot/rgb/compressed") == 1 and run.client.count_subscribers(
            "/camera/aligned_depth_to_color/image_raw/compressedDepth") == 1, 10)
        for i, fid in enumerate(scene.frame_ids[:11]):
            t = 100 * S + i * S // 10
            _set_tf(node, "map", OPTICAL, t, scene.pose(fid))
            color = rgb_to_compressed(scene.color(fid), "png")
            depth = depth_to_compressed_depth(scene.depth(fid))
            _, _, info = _frame_msgs(scene, fid, t)
            for m in (color, depth):
                m.header.stamp, m.header.frame_id = ns_to_stamp(t), OPTICAL
            node.inputs.on_frame(color, depth, info)
        run.wait_status(lambda s: s["keyframes"] == 2)
        rec = SceneFolder(tmp_path / "rec")
        np.testing.assert_array_equal(rec.color("1"), scene.color(scene.frame_ids[10]))
        np.testing.assert_allclose(rec.depth("1"), scene.depth(scene.frame_ids[10]), atol=0.02)
    finally:
        run.close()


def test_a_backlog_of_frames_is_recorded_after_a_pause(context, tmp_path, scene):
    """A node that paused (a busy machine, a slow first keyframe) finds up to qos_depth frames
    waiting on each camera topic. The executor may drain one topic's backlog before the
    others'; none of the waiting frames may be lost for that (a short sync queue lost them:
    gaps of 11-12 frames in a best-effort stream under CI load)."""
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import CameraInfo, Image
    values = {"scene_dir": str(tmp_path / "rec"), "pose_wait": 0.0, "autostart": False,
              "pose_source": "pose"}
    node = OpenMask3DNode(context=context, parameter_overrides=[
        Parameter(k, value=v) for k, v in values.items()])
    assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
    assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
    camera = rclpy.create_node("camera", context=context)    # not spun: publishing needs none
    frames = 25                            # below qos_depth (30), above 2 x sync_queue_size
    run = None
    try:
        qos = qos_profile_sensor_data
        pubs = [camera.create_publisher(t, topic, qos) for t, topic in (
            (Image, "/camera/color/image_raw"),
            (Image, "/camera/aligned_depth_to_color/image_raw"),
            (CameraInfo, "/camera/color/camera_info"))]
        end = time.monotonic() + 20
        while time.monotonic() < end and any(p.get_subscription_count() < 1 for p in pubs):
            time.sleep(0.05)
        assert all(p.get_subscription_count() == 1 for p in pubs)
        ids = scene.frame_ids
        for i in range(frames):            # while the node is not spinning: they all wait
            for pub, msg in zip(pubs, _frame_msgs(scene, ids[i % len(ids)], 100 * S + i * S // 30)):
                pub.publish(msg)
        run = Running(node)                # the node catches up
        st = run.wait_status(lambda s: s["frames_received"] >= frames, 30)
        assert st is not None and st["frames_received"] == frames, node.status()
        assert st["frames_missed"] == 0, st
        # and /diagnostics says what each camera input delivered
        assert node.status()["inputs"] == (f"colour {frames}, depth {frames}, camera_info "
                                           f"{frames}; 0 unmatched")
    finally:
        if run is not None:
            run.close()
        else:
            node.destroy_node()
        camera.destroy_node()
