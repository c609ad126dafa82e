"""Relation queries, oriented boxes and support through /openmask3d/query from a client node, and
the oriented boxes RViz is sent (Detection3D and hit markers), on the room of test/room.py."""
import sys
from pathlib import Path

import numpy as np
import pytest
import rclpy

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # test/room.py

from room import room_engine  # noqa: E402

from openmask3d_ros.ros.client import OpenMask3DClient  # noqa: E402
from openmask3d_ros.ros.query_service import QuerySettings, served  # noqa: E402
from openmask3d_ros.ros.visualization import _boxes, _detections, _hit_markers  # noqa: E402


@pytest.fixture(scope="module")
def room_service():
    engine, names = room_engine()
    with served(engine, QuerySettings(min_relevance=0.55)) as server:
        planner = rclpy.create_node("planner", context=server.context)
        client = OpenMask3DClient(planner)
        assert client._query.wait_for_service(timeout_sec=10)
        yield engine, names, client
        client.destroy()
        planner.destroy_node()


def test_the_mug_on_the_table_through_the_service(room_service):
    engine, n, client = room_service
    reply = client.ask("the red mug on the brown table")
    assert reply.found and [i.id for i in reply.instances] == [n["mug_on_table"]]
    assert (reply.target, reply.relation, reply.reference) == ("red mug", "on", "brown table")
    hit = reply.instances[0]
    assert hit.reference_id == n["table"] and 0 < hit.relation_score <= 1
    assert hit.support_id == n["table"] and not hit.on_floor
    assert hit.height_above_floor == pytest.approx(0.75, abs=0.02)
    core = engine.ask("the red mug on the brown table").results[0]
    np.testing.assert_allclose(hit.box_center, core.box_center, atol=1e-6)
    np.testing.assert_allclose(hit.box_size, core.box_size, atol=1e-6)
    floor = client.ask("a red one on the grey floor")
    assert [i.id for i in floor.instances] == [n["mug_on_floor"]] and floor.instances[0].on_floor


def test_rotated_book_arrives_with_its_yaw(room_service):
    _, n, client = room_service
    book = client.ask("yellow", top_k=1).instances[0]
    assert book.id == n["book"] and book.reference_id == -1
    q = book.box_orientation
    assert np.degrees(2 * np.arctan2(q[2], q[3])) == pytest.approx(45, abs=2)
    np.testing.assert_allclose(sorted(book.box_size), [0.04, 0.2, 0.3], rtol=0.05)


def test_viewpoint_literal_and_absent_reference(room_service):
    _, n, client = room_service
    assert [i.id for i in client.ask("red left of the yellow").instances] == [n["mug_on_table"]]
    seen = client.ask("red left of the yellow", viewpoint=(4.0, 0.0, 1.5))
    assert [i.id for i in seen.instances] == [n["mug_on_floor"]]
    literal = client.ask("red on the brown table", top_k=10, literal=True)
    assert literal.relation == "" and n["table"] in [i.id for i in literal.instances]
    absent = client.ask("red on the purple sofa")
    assert not absent.found and "reference 'purple sofa'" in absent.message
    assert absent.reference == "purple sofa"
    refused = client.query_raw("the nearest red")
    assert not refused.success and "viewpoint" in refused.message


def test_rviz_gets_oriented_boxes(room_service):
    from std_msgs.msg import Header
    engine, n, _ = room_service
    results = engine.ask("yellow", top_k=1).results
    det = _detections(Header(frame_id="map"), "yellow", results, _boxes(results)).detections[0]
    q = det.bbox.center.orientation
    np.testing.assert_allclose([q.x, q.y, q.z, q.w], results[0].box_orientation, atol=1e-9)
    assert det.bbox.size.x == pytest.approx(results[0].box_size[0])
    cube = _hit_markers(Header(frame_id="map"), "yellow", _boxes(results)).markers[1]
    assert cube.pose.orientation.z == pytest.approx(results[0].box_orientation[2])
    assert abs(cube.pose.orientation.z) > 0.3          # 45 degrees: not the identity
