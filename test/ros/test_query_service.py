"""QueryObjects v2 over DDS: relevance and `found`, image exemplars, point payload options.

A service node answers with ros/query_service.py on a map of a generated scene; the planner side
is OpenMask3DClient in another node (and executor thread).
"""
import cv2
import numpy as np
import pytest
import rclpy

pytest.importorskip("pybullet")

from openmask3d_ros.core.pipeline import run_pipeline  # noqa: E402
from openmask3d_ros.core.query import open_map  # noqa: E402
from openmask3d_ros.core.scene import SceneFolder  # noqa: E402
from openmask3d_ros.ros.client import OpenMask3DClient, OpenMask3DError  # noqa: E402
from openmask3d_ros.ros.query_service import QuerySettings, served  # noqa: E402
from openmask3d_ros.srv import QueryObjects  # noqa: E402

REQ = QueryObjects.Request
CAP = 40


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    from openmask3d_ros.core.synthetic import make_scene
    root = make_scene(tmp_path_factory.mktemp("qs"), seed=4, num_frames=40, width=256,
                      height=192)
    run_pipeline(root)
    engine = open_map(root)
    # the same map also with points capped per instance (parameter max_points_per_instance)
    with served(engine, QuerySettings(min_relevance=0.55)) as server, \
            served(engine, QuerySettings(min_relevance=0.55, max_points_per_instance=CAP),
                   node_name="capped", context=server.context):
        planner = rclpy.create_node("planner", context=server.context)
        client = OpenMask3DClient(planner)
        assert client._query.wait_for_service(timeout_sec=10)
        planner2 = rclpy.create_node("planner_capped", context=server.context)
        capped = OpenMask3DClient(planner2, namespace="/capped")
        assert capped._query.wait_for_service(timeout_sec=10)
        yield root, engine, client, capped
        capped.destroy()
        client.destroy()
        planner2.destroy_node()
        planner.destroy_node()


def test_absent_object_is_success_without_instances(service):
    _, _, client, _ = service
    for text in ("a mug", "purple", "x" * 10000):
        reply = client.ask(text)
        assert not reply.found and reply.instances == [], reply.message
        assert "best candidate" in reply.message and reply.best_id >= 0
        assert 0.0 <= reply.best_relevance < 0.55
        assert client.query(text) == []


def test_present_colour_found_with_relevance(service):
    root, engine, client, _ = service
    gt = SceneFolder(root).ground_truth()
    for info in gt.labels.values():
        if info["label"] in ("table", "floor"):
            continue
        reply = client.ask(info["color"])
        assert reply.found, reply.message
        top = reply.instances[0]
        assert top.relevance >= 0.55 and top.structure == "" and top.label == info["color"]
        assert top.points.shape == (top.num_points, 3)
        assert top.id == engine.ask(info["color"]).results[0].instance_id


