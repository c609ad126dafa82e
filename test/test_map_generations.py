"""Map generations: each build is a complete folder with its own cloud, switched in atomically;
a crash at any instant leaves the last complete map; a moved scene keeps working; a map is tied to
its cloud by content hash, not point count."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from openmask3d_ros.cli import main as cli
from openmask3d_ros.core import map_versions
from openmask3d_ros.core.errors import InputError
from openmask3d_ros.core.instance_map import InstanceMap, has_map
from openmask3d_ros.core.pipeline import run_pipeline
from openmask3d_ros.core.query import open_map
from openmask3d_ros.core.scene import SceneFolder, read_ply, write_ply

STEP = ["--frame-step", "2"]


@pytest.fixture
def scene(scene_copy):
    """A private copy of a small scene with a map built by the CLI (conftest.py)."""
    return scene_copy(seed=0)


def red_points(scene_dir: Path) -> set:
    """The points (as coordinate tuples) of the best 'red' instance of the scene's map."""
    (best,) = open_map(scene_dir).query("red", top_k=1)
    return {tuple(p) for p in np.round(best.points, 5).tolist()}


def gt_red(scene_dir: Path) -> set:
    sf = SceneFolder(scene_dir)
    gt = sf.ground_truth()
    gid = next(k for k, v in gt.labels.items() if v.get("color") == "red")
    pts, _ = sf.cloud()
    return {tuple(p) for p in np.round(pts[gt.instance_ids == gid], 5).tolist()}


def iou(a: set, b: set) -> float:
    return len(a & b) / max(len(a | b), 1)


def test_each_build_is_a_new_generation_and_old_ones_are_pruned(scene):
    root = scene / "openmask3d"
    assert (root / "CURRENT").read_text().strip() == "gen-000001"
    cfg = tmp_cfg(scene, "keep_generations: 2\n")
    for expected in ("gen-000002", "gen-000003"):
        assert cli(["run", str(scene), *STEP, "--config", str(cfg)]) == 0
        assert (root / "CURRENT").read_text().strip() == expected
    # the build cache (core/build_cache.py) lives beside the generations, never pruned
    assert sorted(p.name for p in root.iterdir()) == ["CURRENT", "cache", "gen-000002",
                                                      "gen-000003"]
    meta = InstanceMap.load(scene).meta
    assert meta.generation == "gen-000003"
    gen_meta = json.loads((root / "gen-000003" / "meta.json").read_text())
    assert gen_meta["cloud"]["file"] == "cloud.ply" and len(gen_meta["cloud"]["sha256"]) == 64
    # nothing in the stored metadata points outside the generation folder
    assert str(scene) not in (root / "gen-000003" / "meta.json").read_text()


def tmp_cfg(scene: Path, text: str) -> Path:
    path = scene.parent / "cfg.yaml"
    path.write_text(text)
    return path


def test_moved_scene_answers_from_its_own_files(scene, tmp_path):
    before = red_points(scene)
    moved = tmp_path / "elsewhere" / "copy"
    shutil.move(str(scene), moved)
    assert red_points(moved) == before
    assert iou(before, gt_red(moved)) >= 0.5


def test_shuffled_scene_cloud_does_not_change_answers(scene):
    """The issue: the same points in another order gave a box spanning the scene. The map uses
    its own cloud copy; handing it the shuffled cloud is refused by hash."""
    truth = gt_red(scene)
    pts, cols = read_ply(scene / "cloud.ply")
    order = np.random.default_rng(1).permutation(len(pts))
    write_ply(scene / "cloud.ply", pts[order], cols[order])
    assert iou(red_points(scene), truth) >= 0.5
    with pytest.raises(InputError, match="another cloud"):
        InstanceMap.load(scene, points=pts[order])
    InstanceMap.load(scene, points=pts)           # the cloud it was built on is accepted


def test_tampered_map_cloud_is_refused_by_hash(scene, capsys):
    gen = map_versions.current(scene / "openmask3d")
    pts, cols = read_ply(gen / "cloud.ply")
    write_ply(gen / "cloud.ply", pts[::-1].copy(), cols[::-1].copy())   # same size, other order
    assert cli(["query", str(scene), "red"]) == 2
    err = capsys.readouterr().err
    assert "cloud.ply" in err and "does not match" in err and "Traceback" not in err


def test_pointer_missing_or_garbage_falls_back_to_newest_complete(scene):
    root = scene / "openmask3d"
    assert cli(["run", str(scene), *STEP]) == 0
    (root / "CURRENT").write_text("gen-999999\n")
    assert InstanceMap.load(scene).meta.generation == "gen-000002"
    (root / "CURRENT").unlink()
    assert InstanceMap.load(scene).meta.generation == "gen-000002"
    # an abandoned build folder is never loaded, and the next build removes it
    (root / ".building-gen-000003-999999999").mkdir()
    assert InstanceMap.load(scene).meta.generation == "gen-000002"
    assert cli(["run", str(scene), *STEP]) == 0
    assert not any(p.name.startswith(".building") for p in root.iterdir())


