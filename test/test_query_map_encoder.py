"""A map is queried with the encoder it was built with, whatever encoder the caller's own
configuration names (CLI here; the node in test/ros/test_ros_map_encoder.py), and a map whose
encoder cannot be built is refused with a message naming the encoder and what is missing."""
import json

import numpy as np
import pytest

from openmask3d_ros.cli import main as cli
from openmask3d_ros.core.config import PipelineConfig
from openmask3d_ros.core.instance_map import InstanceMap

WORDS = ["a red mug", "a blue chair", "a green plant", "a white lamp"]


def save_clip_map(root):
    """A scene folder whose map features are CLIP ViT-B-32 (random weights) text embeddings of
    WORDS, recorded with the configuration naming that checkpoint. -> (scene, checkpoint)."""
    torch = pytest.importorskip("torch")
    open_clip = pytest.importorskip("open_clip")
    from openmask3d_ros.core.encoders.clip import ClipEncoder
    torch.manual_seed(0)
    ckpt = root / "vit_b32_random.pt"
    torch.save(open_clip.create_model("ViT-B-32", pretrained=None).state_dict(), ckpt)
    enc = ClipEncoder("ViT-B-32", checkpoint=str(ckpt), device="cpu")
    cfg = PipelineConfig().updated({"encoder": {"backend": "clip", "clip_model": "ViT-B-32",
                                                "clip_checkpoint": str(ckpt)}})
    rng = np.random.default_rng(0)
    points = (rng.uniform(0, 0.2, (400, 3)) + np.repeat(np.arange(4), 100)[:, None]
              ).astype(np.float32)
    imap = InstanceMap(points, [np.arange(i * 100, (i + 1) * 100) for i in range(4)],
                       enc.encode_text(WORDS),
                       {"config": cfg.to_dict(),
                        "models": {"text_encoder": enc.name, "image_encoder": enc.name}})
    imap.save(root / "scene" / "openmask3d")
    return root / "scene", ckpt


def set_recorded_checkpoint(scene, path) -> None:
    """Rewrite the map's recorded encoder.clip_checkpoint (as if the map came from elsewhere)."""
    meta_file = InstanceMap.load(scene).meta.map_dir + "/meta.json"
    with open(meta_file) as f:
        meta = json.load(f)
    meta["config"]["encoder"]["clip_checkpoint"] = str(path)
    with open(meta_file, "w") as f:
        json.dump(meta, f)


@pytest.fixture(scope="module")
def clip_map(tmp_path_factory):
    return save_clip_map(tmp_path_factory.mktemp("clipmap"))


def _ask(capsys, *argv):
    assert cli(["query", *map(str, argv), "--json", "--all"]) == 0
    return json.loads(capsys.readouterr().out.splitlines()[-1])


def test_clip_map_answers_with_clip_although_the_config_names_the_stand_in(
        clip_map, tmp_path, capsys):
    scene, _ = clip_map
    standin = tmp_path / "standin.yaml"
    standin.write_text("encoder:\n  backend: colour\n")
    for argv in ((scene, "a blue chair"), (scene, "a blue chair", "--config", standin)):
        answer = _ask(capsys, *argv)
        top = answer["instances"][0]
        assert top["id"] == 1 and top["score"] == pytest.approx(1.0, abs=1e-4), answer


def test_missing_checkpoint_is_named_and_a_local_copy_is_used(clip_map, tmp_path, capsys):
    import shutil
    scene, ckpt = clip_map
    moved = tmp_path / "scene"
    shutil.copytree(scene, moved)
    gone = tmp_path / "elsewhere" / ckpt.name
    set_recorded_checkpoint(moved, gone)
    assert cli(["query", str(moved), "a blue chair"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "CLIP ViT-B-32" in err and str(gone) in err, err
    assert "not found" in err and "-d but" not in err, err
    # the checkpoint of the same model kept elsewhere on this machine, named by --config
    local = tmp_path / "local.yaml"
    local.write_text(f"encoder:\n  backend: clip\n  clip_model: ViT-B-32\n"
                     f"  clip_checkpoint: {ckpt}\n")
    top = _ask(capsys, moved, "a blue chair", "--config", local)["instances"][0]
    assert top["id"] == 1 and top["score"] == pytest.approx(1.0, abs=1e-4)