def test_image_exemplar_over_the_service(service):
    root, engine, client, _ = service
    gt = SceneFolder(root).ground_truth()
    gid = next(g for g, i in gt.labels.items() if i["label"] not in ("table", "floor"))
    frame = max(range(40), key=lambda i: int((cv2.imread(
        str(root / "ground_truth" / "instance_masks" / f"{i}.png"),
        cv2.IMREAD_UNCHANGED) == gid).sum()))
    mask = cv2.imread(str(root / "ground_truth" / "instance_masks" / f"{frame}.png"),
                      cv2.IMREAD_UNCHANGED) == gid
    ys, xs = np.nonzero(mask)
    crop = SceneFolder(root).color(str(frame))[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    reply = client.ask(image=crop)
    assert reply.found, reply.message
    truth = np.flatnonzero(gt.instance_ids == gid)
    got = engine.map.point_indices[reply.instances[0].id]
    assert len(np.intersect1d(truth, got)) / len(np.union1d(truth, got)) >= 0.5
    assert reply.instances[0].label.startswith("image ")


def test_point_payload_options(service):
    _, engine, client, _ = service
    everything = dict(top_k=1000, min_relevance=0.0, include_structure=True)
    full = client.ask("red", **everything)
    idx = client.ask("red", points_mode=REQ.POINTS_INDICES, **everything)
    vox = client.ask("red", points_mode=REQ.POINTS_VOXEL, voxel_size=0.05, **everything)
    none = client.ask("red", points_mode=REQ.POINTS_NONE, **everything)
    assert len(full.instances) == int(engine.map.valid.sum())
    for f, i, v, n in zip(full.instances, idx.instances, vox.instances, none.instances):
        assert f.id == i.id == v.id == n.id and f.num_points == n.num_points
        np.testing.assert_array_equal(i.point_indices, engine.map.point_indices[f.id])
        assert len(i.points) == 0 and len(n.points) == 0 and len(n.point_indices) == 0
        np.testing.assert_allclose(engine.map.points[i.point_indices], f.points, atol=1e-6)
        assert 0 < len(v.points) <= len(f.points)
        assert np.all(v.points >= f.bbox_min - 1e-4) and np.all(v.points <= f.bbox_max + 1e-4)
    # a floor-sized instance shrinks a lot at 5 cm voxels
    big = max(full.instances, key=lambda i: i.num_points)
    assert len(next(v for v in vox.instances if v.id == big.id).points) < big.num_points / 5


def test_bad_requests_are_refused(service):
    _, _, client, _ = service
    for kwargs, word in ((dict(text="red", image=np.zeros((4, 4, 3), np.uint8)), "either"),
                         (dict(text="red", min_relevance=1.5), "min_relevance"),
                         (dict(text="red", points_mode=9), "points_mode"),
                         (dict(text=""), "empty")):
        resp = client.query_raw(kwargs.pop("text"), **kwargs)
        assert not resp.success and word in resp.message and not resp.instances
    with pytest.raises(OpenMask3DError, match="empty"):
        client.ask("   ")


def test_an_image_above_the_limit_is_refused_before_its_data_is_read(service):
    """F1 on the service: an image over pipeline.query.max_image_pixels (here 2500 pixels) is
    refused with its size and the limit, judged from width x height before the data is touched
    (a 20000 x 20000 claim with no data says so too); the server keeps answering."""
    from openmask3d_ros.core.config import PipelineConfig
    root, _, _, _ = service
    cfg = PipelineConfig().updated({"query": {"max_image_pixels": 2500}})
    with served(open_map(root, cfg), node_name="limited") as server:
        planner = rclpy.create_node("planner_limited", context=server.context)
        client = OpenMask3DClient(planner, namespace="/limited")
        assert client._query.wait_for_service(timeout_sec=10)
        try:
            resp = client.query_raw(image=np.full((60, 50, 3), 200, np.uint8))
            assert not resp.success and not resp.instances
            for needle in ("image", "50x60", "3,000 pixels", "2,500", "max_image_pixels"):
                assert needle in resp.message, resp.message
            claim = REQ()
            claim.image.width = claim.image.height = 20000
            claim.image.encoding = "rgb8"
            resp = client._call(client._query, claim, 10.0)
            assert not resp.success and "20000x20000" in resp.message, resp.message
            reply = client.ask(image=np.full((50, 50, 3), 200, np.uint8))   # within: answered
            assert reply.message.startswith("ok"), reply.message
        finally:
            client.destroy()
            planner.destroy_node()


def test_success_is_the_result_type_not_its_text():
    """An answer is a success and a QueryRefused a refusal, whatever their text says."""
    import logging

    from openmask3d_ros.core.query import QueryAnswer
    from openmask3d_ros.ros.query_service import QueryRefused, handle_query
    log = logging.getLogger("test")
    answer = QueryAnswer("not ok", [], None, 0.55, False)
    resp = handle_query(REQ(query="x"), QueryObjects.Response(), lambda rq, rs: answer, log)
    assert resp.success and resp.message.startswith(f"ok: {answer.message()} (")

    def refuse(rq, rs):
        raise QueryRefused("ok, but no")
    resp = handle_query(REQ(query="x"), QueryObjects.Response(), refuse, log)
    assert not resp.success and resp.message == "ok, but no"


def test_points_capped_per_instance_are_spread_over_the_instance(service):
    """max_points_per_instance keeps CAP points evenly spread over each larger instance (first
    and last included), in every points mode that carries points; smaller ones are whole."""
    _, engine, client, capped = service
    everything = dict(top_k=1000, min_relevance=0.0, include_structure=True)
    for mode, extra in ((REQ.POINTS_ALL, {}), (REQ.POINTS_VOXEL, {"voxel_size": 0.02})):
        full = client.ask("red", points_mode=mode, **everything, **extra)
        cut = capped.ask("red", points_mode=mode, **everything, **extra)
        assert [i.id for i in full.instances] == [i.id for i in cut.instances]
        assert any(len(f.points) > CAP for f in full.instances)
        for f, c in zip(full.instances, cut.instances):
            assert c.num_points == f.num_points == len(engine.map.point_indices[f.id])
            n = len(f.points)
            if n <= CAP:
                np.testing.assert_array_equal(c.points, f.points)
                continue
            assert len(c.points) == CAP
            keep = np.arange(CAP) * (n - 1) // (CAP - 1)
            np.testing.assert_array_equal(c.points, f.points[keep])
