"""The evaluation metric against hand-computed cases, class assignment, ground truth and the CLI.

Expected values follow the ScanNet benchmark script: thresholds 0.50..0.90 (nine, the script's
``np.arange(0.5, 0.95, 0.05)``) plus 0.25, a match needs IoU > threshold, and the precision-recall
curve is integrated with the script's central-difference step widths.
"""
import json
import math

import numpy as np
import pytest

from openmask3d_ros.cli import main
from openmask3d_ros.core.evaluation import (OVERLAPS, assign_classes, evaluate, evaluate_scenes,
                                            format_table, load_scannet_ground_truth,
                                            match_scene, read_class_list, read_label_map,
                                            read_splits)
from openmask3d_ros.core.evaluation.ap import _average_precision
from openmask3d_ros.core.evaluation.ground_truth import gt_classes
from openmask3d_ros.core.evaluation.runner import EvalScene, find_scenes
from openmask3d_ros.core.instance_map import InstanceMap
from openmask3d_ros.core.map_meta import InstanceRecord, MapMeta
from openmask3d_ros.core.scene import SceneWriter, write_ply

P = 2000


def gt_two_objects():
    """GT ids: instance 1 on points 0..199, instance 2 on 500..699, both class 'a'."""
    ids = np.zeros(P, dtype=np.int64)
    ids[:200] = 1
    ids[500:700] = 2
    return ids, {1: "a", 2: "a"}


def run(ids, labels, preds, classes=("a",), **kw):
    """preds: list of (indices, label, score)."""
    m = match_scene(ids, labels, [np.asarray(p[0]) for p in preds], [p[1] for p in preds],
                    [p[2] for p in preds], list(classes), **kw)
    return evaluate([m], list(classes), **({"min_region_size": kw["min_region_size"]}
                                           if "min_region_size" in kw else {}))


def test_overlaps_are_the_benchmarks():
    """The evaluator scores at the benchmark's overlaps (0.50..0.90, then 0.25), IoU strictly
    above each: two predictions whose IoUs fall between them, AP worked out by hand."""
    np.testing.assert_allclose(OVERLAPS, [0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.25])
    ids, labels = gt_two_objects()
    # A: 130 of GT 1's 200 points + 50 void, IoU 130 / 250 = 0.52 (matches at 0.50, not 0.55)
    # B: 120 of GT 2's 200 points + 80 void, IoU 120 / 280 = 0.43 (matches at 0.25 only), scored
    # higher than A
    a = np.concatenate([np.arange(130), np.arange(1000, 1050)])
    b = np.concatenate([np.arange(500, 620), np.arange(1100, 1180)])
    r = run(ids, labels, [(a, "a", 0.4), (b, "a", 0.9)])
    # 0.50: B (0.9) is a false positive (void 80/200 <= 0.5), A (0.4) a true positive, GT 2
    # missed. Curve points (precision, recall): (1/2, 1/2) at 0.4, (0, 0) at 0.9, closed with
    # (1, 0); step widths 1/4, 1/4, 0 -> AP50 = 1/2 * 1/4 = 0.125.
    # 0.55 .. 0.90: no true positive -> 0. 0.25: both true positives -> 1.
    expected = [0.125, 0, 0, 0, 0, 0, 0, 0, 0, 1.0]
    np.testing.assert_allclose(r.ap_table[0], expected)
    assert (r.ap50, r.ap25) == (0.125, 1.0)
    assert r.ap == pytest.approx(0.125 / 9)             # the mean over 0.50..0.90 only


def test_perfect_prediction_gives_one_at_every_threshold():
    ids, labels = gt_two_objects()
    r = run(ids, labels, [(np.arange(200), "a", 0.9), (np.arange(500, 700), "a", 0.3)])
    np.testing.assert_array_equal(r.ap_table, np.ones((1, 10)))
    assert (r.ap, r.ap50, r.ap25) == (1.0, 1.0, 1.0)
    assert r.class_ap("a") == {"ap": 1.0, "ap50": 1.0, "ap25": 1.0}


