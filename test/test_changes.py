"""What changed between two maps (core/changes.py): moved objects with their displacement,
removed and added ones, and stable ids for the unchanged and moved, on maps built directly and
through the pipeline."""
import json

import numpy as np
import pytest

from openmask3d_ros.core import map_versions
from openmask3d_ros.core.changes import compare_maps, stable_ids
from openmask3d_ros.core.config import ChangesConfig, PipelineConfig
from openmask3d_ros.core.instance_map import InstanceMap
from openmask3d_ros.core.map_meta import InstanceRecord, MapMeta
from openmask3d_ros.core.pipeline import run_pipeline
from openmask3d_ros.core.scene import SceneFolder
from openmask3d_ros.core.synthetic import make_scene


def _box(rng, centre, size, n=800):
    """Points on the surface of an axis-aligned box (a scanned object)."""
    size = np.asarray(size, float)
    p = rng.uniform(0, 1, (n, 3)) * size
    face = rng.integers(0, 3, n)
    p[np.arange(n), face] = size[face] * (rng.random(n) < 0.5)
    return p + np.asarray(centre) - size / 2


def _map(parts, features, ids=None, shuffle_seed=None):
    """An InstanceMap of point sets (one instance each), optionally with the cloud's points in
    another order (another build's cloud) and recorded stable ids."""
    points = np.concatenate(parts).astype(np.float32)
    owner = np.repeat(np.arange(len(parts)), [len(p) for p in parts])
    order = np.arange(len(points))
    if shuffle_seed is not None:
        order = np.random.default_rng(shuffle_seed).permutation(len(points))
    points, owner = points[order], owner[order]
    indices = [np.flatnonzero(owner == m) for m in range(len(parts))]
    meta = MapMeta(instances=[InstanceRecord(stable_id=None if ids is None else int(i))
                              for i in (ids if ids is not None else range(len(parts)))])
    if ids is not None:
        meta.next_stable_id = int(max(ids)) + 1
    return InstanceMap(points, indices, np.asarray(features, np.float32), meta)


@pytest.fixture
def room():
    """Five objects of distinct sizes and features; a floor."""
    rng = np.random.default_rng(0)
    centres = [(0.5, 0.5, 0.2), (1.5, 0.4, 0.15), (2.5, 1.5, 0.3), (0.8, 2.2, 0.1),
               (2.0, 2.6, 0.25)]
    sizes = [(0.3, 0.2, 0.4), (0.2, 0.2, 0.3), (0.5, 0.4, 0.6), (0.15, 0.3, 0.2),
             (0.4, 0.4, 0.5)]
    objects = [_box(rng, c, s) for c, s in zip(centres, sizes)]
    floor = np.c_[rng.uniform(0, 3, 6000), rng.uniform(0, 3, 6000), np.zeros(6000)]
    feats = np.eye(8)[:6] + 0.1        # distinct, positive cosines between different objects
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    return rng, objects, floor, feats


def test_moved_removed_added_and_unchanged(room):
    rng, objects, floor, feats = room
    prev = _map([floor, *objects], feats, ids=[10, 11, 12, 13, 14, 15])
    shift = np.array([0.6, -0.25, 0.0])
    jitter = [o + rng.normal(0, 0.003, o.shape) for o in objects]      # a re-optimised cloud
    new_obj = _box(rng, (2.6, 0.4, 0.1), (0.25, 0.25, 0.2))
    # object 1 moved, object 3 removed, one object added; new order of instances and points
    parts = [jitter[4], floor, jitter[1] + shift, jitter[0], new_obj, jitter[2]]
    f_new = feats[[5, 0, 2, 1]].tolist() + [np.eye(8)[7].tolist()] + [feats[3].tolist()]
    new = _map(parts, f_new, shuffle_seed=1)

    ch = compare_maps(prev, new, ChangesConfig())
    assert [(e.previous_index, e.index) for e in ch.moved] == [(2, 2)]
    moved = ch.moved[0]
    np.testing.assert_allclose(moved.displacement, shift, atol=0.01)
    assert moved.distance == pytest.approx(np.linalg.norm(shift), abs=0.01)
    assert moved.id == 12                                 # keeps its id while it moves
    assert [(e.id, e.previous_index) for e in ch.removed] == [(14, 4)]
    assert [(e.index, e.id) for e in ch.added] == [(4, 16)]          # a fresh id
    assert {(e.previous_index, e.index, e.id) for e in ch.unchanged} == {
        (0, 1, 10), (1, 3, 11), (3, 5, 13), (5, 0, 15)}
    assert ch.stable_ids.tolist() == [15, 10, 12, 11, 16, 13] and ch.next_stable_id == 17
    # every instance of both maps in exactly one entry
    assert sorted(e.index for e in ch.entries if e.index is not None) == list(range(6))
    assert sorted(e.previous_index for e in ch.entries
                  if e.previous_index is not None) == list(range(6))
    rec = ch.to_record()
    assert rec.summary() == "1 added, 1 removed, 1 moved, 4 unchanged"
    assert rec.moved[0]["displacement"] == moved.displacement and "kind" not in rec.moved[0]