@pytest.mark.parametrize("content", ["", "\n", "  \n\n", "gen-999999\n", "\x00garbage"])
def test_empty_or_garbage_pointer_is_warned_about(scene, caplog, content):
    """W3: an empty CURRENT fell back to the newest generation silently; it warns as a garbage
    one does, naming the file, and the query still answers from the newest generation."""
    root = scene / "openmask3d"
    (root / "CURRENT").write_text(content)
    caplog.set_level("WARNING", logger="openmask3d_ros.core.map_versions")
    assert cli(["query", str(scene), "red"]) == 0
    warned = [r.getMessage() for r in caplog.records if r.name.endswith("map_versions")]
    assert warned and str(root / "CURRENT") in warned[0], warned
    assert ("is empty" if not content.strip() else "not a generation") in warned[0]


def test_a_folder_without_generations_is_refused_naming_what_to_do(scene):
    """instances.npz + meta.json directly in a folder (a pre-release layout) is not a map."""
    gen = map_versions.current(scene / "openmask3d")
    loose = scene / "loose"
    loose.mkdir()
    shutil.copy(gen / "instances.npz", loose / "instances.npz")
    shutil.copy(gen / "meta.json", loose / "meta.json")
    with pytest.raises(InputError, match="openmask3d run"):
        InstanceMap.load(loose)
    assert not has_map(loose) and not has_map(scene / "color") and has_map(scene)


@pytest.mark.parametrize("crash_at", ["files", "rename", "pointer", "prune"])
def test_crash_at_every_step_of_a_save_leaves_a_complete_map(scene, monkeypatch, crash_at):
    """Simulate a kill at each step of the save: the map that loads afterwards is complete, old
    or new, never mixed (its instances match its own cloud and features)."""
    old = InstanceMap.load(scene)
    pts, cols = read_ply(scene / "cloud.ply")
    half = pts[::2].copy()                        # a new cloud of another size

    class Killed(BaseException):
        pass

    def die(*a, **k):
        raise Killed

    target = {"files": (np, "savez_compressed"), "rename": (os, "rename"),
              "pointer": (os, "replace"), "prune": (map_versions, "prune")}[crash_at]
    monkeypatch.setattr(*target, die)
    with pytest.raises(Killed):
        run_pipeline(scene, None, cloud=(half, cols[::2]), frame_step=2)
    monkeypatch.undo()
    got = InstanceMap.load(scene)
    expect_new = crash_at == "prune"             # the switch happened, only cleanup was lost
    if crash_at == "pointer":
        # the new generation is complete but not yet current: CURRENT still names the old one
        assert got.meta.generation == old.meta.generation
    assert len(got.points) == (len(half) if expect_new else len(old.points))
    for idx in got.point_indices:
        assert idx.max() < len(got.points)
    # a later build completes and becomes current
    run_pipeline(scene, None, frame_step=2)
    assert InstanceMap.load(scene).meta.generation > got.meta.generation


def _run_cli(scene: Path) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENMASK3D_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "openmask3d_ros.cli", "run", str(scene), *STEP],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 120) -> None:
    t0 = time.monotonic()
    while not ready() and proc.poll() is None and time.monotonic() - t0 < timeout:
        time.sleep(0.001)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)


@pytest.mark.parametrize("new_cloud", ["same", "smaller", "shuffled"])
def test_sigkill_of_openmask3d_run_keeps_the_last_complete_map(scene, new_cloud):
    """Kill `openmask3d run` at several points of a rebuild (early, mid-build, while the new
    generation is being written): the previous map keeps answering correctly every time."""
    truth = gt_red(scene)
    before = red_points(scene)
    pts, cols = read_ply(scene / "cloud.ply")
    if new_cloud == "smaller":
        write_ply(scene / "cloud.ply", pts[::2].copy(), cols[::2].copy())
    elif new_cloud == "shuffled":
        order = np.random.default_rng(2).permutation(len(pts))
        write_ply(scene / "cloud.ply", pts[order], cols[order])
    now = {tuple(p) for p in np.round(read_ply(scene / "cloud.ply")[0], 5).tolist()}
    truth_now = truth & now
    root = scene / "openmask3d"
    building = lambda: any(p.name.startswith(".building") for p in root.iterdir())  # noqa: E731
    for delay in (0.5, 1.5, 2.2):
        proc = _run_cli(scene)
        end = time.monotonic() + delay
        _kill_when(proc, lambda end=end: time.monotonic() > end or building())
        assert red_points(scene) == before
    proc = _run_cli(scene)
    _kill_when(proc, building)                   # inside the save itself
    assert map_versions.current(root).name in ("gen-000001", "gen-000002")
    got = red_points(scene)
    assert got == before or iou(got, truth_now) >= 0.5
    # a complete rerun succeeds, becomes current and answers correctly on the new cloud
    proc = _run_cli(scene)
    assert proc.wait(180) == 0
    assert iou(red_points(scene), truth_now) >= 0.5
    assert not any(p.name.startswith(".building") for p in root.iterdir())