def test_scores_default_to_any_constant():
    ids, labels = gt_two_objects()
    r = run(ids, labels, [(np.arange(200), "a", 1.0), (np.arange(500, 700), "a", 1.0)])
    assert r.ap == 1.0


def test_shifted_mask_matches_up_to_its_iou():
    # GT 200 points; prediction covers 175 of them plus 80 void points: IoU = 175 / 280 = 0.625.
    ids, labels = gt_two_objects()
    pred = np.concatenate([np.arange(25, 200), np.arange(1000, 1080)])
    r = run(ids, {1: "a"}, [(pred, "a", 1.0)])
    expected = [1, 1, 1, 0, 0, 0, 0, 0, 0, 1]      # 0.50 0.55 0.60 match; 0.65+ do not; 0.25 does
    np.testing.assert_array_equal(r.ap_table[0], expected)
    assert r.ap50 == 1.0 and r.ap25 == 1.0
    assert r.at(0.65) == 0.0 and r.at(0.9) == 0.0
    assert r.ap == pytest.approx(3 / 9)


def test_match_needs_iou_strictly_above_threshold():
    # IoU exactly 0.6: 150 of 200 GT points + 50 void points -> 150 / 250.
    ids, _ = gt_two_objects()
    pred = np.concatenate([np.arange(50, 200), np.arange(1000, 1050)])
    r = run(ids, {1: "a"}, [(pred, "a", 1.0)])
    np.testing.assert_array_equal(r.ap_table[0], [1, 1, 0, 0, 0, 0, 0, 0, 0, 1])
    assert r.ap == pytest.approx(2 / 9)


def test_duplicate_is_a_false_positive():
    ids, labels = gt_two_objects()
    # A duplicate of object 1 ranked between the two true positives. Sorted by score:
    # TP (0.9), FP (0.8), TP (0.7). Curve points (p, r): (2/3, 1), (1/2, 1/2), (1, 1/2), closed
    # with (1, 0); step widths 1/4 each -> AP = (2/3 + 1/2 + 1 + 1) / 4 = 19/24.
    preds = [(np.arange(200), "a", 0.9), (np.arange(200), "a", 0.8),
             (np.arange(500, 700), "a", 0.7)]
    r = run(ids, labels, preds)
    np.testing.assert_allclose(r.ap_table[0], np.full(10, 19 / 24))
    # The lower-scored copy is the false positive even when it comes first.
    r2 = run(ids, labels, [preds[1], preds[0], preds[2]])
    np.testing.assert_allclose(r2.ap_table, r.ap_table)


def test_duplicate_below_every_true_positive_costs_nothing():
    ids, labels = gt_two_objects()
    r = run(ids, labels, [(np.arange(200), "a", 0.9), (np.arange(500, 700), "a", 0.8),
                          (np.arange(200), "a", 0.1)])
    assert r.ap == 1.0


def test_false_positive_ranked_first():
    # Curve (p, r): (1/2, 1), (0, 0), closed with (1, 0): AP = 1/2 * 1/2 = 0.25 by the script's
    # integration (a plain step integral would give 0.5).
    ids = np.zeros(P, dtype=np.int64)
    ids[:200] = 1
    ids[500:700] = 2                                  # class 'b': evaluated, so not void
    r = run(ids, {1: "a", 2: "b"}, [(np.arange(200), "a", 0.5),
                                    (np.arange(500, 700), "a", 0.9)], classes=("a", "b"))
    assert r.class_ap("a")["ap"] == pytest.approx(0.25)
    assert math.isnan(r.class_ap("b")["ap"]) is False and r.class_ap("b")["ap"] == 0.0
    assert r.ap == pytest.approx(0.125)