def test_a_feature_change_in_place_is_removed_and_added(room):
    """The same footprint with another object's feature is not the same object."""
    _, objects, floor, feats = room
    prev = _map([floor, *objects], feats)
    other = feats.copy()
    other[2] = np.eye(8)[7]
    ch = compare_maps(prev, _map([floor, *objects], other), ChangesConfig(min_similarity=0.75))
    assert [e.previous_index for e in ch.removed] == [2] and [e.index for e in ch.added] == [2]
    assert len(ch.unchanged) == 5 and ch.added[0].id == 6


def test_a_small_shift_is_unchanged_and_a_grown_instance_still_matches(room):
    rng, objects, floor, feats = room
    prev = _map([floor, *objects], feats)
    grown = [floor, *objects]
    grown[1] = objects[0] + np.array([0.02, 0.0, 0.0])                    # below min_move
    grown[3] = np.concatenate([objects[2], _box(rng, (2.5, 1.5, 0.75), (0.5, 0.4, 0.3))])
    ch = compare_maps(prev, _map(grown, feats), ChangesConfig())
    assert len(ch.unchanged) == 6 and not ch.moved and not ch.added and not ch.removed
    assert ch.stable_ids.tolist() == list(range(6))


def test_moved_object_of_a_rendered_scene(tmp_path):
    """make_scene's fused cloud and ground truth: one object's points moved, one removed."""
    root = make_scene(tmp_path / "scene", seed=2, num_frames=6, width=96, height=72)
    scene = SceneFolder(root)
    points, _ = scene.cloud()
    gt = scene.ground_truth()
    ids = [i for i in sorted(gt.labels) if (gt.instance_ids == i).sum() >= 50]
    rng = np.random.default_rng(3)
    feats = rng.normal(size=(len(ids), 16))
    prev = _map([points[gt.instance_ids == i] for i in ids], feats)
    objects = [k for k, i in enumerate(ids) if gt.labels[i]["label"] not in ("table", "floor")]
    mover, gone = objects[0], objects[1]
    shift = np.array([0.0, 0.35, 0.0])
    parts = [points[gt.instance_ids == i] + (shift if k == mover else 0.0)
             for k, i in enumerate(ids) if k != gone]
    new = _map(parts, np.delete(feats, gone, axis=0), shuffle_seed=0)
    ch = compare_maps(prev, new, ChangesConfig())
    assert [e.previous_index for e in ch.moved] == [mover]
    np.testing.assert_allclose(ch.moved[0].displacement, shift, atol=0.01)
    assert [e.previous_index for e in ch.removed] == [gone] and not ch.added
    kept = [k for k in range(len(ids)) if k not in (gone,)]
    assert ch.stable_ids.tolist() == kept                # ids follow the instances, not indices


def _gen_meta(map_dir):
    return json.loads((map_versions.current(map_dir) / "meta.json").read_text())


def test_pipeline_records_changes_and_stable_ids(tmp_path):
    """Three builds on one map folder: unchanged; one object removed from the cloud; back
    again (a fresh id: ids are never reused)."""
    root = make_scene(tmp_path / "scene", seed=1, num_frames=6, width=96, height=72)
    scene = SceneFolder(root)
    points, colors = scene.cloud()
    gt = scene.ground_truth()
    ids = [i for i in sorted(gt.labels) if (gt.instance_ids == i).sum() >= 50]
    masks = np.stack([gt.instance_ids == i for i in ids], axis=1)
    cfg = PipelineConfig().updated({"frame_step": 2})
    first = run_pipeline(root, cfg, masks=masks)
    assert first.meta.changes is None
    assert stable_ids(first).tolist() == list(range(len(ids)))
    again = run_pipeline(root, cfg, masks=masks)
    ch = again.meta.changes
    assert ch.previous == first.meta.generation and ch.summary() == \
        f"0 added, 0 removed, 0 moved, {len(ids)} unchanged"

    gone = next(k for k, i in enumerate(ids) if gt.labels[i]["label"] not in ("table", "floor"))
    keep = ~masks[:, gone]
    third = run_pipeline(root, cfg, masks=np.delete(masks[keep], gone, axis=1),
                         cloud=(points[keep], colors[keep]))
    ch = third.meta.changes
    assert [r["id"] for r in ch.removed] == [gone] and not ch.added and not ch.moved
    expected = [k for k in range(len(ids)) if k != gone]
    assert stable_ids(third).tolist() == expected
    stored = _gen_meta(root / "openmask3d")
    assert [r["id"] for r in stored["changes"]["removed"]] == [gone]
    assert [i["stable_id"] for i in stored["instances"]] == expected
    assert stored["next_stable_id"] == len(ids)

    fourth = run_pipeline(root, cfg, masks=masks)
    ch = fourth.meta.changes
    assert [(a["index"], a["id"]) for a in ch.added] == [(gone, len(ids))]
    assert stable_ids(fourth)[gone] == len(ids) and fourth.meta.next_stable_id == len(ids) + 1


def test_changes_off_and_unreadable_previous_map(tmp_path, caplog):
    root = make_scene(tmp_path / "scene", seed=1, num_frames=4, width=96, height=72)
    cfg = PipelineConfig().updated({"frame_step": 2})
    run_pipeline(root, cfg)
    off = run_pipeline(root, cfg.updated({"changes.enabled": False}))
    assert off.meta.changes is None and stable_ids(off).tolist() == list(range(off.num_instances))
    gen = map_versions.current(root / "openmask3d")
    (gen / "instances.npz").write_bytes(b"damaged")
    again = run_pipeline(root, cfg)
    assert again.meta.changes is None and "no change report" in caplog.text
