"""Oriented boxes, support and spatial-relation queries on a room whose answers are known
(test/room.py)."""
import numpy as np
import pytest

from openmask3d_ros.core.geometry import oriented_boxes
from openmask3d_ros.core.relations import parse_query
from room import cuboid, room_engine

@pytest.fixture(scope="module")
def room():
    return room_engine()


def ids(answer):
    return [r.instance_id for r in answer.results]


def test_rotated_objects_get_their_true_size_and_yaw():
    pts = cuboid((1, 2, 0.5), (0.6, 0.2, 0.1), yaw_deg=30, n=4000)
    boxes = oriented_boxes(pts, [np.arange(len(pts))])
    np.testing.assert_allclose(boxes.size[0], [0.6, 0.2, 0.1], rtol=0.03)
    assert abs(np.degrees(boxes.yaw()[0]) - 30) < 2
    np.testing.assert_allclose(boxes.center[0], [1, 2, 0.5], atol=0.01)
    # the axis-aligned box of the same object is much larger; a full 3D box also fits it
    assert np.prod(pts.max(0) - pts.min(0)) > 1.4 * np.prod(boxes.size[0])
    full = oriented_boxes(pts, [np.arange(len(pts))], mode="full")
    np.testing.assert_allclose(np.sort(full.size[0]), [0.1, 0.2, 0.6], rtol=0.03)


def test_another_up_axis_gives_the_same_box_in_its_frame():
    pts = cuboid((1, 2, 0.5), (0.6, 0.2, 0.1), yaw_deg=30, n=4000)
    y_up = pts[:, [0, 2, 1]] * [1, 1, -1]        # the same object in a y-up map
    boxes = oriented_boxes(y_up, [np.arange(len(pts))], up="+y")
    np.testing.assert_allclose(np.sort(boxes.size[0]), [0.1, 0.2, 0.6], rtol=0.03)
    np.testing.assert_allclose(boxes.rotation[0][:, 2], [0, 1, 0], atol=1e-9)


def test_every_instance_knows_what_it_rests_on(room):
    engine, n = room
    s = engine.placement.support
    assert s.support_id[n["mug_on_table"]] == n["table"]
    assert s.support_id[n["mug_on_floor"]] == n["floor"] and s.on_floor[n["mug_on_floor"]]
    assert s.support_id[n["ball_in_tray"]] == n["tray"]
    assert s.support_id[n["tray"]] == n["table"] and not s.on_floor[n["tray"]]
    assert s.height_above_floor[n["mug_on_table"]] == pytest.approx(0.75, abs=0.02)
    hit = engine.query("yellow", top_k=1)[0]
    assert hit.support_id == n["table"] and hit.contact_height == pytest.approx(0.75, abs=0.02)
    assert np.degrees(2 * np.arctan2(hit.box_orientation[2], hit.box_orientation[3])) \
        == pytest.approx(45, abs=2)


@pytest.mark.parametrize("text, expected", [
    ("the red mug on the brown table", "mug_on_table"),
    ("a red one on the grey floor", "mug_on_floor"),
    ("blue under the brown table", "box_under_table"),
    ("the green ball in the black tray", "ball_in_tray"),
    ("red near the yellow book", "mug_on_table"),
    ("red next to the blue", "mug_on_table"),
    ("red left of the yellow", "mug_on_table"),        # map frame: +y is left
    ("yellow right of the red", "book"),
    ("the smallest red", "mug_on_table"),
    ("the largest red", "mug_on_floor"),
])
def test_relations_pick_the_right_one_of_two(room, text, expected):
    engine, n = room
    answer = engine.ask(text, top_k=0)
    assert ids(answer)[:1] == [n[expected]], answer.message()
    assert answer.understood is not None and "understood as" in answer.message()
    if answer.understood.relation:
        assert all(r.reference_id >= 0 and 0 < r.relation_score <= 1 for r in answer.results)


def test_the_mug_on_the_table_is_not_the_table(room):
    engine, n = room
    answer = engine.ask("red on the brown table", top_k=0)
    assert ids(answer) == [n["mug_on_table"]] and answer.results[0].reference_id == n["table"]


