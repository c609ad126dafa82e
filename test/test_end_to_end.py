"""End to end on synthetic scenes: generate, run with the built-in models, query each colour."""
import json

import numpy as np
import pytest

from openmask3d_ros.cli import main as cli
from openmask3d_ros.core.instance_map import InstanceMap
from openmask3d_ros.core.pipeline import run_pipeline
from openmask3d_ros.core.query import open_map
from openmask3d_ros.core.scene import SceneFolder
from openmask3d_ros.core.synthetic import make_scene

COLOURS = ("red", "green", "blue", "yellow", "white", "black")


@pytest.fixture(scope="module", params=[(0, 320, 240), (7, 256, 192)],
                ids=["seed0-320x240", "seed7-256x192"])
def built(request, tmp_path_factory):
    seed, w, h = request.param
    root = make_scene(tmp_path_factory.mktemp(f"scene{seed}"), seed=seed, num_frames=100,
                      width=w, height=h)
    imap = run_pipeline(root)
    return root, imap


def test_every_colour_query_returns_its_object(built):
    root, _ = built
    engine = open_map(root)
    gt = SceneFolder(root).ground_truth()
    points = engine.map.points
    checked = 0
    for gid, info in gt.labels.items():
        if info.get("color") not in COLOURS:
            continue
        top = engine.query(info["color"], top_k=1)[0]
        truth = np.flatnonzero(gt.instance_ids == gid)
        inter = len(np.intersect1d(truth, top.point_indices))
        iou = inter / len(np.union1d(truth, top.point_indices))
        dist = np.linalg.norm(top.centroid - points[truth].mean(axis=0))
        assert iou >= 0.5, f"{info['color']} {info['label']}: IoU {iou:.2f}"
        assert dist <= 0.03, f"{info['color']} {info['label']}: centroid off by {dist:.3f} m"
        checked += 1
    assert checked >= 4


def test_map_records_models_and_reuses_frames(built):
    root, imap = built
    meta = InstanceMap.load(root).meta
    assert meta.models.image_encoder == "colour-standin"
    assert any("STAND-IN" in n for n in meta.models.notes)
    assert meta.frame_step == 10 and meta.frames.keyframes == 10
    # each used frame is embedded once, however many masks chose it
    assert meta.segmenter_images == len(meta.frames.used) <= 10
    assert meta.crops_encoded == 3 * sum(len(i.views) for i in meta.instances)
    assert imap.features.shape == (imap.num_instances, 12)


def test_cli_query_json_gives_indices_into_cloud(built, capsys):
    root, _ = built
    assert cli(["query", str(root), "red", "--json", "--top-k", "2", "--all"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["query"] == "red" and len(out["instances"]) == 2
    inst = out["instances"][0]
    assert set(inst) == {"id", "score", "relevance", "structure", "centroid", "bbox_min",
                         "bbox_max", "box", "support", "reference_id", "relation_score",
                         "n_points", "point_indices"}
    pts = SceneFolder(root).cloud()[0][inst["point_indices"]]
    # the oriented box holds the instance's points (gravity-aligned: only a yaw)
    box = inst["box"]
    x, y, z, w = box["orientation_xyzw"]
    assert abs(x) < 1e-9 and abs(y) < 1e-9 and abs(np.hypot(z, w) - 1) < 1e-4   # 5 decimals
    yaw = 2 * np.arctan2(z, w)
    R = np.array([[np.cos(yaw), -np.sin(yaw), 0], [np.sin(yaw), np.cos(yaw), 0], [0, 0, 1]])
    local = (pts - box["center"]) @ R
    assert np.all(np.abs(local) <= np.asarray(box["size"]) / 2 + 1e-4)
    assert inst["support"]["support_id"] >= 0 and inst["reference_id"] == -1
    assert np.allclose(pts.mean(axis=0), inst["centroid"], atol=1e-4)
    assert inst["n_points"] == len(inst["point_indices"])
    assert out["instances"][0]["relevance"] >= out["instances"][1]["relevance"]


def test_precomputed_masks_replace_proposals(built, tmp_path):
    root, _ = built
    gt = SceneFolder(root).ground_truth()
    ids = sorted(gt.labels)
    masks = np.stack([gt.instance_ids == i for i in ids], axis=1)
    np.save(tmp_path / "masks.npy", masks.T)          # M x P is accepted too
    out = tmp_path / "map"
    assert cli(["run", str(root), "--masks", str(tmp_path / "masks.npy"), "--out", str(out)]) == 0
    engine = open_map(out)
    assert engine.map.meta.models.proposals == "precomputed"
    red = [i for i in ids if gt.labels[i]["color"] == "red"]
    if red:
        top = engine.query("red", top_k=1)[0]
        assert set(top.point_indices) == set(np.flatnonzero(gt.instance_ids == red[0]))


def test_bad_inputs_give_clear_errors(built, tmp_path, capsys):
    root, _ = built
    assert cli(["run", str(tmp_path / "nowhere")]) == 2
    assert "scene folder not found" in capsys.readouterr().err
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((3, 4), bool))
    assert cli(["run", str(root), "--masks", str(bad), "--out", str(tmp_path / "m")]) == 2
    assert "neither dimension matches" in capsys.readouterr().err
    engine = open_map(root)
    with pytest.raises(ValueError, match="non-empty"):
        engine.query("  ")
    with pytest.raises(ValueError, match="top_k"):
        engine.query("red", top_k=-1)


def test_corrupt_frames_are_skipped_with_a_warning(tmp_path, caplog):
    root = make_scene(tmp_path / "s", seed=3, num_frames=40, width=160, height=120)
    (root / "depth" / "10.png").write_bytes(b"not a png")        # keyframe 10: unreadable depth
    import cv2
    cv2.imwrite(str(root / "color" / "20.png"), np.zeros((60, 80, 3), np.uint8))  # wrong size
    pose = root / "pose" / "30.txt"
    pose.write_text(pose.read_text().replace(pose.read_text().split()[3], "-inf", 1))
    imap = run_pipeline(root)
    skipped = imap.meta.frames.skipped
    assert set(skipped) == {"10", "20", "30"}, skipped
    assert "20" not in imap.meta.frames.used and imap.valid.any()
    assert "frame 10 skipped" in caplog.text
