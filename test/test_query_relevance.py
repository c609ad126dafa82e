"""'Is there a mug?': relevance, absent objects, structure and image exemplars, on generated scenes.

Built-in models (colour STAND-IN encoders: the vocabulary is colour words). Scenes vary in seed,
object layout, resolution, number of frames and depth noise; thresholds are the defaults.
"""
import json

import cv2
import numpy as np
import pytest

pytest.importorskip("pybullet")

from openmask3d_ros.cli import main as cli  # noqa: E402
from openmask3d_ros.core.encoders.colour import COLOUR_NAMES  # noqa: E402
from openmask3d_ros.core.pipeline import run_pipeline  # noqa: E402
from openmask3d_ros.core.query import open_map  # noqa: E402
from openmask3d_ros.core.scene import SceneFolder  # noqa: E402
from openmask3d_ros.core.synthetic import make_scene  # noqa: E402

NONSENSE = ["a mug", "xxxxxxxx", "x" * 10000, "\U0001F37A\U0001F37A\U0001F642",
            "something to sit on", "the quick brown fox jumps"[:9]]   # "the quick" (no colour)


@pytest.fixture(scope="module", params=[(3, 320, 240, 40, 0.0), (11, 160, 120, 30, 0.003),
                                        (8, 256, 192, 20, 0.0)],
                ids=["seed3-320x240", "seed11-160x120-noisy", "seed8-256x192-2kf"])
def scene(request, tmp_path_factory):
    seed, w, h, frames, noise = request.param
    root = make_scene(tmp_path_factory.mktemp(f"rel{seed}"), seed=seed, num_frames=frames,
                      width=w, height=h, depth_noise=noise)
    run_pipeline(root)
    engine = open_map(root)
    gt = SceneFolder(root).ground_truth()
    owner = {m: int(np.bincount(gt.instance_ids[idx]).argmax())
             for m, idx in enumerate(engine.map.point_indices)}
    return root, engine, gt, owner


def _iou(a, b):
    return len(np.intersect1d(a, b)) / max(len(np.union1d(a, b)), 1)


def test_present_colours_find_their_object_first(scene):
    _, engine, gt, _ = scene
    objects = {gid: i for gid, i in gt.labels.items() if i["label"] not in ("table", "floor")}
    assert len(objects) >= 4
    for gid, info in objects.items():
        answer = engine.ask(info["color"])
        assert answer.found, answer.message()
        top = answer.results[0]
        assert _iou(np.flatnonzero(gt.instance_ids == gid), top.point_indices) >= 0.5, \
            f"{info['color']} {info['label']}: {answer.message()}"
        assert top.relevance >= 0.55 and top.structure is None
        rel = [r.relevance for r in answer.results]
        assert rel == sorted(rel, reverse=True)


def test_absent_colours_and_nonsense_find_nothing(scene):
    _, engine, gt, _ = scene
    present = {i["color"] for i in gt.labels.values()}      # objects, brown table, grey floor
    absent = [c for c in COLOUR_NAMES if c not in present]
    assert absent
    for text in absent + NONSENSE:
        answer = engine.ask(text)
        assert not answer.found and answer.results == [], (text[:20], answer.message())
        msg = answer.message()
        assert "not found" in msg and f"{answer.best.relevance:.3f}" in msg
        assert answer.best.relevance < 0.55


def test_floor_never_answers_an_object_query(scene):
    root, engine, gt, owner = scene
    floor_gid = next(g for g, i in gt.labels.items() if i["label"] == "floor")
    floors = [m for m, g in owner.items() if g == floor_gid]
    assert floors and all(engine.structure[m] for m in floors)
    # tagged in the saved map, with the reason
    meta = json.loads(next((root / "openmask3d").rglob("meta.json")).read_text())
    reasons = meta["structure"]["reasons"]
    assert all(reasons[m] for m in floors)
    assert meta["config"]["query"]["negatives"] == ["object", "things", "stuff", "texture"]
    for text in list(COLOUR_NAMES) + NONSENSE:
        listed = engine.ask(text, top_k=0, min_relevance=0.0)     # everything but structure
        assert not {r.instance_id for r in listed.results} & set(floors), text[:20]
    # asking for it: by name, or with the flag
    answer = engine.ask("the grey floor")
    assert answer.found and answer.results[0].instance_id in floors
    flagged = engine.ask("grey", top_k=0, min_relevance=0.0, include_structure=True)
    assert set(floors) <= {r.instance_id for r in flagged.results}


def test_instance_values_are_the_full_listing(scene):
    """An answer carries what its ranking gave every instance (the heatmap): the relevance of
    each instance a full listing of the same query returns, NaN for the others, whatever the
    answer's own top_k and min_score. No second query is needed to draw it."""
    _, engine, _, _ = scene
    for text, structure in (("red", None), ("grey", True), ("grey", None)):
        top = engine.ask(text, top_k=1, min_score=0.5, include_structure=structure)
        full = engine.ask(text, top_k=0, min_relevance=0.0, include_structure=structure)
        expected = np.full(engine.map.num_instances, np.nan)
        for r in full.results:
            expected[r.instance_id] = r.relevance
        np.testing.assert_array_equal(top.instance_values, expected)


def _object_crop(root, gid):
    """The tight crop (+2 px) of object ``gid`` in the frame that shows most of it."""
    folder = SceneFolder(root)
    masks = sorted((root / "ground_truth" / "instance_masks").glob("*.png"),
                   key=lambda p: int(p.stem))
    best = max(masks, key=lambda p: int((cv2.imread(str(p), cv2.IMREAD_UNCHANGED) == gid).sum()))
    mask = cv2.imread(str(best), cv2.IMREAD_UNCHANGED) == gid
    ys, xs = np.nonzero(mask)
    rgb = folder.color(best.stem)
    pad = 2
    return rgb[max(ys.min() - pad, 0):ys.max() + pad + 1, max(xs.min() - pad, 0):xs.max() + pad + 1]


def test_image_crop_finds_its_object(scene, tmp_path, capsys):
    root, engine, gt, owner = scene
    objects = [g for g, i in gt.labels.items() if i["label"] not in ("table", "floor")]
    for gid in objects:
        crop = _object_crop(root, gid)
        answer = engine.ask(image=crop)
        assert answer.found, answer.message()
        assert owner[answer.results[0].instance_id] == gid, (gt.labels[gid], answer.message())
    # the same through the CLI, from a PNG file
    gid = objects[0]
    path = tmp_path / "crop.png"
    cv2.imwrite(str(path), cv2.cvtColor(_object_crop(root, gid), cv2.COLOR_RGB2BGR))
    assert cli(["query", str(root), "--image", str(path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["found"] and owner[out["instances"][0]["id"]] == gid


def test_cli_not_found_all_and_bad_input(scene, tmp_path, capsys):
    root, engine, _, _ = scene
    assert cli(["query", str(root), "a mug", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["found"] is False and out["instances"] == [] and "best candidate" in out["message"]
    assert cli(["query", str(root), "a mug", "--json", "--all", "--top-k", "0"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["instances"]) == int(engine.map.valid.sum())      # structure included
    assert cli(["query", str(root), "a mug"]) == 0
    assert "not found" in capsys.readouterr().out
    (tmp_path / "bad.png").write_text("not an image")
    assert cli(["query", str(root), "--image", str(tmp_path / "bad.png")]) == 2
    assert "bad.png" in capsys.readouterr().err
    assert cli(["query", str(root), "red", "--min-relevance", "1.5"]) == 2
    assert "min_relevance" in capsys.readouterr().err