def test_missed_instance_halves_recall():
    ids, labels = gt_two_objects()
    r = run(ids, labels, [(np.arange(200), "a", 1.0)])
    # (p, r) = (1, 1/2), closed with (1, 0): step widths 1/4 + 1/4 -> 0.5
    assert r.ap == pytest.approx(0.5)


def test_no_prediction_is_zero_and_no_gt_is_nan():
    ids, labels = gt_two_objects()
    r = run(ids, labels, [], classes=("a", "b"))
    assert r.class_ap("a")["ap"] == 0.0
    assert math.isnan(r.class_ap("b")["ap"])
    assert r.ap == 0.0                                # NaN class skipped in the mean


def test_small_ground_truth_is_ignored():
    ids, labels = gt_two_objects()
    ids[1500:1550] = 3                                # 50 points: below the 100-point limit
    labels[3] = "a"
    preds = [(np.arange(200), "a", 0.5), (np.arange(500, 700), "a", 0.5)]
    # Not predicted: not a false negative.
    assert run(ids, labels, preds).ap == 1.0
    # Predicted with a high score (here with 110 points, 50 on the small GT and 60 void): the
    # prediction lies on ignored ground truth, so it is not a false positive either.
    small = np.arange(1500, 1610)
    assert run(ids, labels, preds + [(small, "a", 0.99)]).ap == 1.0
    # With the limit lowered to 10 points the small instance counts and is matched.
    r = run(ids, labels, preds + [(np.arange(1500, 1550), "a", 0.99)], min_region_size=10)
    assert r.ap == 1.0
    r = run(ids, labels, preds, min_region_size=10)
    assert r.ap < 1.0


def test_small_predictions_are_dropped():
    ids, labels = gt_two_objects()
    preds = [(np.arange(200), "a", 0.5), (np.arange(500, 700), "a", 0.5)]
    r = run(ids, labels, preds + [(np.arange(900, 999), "a", 0.9)])   # 99 points
    assert r.ap == 1.0
    ids[900:1100] = 5                                # an evaluated instance of class 'b'
    labels[5] = "b"
    r = run(ids, labels, preds + [(np.arange(900, 999), "a", 0.9)], classes=("a", "b"))
    assert r.class_ap("a")["ap"] == 1.0
    r = run(ids, labels, preds + [(np.arange(900, 1000), "a", 0.9)], classes=("a", "b"))
    assert r.class_ap("a")["ap"] == pytest.approx(1 / 3)    # 100 points: a false positive


def test_unmatched_prediction_on_void_is_not_a_false_positive():
    ids, labels = gt_two_objects()
    preds = [(np.arange(200), "a", 0.5), (np.arange(500, 700), "a", 0.5)]
    assert run(ids, labels, preds + [(np.arange(1000, 1300), "a", 0.9)]).ap == 1.0
    # Instances of classes that are not evaluated are void too.
    ids[1000:1300] = 9
    labels[9] = "wall"
    assert run(ids, labels, preds + [(np.arange(1000, 1300), "a", 0.9)]).ap == 1.0
    # 90 points on object 2 (IoU 90 / 430 < 0.25: no match) and 230 on void (72%): ignored at
    # thresholds >= 0.72, a false positive above. With it: TP .5, TP .5, FP .9 -> AP 1/3.
    pred = np.concatenate([np.arange(610, 700), np.arange(1000, 1230)])
    r = run(ids, labels, preds + [(pred, "a", 0.9)])
    np.testing.assert_allclose(r.ap_table[0], [1, 1, 1, 1, 1] + [1 / 3] * 4 + [1])


def test_scenes_are_accumulated_before_ap():
    ids, labels = gt_two_objects()
    one = {1: "a"}
    a = match_scene(ids, one, [np.arange(200)], ["a"], [0.7], ["a"], name="A")
    ids_b = ids.copy()
    ids_b[500:700] = 2
    b = match_scene(ids_b, {1: "a", 2: "b"}, [np.arange(200), np.arange(500, 700)], ["a", "a"],
                    [0.9, 0.8], ["a", "b"], name="B")
    # Per scene: A = 1, B = 1 (its FP ranks below its TP). Together: TP .9, FP .8, TP .7.
    assert evaluate([a], ["a"]).ap == 1.0
    assert evaluate([b], ["a", "b"]).class_ap("a")["ap"] == 1.0
    assert evaluate([a, b], ["a", "b"]).class_ap("a")["ap"] == pytest.approx(19 / 24)


