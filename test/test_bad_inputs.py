"""Corrupt and inconsistent inputs: exit status 2 and one line naming the file or field, never a
traceback, never a silently wrong map (the cases of the hostile pass in issue 11)."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from openmask3d_ros.cli import main as cli
from openmask3d_ros.core import map_versions
from openmask3d_ros.core.instance_map import InstanceMap
from openmask3d_ros.core.scene import read_ply, write_ply

STEP = ["--frame-step", "2"]


@pytest.fixture
def scene(scene_copy):
    """A private copy of a small scene with a map built by the CLI (conftest.py)."""
    return scene_copy(seed=3)


def gen(scene: Path) -> Path:
    return map_versions.current(scene / "openmask3d")


def fails(capsys, argv, *needles) -> str:
    """Run the CLI in-process: exit 2, one error line holding every needle, no traceback."""
    assert cli(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    line = [ln for ln in err.splitlines() if ": error: " in ln]
    assert line, err
    for n in needles:
        assert n in line[-1], f"{n!r} not in {line[-1]!r}"
    return line[-1]


def truncate(path: Path, fraction: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * fraction)])


# -- the map --------------------------------------------------------------------------------------
@pytest.mark.parametrize("fraction", [0.0, 0.5])
def test_truncated_or_empty_instances_npz(scene, capsys, fraction):
    truncate(gen(scene) / "instances.npz", fraction)
    fails(capsys, ["query", str(scene), "red"], "instances.npz")


def rewrite_npz(path: Path, **changes) -> None:
    with np.load(path) as d:
        arrays = {k: d[k] for k in d.files}
    for k, v in changes.items():
        if v is None:
            del arrays[k]
        else:
            arrays[k] = v
    np.savez_compressed(path, **arrays)


def test_point_indices_out_of_range(scene, capsys):
    npz = gen(scene) / "instances.npz"
    with np.load(npz) as d:
        flat = d["point_indices"].copy()
    flat[-1] = 10 ** 9
    rewrite_npz(npz, point_indices=flat)
    fails(capsys, ["query", str(scene), "red"], "instances.npz", "point_indices", "out of range")


def test_npz_missing_an_array(scene, capsys):
    rewrite_npz(gen(scene) / "instances.npz", features=None)
    fails(capsys, ["query", str(scene), "red"], "instances.npz", "features", "missing")


def test_truncated_meta_json(scene, capsys):
    truncate(gen(scene) / "meta.json", 0.5)
    fails(capsys, ["query", str(scene), "red"], "meta.json")


def test_truncated_map_cloud(scene, capsys):
    truncate(gen(scene) / "cloud.ply", 0.6)
    fails(capsys, ["query", str(scene), "red"], "cloud.ply")


def test_no_map(scene, capsys):
    shutil.rmtree(scene / "openmask3d")
    fails(capsys, ["query", str(scene), "red"], str(scene), "openmask3d run")


# -- the scene folder -----------------------------------------------------------------------------
def test_truncated_scene_cloud(scene, capsys):
    truncate(scene / "cloud.ply", 0.4)
    fails(capsys, ["run", str(scene), *STEP], "cloud.ply")


def test_zero_point_cloud_is_an_error_not_an_empty_map(scene, capsys):
    before = gen(scene).name
    write_ply(scene / "cloud.ply", np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint8))
    fails(capsys, ["run", str(scene), *STEP], "cloud.ply", "no points")
    assert gen(scene).name == before


def test_all_poses_invalid_is_an_error_not_an_empty_map(scene, capsys):
    before = gen(scene).name
    for pose in (scene / "pose").iterdir():
        np.savetxt(pose, np.full((4, 4), -np.inf))
    fails(capsys, ["run", str(scene), *STEP], "unusable poses", "non-finite")
    assert gen(scene).name == before


def test_depth_size_disagreeing_with_intrinsic_depth(scene, capsys):
    for path in (scene / "depth").iterdir():
        d = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        cv2.imwrite(str(path), cv2.resize(d, (d.shape[1] // 2, d.shape[0] // 2),
                                          interpolation=cv2.INTER_NEAREST))
    fails(capsys, ["run", str(scene), *STEP], "intrinsic_depth.txt", "80x60")


def test_jpeg_cut_to_a_third_is_skipped_with_a_warning(scene, capsys, caplog):
    """A partly decoded image is unreadable: its frame is skipped and listed, never used."""
    png = scene / "color" / "4.png"
    jpg = png.with_suffix(".jpg")
    cv2.imwrite(str(jpg), cv2.imread(str(png)))
    png.unlink()
    truncate(jpg, 1 / 3)
    assert cli(["run", str(scene), *STEP]) == 0
    skipped = InstanceMap.load(scene).meta.frames.skipped
    assert "4" in skipped and "truncated" in skipped["4"]
    assert "4" not in InstanceMap.load(scene).meta.frames.used
    assert any("4.jpg" in r.getMessage() for r in caplog.records if r.levelname == "WARNING")


def test_malformed_scene_json(scene, capsys):
    (scene / "scene.json").write_text('{"depth_scale": ')
    fails(capsys, ["run", str(scene), *STEP], "scene.json")


def test_garbage_pose_file_skips_that_frame(scene):
    (scene / "pose" / "2.txt").write_bytes(b"\x00\xff garbage")
    assert cli(["run", str(scene), *STEP]) == 0
    assert "2.txt" in InstanceMap.load(scene).meta.frames.skipped["2"]


# -- configuration and other inputs ------------------------------------------------------------
@pytest.mark.parametrize("text,needles", [
    ("visibility: {k_view: -3}\n", ["visibility.k_view", ">= 1", "-3"]),
    ("crops: {levels: 0}\n", ["crops.levels", ">= 1"]),
    ("crops: {k_exp: 2.5}\n", ["crops.k_exp"]),
    ("proposals: {plane_min_fraction: 1.5}\n", ["proposals.plane_min_fraction"]),
    ("frame_step: 0\n", ["frame_step"]),
    ("keep_generations: 0\n", ["keep_generations"]),
    ("visibility: {k_threshold: .nan}\n", ["visibility.k_threshold", "finite"]),
    ("visibility: [k_view: 3\n", ["not a readable YAML"]),
    ("- just\n- a list\n", ["mapping"]),
])
def test_config_checked_on_load(scene, capsys, text, needles):
    cfg = scene.parent / "bad.yaml"
    cfg.write_text(text)
    fails(capsys, ["run", str(scene), *STEP, "--config", str(cfg)], "bad.yaml", *needles)


@pytest.mark.parametrize("content", ["random", "object", "shape"])
def test_bad_masks_file(scene, capsys, content):
    path = scene.parent / "masks.npy"
    if content == "random":
        path.write_bytes(np.random.default_rng(0).bytes(999))
    elif content == "object":
        np.save(path, np.array([{"a": 1}] * 3, dtype=object), allow_pickle=True)
    else:
        np.save(path, np.ones((7, 3), bool))
    fails(capsys, ["run", str(scene), *STEP, "--masks", str(path)], "masks.npy")


# -- as a user sees it: a subprocess -------------------------------------------------------------
def test_exit_2_without_traceback_and_debug_shows_it(scene):
    truncate(gen(scene) / "instances.npz", 0.5)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "openmask3d_ros.cli", "query", str(scene), "red"]
    plain = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert plain.returncode == 2, plain.stderr
    assert "Traceback" not in plain.stderr and "instances.npz" in plain.stderr
    debug = subprocess.run(cmd[:3] + ["--debug"] + cmd[3:], capture_output=True, text=True,
                           env=env, timeout=120)
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_shuffled_points_never_give_a_wrong_answer(scene):
    """Map cloud replaced by the same points shuffled: refused (hash), not answered wrongly."""
    g = gen(scene)
    pts, cols = read_ply(g / "cloud.ply")
    order = np.random.default_rng(0).permutation(len(pts))
    write_ply(g / "cloud.ply", pts[order], cols[order])
    assert cli(["query", str(scene), "red"]) == 2
