"""`openmask3d run` through the real open_clip and segment-anything code paths.

Real architectures (CLIP ViT-B-32, SAM vit_b) at random weights are saved to checkpoint files and
named in a YAML config, exactly as a user configures downloaded weights. Random weights rank
nothing meaningfully, so this asserts the plumbing: models used, SAM run once per used frame,
feature width, a saved map that answers queries with the recorded encoder.
"""
import json

import numpy as np
import pytest
import yaml

from openmask3d_ros.cli import main as cli
from openmask3d_ros.core.instance_map import InstanceMap
from openmask3d_ros.core.query import open_map
from openmask3d_ros.core.synthetic import make_scene

open_clip = pytest.importorskip("open_clip")
segment_anything = pytest.importorskip("segment_anything")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, clip_b32_checkpoint, sam_vit_b_checkpoint):
    root = tmp_path_factory.mktemp("real")
    config = {"encoder": {"backend": "clip", "clip_model": "ViT-B-32",
                          "clip_checkpoint": str(clip_b32_checkpoint), "batch_size": 16},
              "segmenter": {"backend": "sam", "sam_model": "vit_b",
                            "sam_checkpoint": str(sam_vit_b_checkpoint)},
              "device": "auto"}
    (root / "real.yaml").write_text(yaml.safe_dump(config))
    # 20 frames at step 10 -> 2 keyframes: two SAM image embeddings on the CPU.
    scene = make_scene(root / "scene", seed=4, num_frames=20, width=160, height=120)
    assert cli(["run", str(scene), "--config", str(root / "real.yaml")]) == 0
    return root, scene


def test_map_built_with_clip_and_sam(run_dir):
    _, scene = run_dir
    meta = InstanceMap.load(scene).meta
    assert meta.models.segmenter == "sam:vit_b"
    assert meta.models.image_encoder == "clip:ViT-B-32"
    assert not any("STAND-IN" in n for n in meta.models.notes)
    used = meta.frames.used
    assert 1 <= len(used) <= 2
    assert meta.segmenter_images == len(used)          # SAM encoder once per used frame
    assert meta.crops_encoded == 3 * sum(len(i.views) for i in meta.instances)


def test_saved_map_answers_queries_with_recorded_clip(run_dir, capsys):
    _, scene = run_dir
    engine = open_map(scene)
    assert engine.text_encoder.name == "clip:ViT-B-32"
    feats = engine.map.features[engine.map.valid]
    assert feats.shape[1] == 512 and np.allclose(np.linalg.norm(feats, axis=1), 1, atol=1e-4)
    # random weights: relevance means nothing, so list everything (--all) and check the order
    assert cli(["query", str(scene), "a red mug", "--json", "--top-k", "3", "--all"]) == 0
    out = json.loads(capsys.readouterr().out)
    rel = [i["relevance"] for i in out["instances"]]
    assert len(rel) == min(3, int(engine.map.valid.sum())) and rel == sorted(rel)[::-1]
    assert all(0.0 <= r <= 1.0 for r in rel)


def test_missing_checkpoint_is_a_clear_cli_error(tmp_path, run_dir, capsys):
    _, scene = run_dir
    cfg = tmp_path / "c.yaml"
    cfg.write_text("encoder: {backend: clip, clip_model: ViT-B-32, "
                   f"clip_checkpoint: {tmp_path / 'missing.pt'}}}\n")
    assert cli(["run", str(scene), "--config", str(cfg), "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert "missing.pt" in err and "ViT-B-32" in err