def test_splits_average_their_classes():
    ids = np.zeros(P, dtype=np.int64)
    ids[:200], ids[500:700], ids[1000:1200] = 1, 2, 3
    labels = {1: "a", 2: "b", 3: "c"}
    m = match_scene(ids, labels, [np.arange(200), np.arange(500, 700)], ["a", "b"], [1.0, 1.0],
                    ["a", "b", "c"])
    r = evaluate([m], ["a", "b", "c"], splits={"head": ["a", "b"], "tail": ["c", "zzz"]})
    assert r.mean(r.splits["head"])["ap"] == 1.0
    assert r.mean(r.splits["tail"])["ap"] == 0.0
    assert r.ap == pytest.approx(2 / 3)
    d = r.to_dict()
    assert d["splits"]["head"]["ap50"] == 1.0 and d["per_class"]["c"]["ap25"] == 0.0
    text = format_table(r, "t")
    assert "head" in text and "average" in text


def test_average_precision_edge_cases():
    # All predictions ignored: nothing to rank, AP 0 (ScanNet PR #26 guard).
    assert _average_precision(np.zeros(0), np.zeros(0), hard_fn=2) == 0.0
    assert _average_precision(np.array([1.0]), np.array([0.3]), hard_fn=0) == 1.0


def test_mask_index_out_of_range_is_an_error():
    ids, labels = gt_two_objects()
    with pytest.raises(ValueError, match="indexes point"):
        match_scene(ids, labels, [np.arange(P - 10, P + 200)], ["a"], [1.0], ["a"])


# -- open-vocabulary assignment ---------------------------------------------------------------
class FakeText:
    """A text encoder with fixed vectors per prompt."""

    name = "fake-text"
    dim = 4
    vectors = {"mug": [1, 0, 0, 0], "chair": [0, 1, 0, 0], "lamp": [0, 0, 1, 0],
               "wall": [0, 0, 0, 1]}

    def __init__(self):
        self.seen = []

    def encode_text(self, texts):
        self.seen.extend(texts)
        out = []
        for t in texts:
            word = t.removeprefix("a ").removesuffix(" in a scene")
            out.append(self.vectors[word])
        return np.asarray(out, dtype=np.float32)


def test_assignment_picks_the_closest_class():
    enc = FakeText()
    feats = np.array([[0.9, 0.1, 0.0, 0], [0.1, 0.2, 0.97, 0], [0, 0, 0, 0], [0.2, 0.9, 0.1, 0]],
                     dtype=np.float32)
    a = assign_classes(feats, ["mug", "chair", "lamp"], enc)
    assert enc.seen == ["a mug in a scene", "a chair in a scene", "a lamp in a scene"]
    assert a.class_index.tolist() == [0, 2, -1, 1]
    assert a.labels(["mug", "chair", "lamp"]) == ["mug", "lamp", None, "chair"]
    unit = feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)
    np.testing.assert_allclose(a.similarity, [unit[0, 0], unit[1, 2], 0.0, unit[3, 1]], rtol=1e-6)


def test_assignment_rejects_a_foreign_feature_space():
    with pytest.raises(ValueError, match="dimension"):
        assign_classes(np.ones((2, 5), np.float32), ["mug"], FakeText())


def _scene(features, indices, gt_labels, name="s"):
    ids = np.zeros(P, dtype=np.int64)
    ids[:200], ids[500:700], ids[1000:1200] = 1, 2, 3
    imap = InstanceMap(np.zeros((P, 3), np.float32), [np.asarray(i) for i in indices],
                       np.asarray(features, np.float32), {})
    return EvalScene(name, ids, gt_labels, imap)