def test_left_and_right_follow_a_viewpoint(room):
    engine, n = room
    # a viewer at +x looking back at the scene has the map's +y on their right
    view = np.array([4.0, 0.0, 1.5])
    assert ids(engine.ask("red right of the yellow", top_k=0, viewpoint=view)) == \
        [n["mug_on_table"]]
    assert ids(engine.ask("red left of the yellow", top_k=0, viewpoint=view)) == \
        [n["mug_on_floor"]]
    assert ids(engine.ask("red right of the yellow", top_k=0)) == [n["mug_on_floor"]]


def test_superlatives(room):
    engine, n = room
    assert ids(engine.ask("the largest object", top_k=1)) == [n["box_under_table"]]
    assert ids(engine.ask("the nearest red", top_k=1, viewpoint=[2, -1, 0])) == \
        [n["mug_on_floor"]]
    with pytest.raises(ValueError, match="viewpoint"):
        engine.ask("the nearest red")


def test_absent_parts_are_named(room):
    engine, _ = room
    answer = engine.ask("red on the purple sofa")
    assert not answer.found and "reference 'purple sofa'" in answer.message()
    answer = engine.ask("orange on the brown table")
    assert not answer.found and "target 'orange'" in answer.message()
    answer = engine.ask("green under the brown table")
    assert not answer.found and "no 'green' is under a 'brown table'" in answer.message()


def test_plain_queries_are_answered_as_before(room):
    engine, _ = room
    for text in ("red", "something to sit on", "a red mug", "green things"):
        assert parse_query(text) is None
        a, b = engine.ask(text, top_k=0), engine.ask(text, top_k=0, literal=True)
        assert a.to_dict() == b.to_dict() and a.understood is None
    # parsing can be turned off: the whole phrase goes to the encoder
    literal = engine.ask("red on the brown table", top_k=0, literal=True)
    assert literal.understood is None and len(literal.results) == 3    # and the table itself


@pytest.mark.parametrize("text, parsed", [
    ("the mug on top of the shelf", ("mug", "on", "shelf", None)),
    ("A chair next to the door.", ("chair", "near", "door", None)),
    ("the largest box under the table", ("box", "under", "table", "largest")),
    ("the biggest cup", ("cup", None, None, "largest")),
    ("a lamp to the left of the sofa", ("lamp", "left of", "sofa", None)),
])
def test_the_grammar(text, parsed):
    got = parse_query(text)
    assert (got.target, got.relation, got.reference, got.superlative) == parsed


@pytest.mark.parametrize("text", ["something to sit on", "a plant in front of the window",
                                  "on", "the largest", "mug"])
def test_texts_that_are_not_relations(text):
    assert parse_query(text) is None


@pytest.mark.parametrize("seed", [2, 5])
def test_rendered_twins_on_the_table_and_on_the_floor_are_told_apart(tmp_path, seed):
    """make-scene's floor_objects: a twin (same kind and colour) of a table object stands on
    the floor; "on the table" and "on the floor" each answer the right one."""
    import json

    from openmask3d_ros.core import SceneFolder, make_scene, open_map, run_pipeline
    scene = make_scene(tmp_path / "s", seed=seed, num_frames=60, width=192, height=144,
                       floor_objects=1)
    objects = json.loads((scene / "scene.json").read_text())["synthetic"]["objects"]
    on_table, on_floor = objects[0], objects[-1]
    assert on_floor["position"][2] == 0 and on_table["color"] == on_floor["color"]
    run_pipeline(scene)
    engine = open_map(scene)
    gt = SceneFolder(scene).ground_truth().instance_ids

    def truth(answer):
        return [int(np.bincount(gt[engine.map.point_indices[r.instance_id]]).argmax())
                for r in answer.results]

    # The colour stand-in scores the floor twin's crops (mostly floor around a small object) at
    # relevance 0.40-0.93 depending on the SAM prompt draws (seeds 0-7), the other objects at
    # <= 0.09: the default 0.55 falls inside the twin's range, so the relations are checked
    # among the objects above 0.25, between the two.
    colour, floor = on_table["color"], 0.25
    assert sorted(truth(engine.ask(colour, top_k=0, min_relevance=floor))) == [
        on_table["instance_id"], on_floor["instance_id"]]
    assert truth(engine.ask(f"{colour} on the brown table", top_k=0, min_relevance=floor)) == \
        [on_table["instance_id"]]
    floor_answer = engine.ask(f"the {colour} one on the floor", top_k=0, min_relevance=floor)
    assert truth(floor_answer) == [on_floor["instance_id"]]
    hit = floor_answer.results[0]
    assert hit.on_floor and abs(hit.height_above_floor) < 0.05
