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
