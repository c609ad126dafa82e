"""Shared test set-up: no hub downloads; fixtures several test files build on."""
import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def built_scene(tmp_path_factory):
    """``built_scene(seed)``: a small synthetic scene (20 frames, 160x120) with one map built by
    ``openmask3d run --frame-step 2``; built once per seed for the session, so never change it
    (use ``scene_copy``)."""
    from openmask3d_ros.cli import main as cli
    from openmask3d_ros.core.synthetic import make_scene
    cache: dict[int, Path] = {}

    def build(seed: int) -> Path:
        if seed not in cache:
            root = make_scene(tmp_path_factory.mktemp(f"built{seed}") / "scene", seed=seed,
                              num_frames=20, width=160, height=120)
            assert cli(["run", str(root), "--frame-step", "2"]) == 0
            cache[seed] = root
        return cache[seed]
    return build


@pytest.fixture
def scene_copy(built_scene, tmp_path):
    """``scene_copy(seed)``: a private copy of ``built_scene(seed)`` that a test may change."""
    def copy(seed: int) -> Path:
        dst = tmp_path / "scene"
        shutil.copytree(built_scene(seed), dst)
        return dst
    return copy


# Real architectures at random weights, saved as checkpoint files the way users point the config
# at downloaded weights; written once a session (a vit_b state dict is ~360 MB).
def _save_random(tmp_path_factory, filename: str, build) -> Path:
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / filename
    torch.save(build().state_dict(), path)
    return path


@pytest.fixture(scope="session")
def clip_b32_checkpoint(tmp_path_factory) -> Path:
    """open_clip ViT-B-32, random weights (seed 0); skips without torch/open_clip."""
    open_clip = pytest.importorskip("open_clip")
    return _save_random(tmp_path_factory, "vit_b32_random.pt",
                        lambda: open_clip.create_model("ViT-B-32", pretrained=None))


@pytest.fixture(scope="session")
def sam_vit_b_checkpoint(tmp_path_factory) -> Path:
    """segment-anything vit_b, random weights (seed 0); skips without segment_anything."""
    segment_anything = pytest.importorskip("segment_anything")
    return _save_random(tmp_path_factory, "sam_vit_b_random.pth",
                        lambda: segment_anything.sam_model_registry["vit_b"](checkpoint=None))