def test_evaluate_scenes_both_modes():
    gt = {1: "mug", 2: "chair", 3: "wall"}
    # Mask 3 is assigned 'wall' (excluded: dropped); mask 4, assigned 'lamp', lies on the wall,
    # whose points are void once wall is excluded: ignored.
    s = _scene([[1, 0, 0, 0], [0.2, 1, 0, 0], [0, 0, 0, 1], [0, 0, 1, 0]],
               [np.arange(200), np.arange(500, 700), np.arange(1000, 1200),
                np.arange(1000, 1150)], gt)
    rep = evaluate_scenes([s], classes=["mug", "chair", "lamp", "wall"], exclude=["wall"],
                          text_encoder=FakeText())
    assert rep.classes == ["mug", "chair", "lamp"]
    ag = rep.results["agnostic"]
    assert ag.classes == ["object"] and ag.ap == 1.0   # wall excluded -> void, its mask ignored
    ov = rep.results["open-vocab"]
    assert ov.class_ap("mug")["ap"] == 1.0 and ov.class_ap("chair")["ap"] == 1.0
    assert math.isnan(ov.class_ap("lamp")["ap"])       # no lamp in the ground truth
    assert ov.ap == 1.0
    # Without the exclusion the wall is a class: mask 3 matches it, the 'lamp' mask is an FP
    # of a class without GT (NaN), so AP stays 1.
    rep = evaluate_scenes([s], classes=["mug", "chair", "lamp", "wall"], text_encoder=FakeText())
    assert rep.results["open-vocab"].class_ap("wall")["ap"] == 1.0


@pytest.mark.parametrize("scores, ap, source", [
    ([0.1, 0.9, 0.8], 1.0, "proposal_score"),        # Mask3D ranks the stray mask last
    ([0.9, 0.2, 0.1], 5 / 12, "proposal_score"),     # ... or first: its scores decide
    ([None, None, None], 5 / 6, "uniform"),           # unscored masks: 1.0 each (the paper)
])
def test_class_agnostic_ap_ranks_masks_by_their_proposal_score(scores, ap, source, tmp_path):
    """Mask3D's own protocol: masks ranked by the proposal_score the map stores, read back from
    the saved map; maps without scores are ranked uniformly, and the report says which."""
    ids = np.zeros(P, dtype=np.int64)
    ids[:200], ids[500:700] = 1, 2
    stray = np.r_[np.arange(60), np.arange(500, 560), np.arange(1000, 1100)]   # IoU < 0.25
    meta = MapMeta(instances=[InstanceRecord(proposal_score=s) for s in scores])
    InstanceMap(np.random.default_rng(0).random((P, 3), dtype=np.float32),
                [stray, np.arange(200), np.arange(500, 700)], np.eye(3, 4, dtype=np.float32),
                meta).save(tmp_path / "map")
    scene = EvalScene("s", ids, {1: "a", 2: "a"}, InstanceMap.load(tmp_path / "map"))
    rep = evaluate_scenes([scene], modes=["agnostic"], classes=["a"])
    assert rep.results["agnostic"].ap == pytest.approx(ap)
    assert rep.agnostic_scores == source == rep.to_dict()["agnostic_scores"]


def test_evaluate_scenes_wrong_class_is_penalised():
    gt = {1: "mug", 2: "chair"}
    s = _scene([[1, 0, 0, 0], [1, 0, 0, 0]], [np.arange(200), np.arange(500, 700)], gt)
    rep = evaluate_scenes([s], modes=["open-vocab"], text_encoder=FakeText())
    assert rep.classes == ["chair", "mug"]             # default: the GT classes, sorted
    ov = rep.results["open-vocab"]
    assert ov.class_ap("chair")["ap"] == 0.0
    assert ov.class_ap("mug")["ap50"] < 1.0            # the chair mask is a false positive 'mug'
    with pytest.raises(ValueError, match="score"):
        evaluate_scenes([s], text_encoder=FakeText(), score="x")


# -- ground truth and class files -------------------------------------------------------------
def test_scannet_ground_truth(tmp_path):
    pts = np.random.default_rng(0).random((12, 3)).astype(np.float32)
    write_ply(tmp_path / "scene0000_00_vh_clean_2.ply", pts, np.zeros((12, 3), np.uint8))
    seg = [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    (tmp_path / "scene0000_00_vh_clean_2.0.010000.segs.json").write_text(
        json.dumps({"sceneId": "scene0000_00", "segIndices": seg}))
    (tmp_path / "scene0000_00.aggregation.json").write_text(json.dumps({"segGroups": [
        {"id": 0, "objectId": 0, "segments": [0, 2], "label": "office chair"},
        {"id": 1, "objectId": 1, "segments": [3], "label": "trash can"},
    ]}))
    gt = load_scannet_ground_truth(tmp_path)
    assert gt.instance_ids.tolist() == [1, 1, 0, 0, 1, 1, 2, 2, 0, 0, 0, 0]
    assert gt.labels[1]["label"] == "office chair" and gt.labels[2]["label"] == "trash can"
    tsv = tmp_path / "labels.tsv"
    tsv.write_text("id\traw_category\tcategory\tnyu40id\n1\toffice chair\tchair\t5\n")
    mapping = read_label_map(tsv)
    gt = load_scannet_ground_truth(tmp_path, mapping)
    assert gt.labels[1]["label"] == "chair" and gt.labels[2]["label"] == "trash can"
    assert read_label_map(tsv, target="id") == {"office chair": "1"}
    # Raw categories mapped to an empty name are unannotated.
    gt = load_scannet_ground_truth(tmp_path, {"office chair": ""})
    assert gt_classes(gt) == {1: None, 2: "trash can"}


def test_class_list_and_splits_files(tmp_path):
    f = tmp_path / "classes.txt"
    f.write_text("# ScanNet200\nchair\n\ntable  \nchair\ntrash can # comment\n")
    assert read_class_list(f) == ["chair", "table", "trash can"]
    j = tmp_path / "s.json"
    j.write_text(json.dumps({"head": ["chair"], "common": ["table"], "tail": ["trash can"]}))
    assert read_splits(j)["tail"] == ["trash can"]
    y = tmp_path / "s.yaml"
    y.write_text("head: [chair]\ncommon:\n  - table\ntail: []\n")
    assert read_splits(y) == {"head": ["chair"], "common": ["table"], "tail": []}
    y.write_text("head: chair\n")
    with pytest.raises(ValueError):
        read_splits(y)


# -- CLI --------------------------------------------------------------------------------------
def _write_scene(root, shift=0):
    """A scene folder with a cloud, ground truth and a saved map (colour stand-in config)."""
    from openmask3d_ros.core.config import PipelineConfig
    from openmask3d_ros.core.encoders.colour import ColourEncoder

    w = SceneWriter(root)
    w.write_cloud(np.random.default_rng(1).random((P, 3)).astype(np.float32),
                  np.zeros((P, 3), np.uint8))
    ids = np.zeros(P, dtype=np.int32)
    ids[:200], ids[500:700] = 1, 2
    w.write_ground_truth(ids, {1: {"label": "mug", "color": "red"},
                               2: {"label": "box", "color": "blue"}})
    enc = ColourEncoder()
    feats = enc.encode_text(["red", "blue"])
    imap = InstanceMap(np.zeros((P, 3), np.float32),
                       [np.arange(shift, 200 + shift), np.arange(500, 700)], feats,
                       {"config": PipelineConfig().to_dict(),
                        "models": {"text_encoder": enc.name}})
    imap.save(root / "openmask3d")
    return root


def test_cli_eval_scene_and_directory(tmp_path, capsys):
    _write_scene(tmp_path / "scenes" / "s1")
    _write_scene(tmp_path / "scenes" / "s2", shift=60)     # IoU 140/260 = 0.54 for object 1
    assert main(["eval", str(tmp_path / "scenes" / "s1"), "--label-key", "color", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["results"]["agnostic"]["ap"] == 1.0
    assert out["results"]["open-vocab"]["ap50"] == 1.0
    assert out["classes"] == ["blue", "red"]

    assert find_scenes(tmp_path / "scenes") == [tmp_path / "scenes" / "s1",
                                                tmp_path / "scenes" / "s2"]
    splits = tmp_path / "splits.json"
    splits.write_text(json.dumps({"head": ["red"], "tail": ["blue"]}))
    assert main(["eval", str(tmp_path / "scenes"), "--label-key", "color", "--splits",
                 str(splits), "--per-class"]) == 0
    text = capsys.readouterr().out
    assert "evaluated 2 scene(s): s1, s2" in text
    assert "class-agnostic" in text and "open-vocabulary" in text and "head" in text
    assert "AP50 100.0" in text

    assert main(["eval", str(tmp_path / "scenes"), "--mode", "agnostic", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    # Object 1 of s2 matches up to 0.5 only: 3 of 4 instances matched at 0.55..0.90.
    assert out["results"]["agnostic"]["ap50"] == 1.0
    assert 0.5 < out["results"]["agnostic"]["ap"] < 1.0
    assert "open-vocab" not in out["results"]


def test_cli_eval_errors(tmp_path, capsys):
    assert main(["eval", str(tmp_path)]) == 2
    assert "no OpenMask3D map" in capsys.readouterr().err


class AnyPrompt(FakeText):
    """FakeText for any prompt form: the class is the word of the prompt it knows."""

    def encode_text(self, texts):
        self.seen.extend(texts)
        return np.asarray([next(v for w, v in self.vectors.items() if w in t.split())
                           for t in texts], dtype=np.float32)


def test_each_maps_recorded_class_template_is_used():
    gt = {1: "mug", 2: "chair"}
    s = _scene([[1, 0, 0, 0], [0, 1, 0, 0]], [np.arange(200), np.arange(500, 700)], gt)
    s.instances.meta.config = {"encoder": {"prompt_template": "a photo of a {}"}}
    plain = _scene([[1, 0, 0, 0]], [np.arange(200)], {1: "mug"}, name="plain")   # no config
    enc = AnyPrompt()
    rep = evaluate_scenes([s, plain], modes=["open-vocab"], classes=["mug", "chair"],
                          text_encoder=enc)
    assert rep.results["open-vocab"].ap == 1.0
    assert enc.seen == ["a photo of a mug", "a photo of a chair",
                        "a mug in a scene", "a chair in a scene"]
    enc.seen.clear()
    evaluate_scenes([s], modes=["open-vocab"], classes=["mug"], text_encoder=enc,
                    template="{} on a table")                   # an explicit template wins
    assert enc.seen == ["mug on a table"]
    with pytest.raises(ValueError, match="must contain"):
        evaluate_scenes([s], modes=["open-vocab"], text_encoder=enc, template="a thing")


def test_cli_eval_reports_the_maps_template(tmp_path, capsys):
    from openmask3d_ros.core.instance_map import InstanceMap as Map

    root = _write_scene(tmp_path / "s1")
    imap = Map.load(root / "openmask3d")
    imap.meta.config["encoder"]["prompt_template"] = "a photo of a {}"
    imap.save(root / "openmask3d")
    assert main(["eval", str(root), "--label-key", "color"]) == 0
    out = capsys.readouterr().out
    assert "prompt 'a photo of a {}'" in out and "AP50 100.0" in out
    assert main(["eval", str(root), "--label-key", "color", "--template", "no braces"]) == 2
    assert "must contain {}" in capsys.readouterr().err
