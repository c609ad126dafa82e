"""`openmask3d batch` (core/batch.py on a local Ray) as a subprocess on tiny synthetic scenes:
every map equals `openmask3d run`'s, a damaged scene is reported and the others go on, --resume
after an interrupted batch builds only the missing scenes, and a worker SIGKILLed mid-scene is
replaced and its scene retried to completion. Plus the input fingerprints --resume relies on, and
that nothing but the batch imports Ray."""
import ast
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
from openmask3d_ros.core.batch import (TEST_PAUSE_ENV, BatchError, find_scene_folders,
                                       parse_size, plan_workers)
from openmask3d_ros.core.config import PipelineConfig
from openmask3d_ros.core.fingerprint import map_is_current
from openmask3d_ros.core.instance_map import InstanceMap
from openmask3d_ros.core.map_meta import MapMeta

pytest.importorskip("ray")

REPO = Path(__file__).resolve().parents[1]
OPENMASK3D = [sys.executable, "-m", "openmask3d_ros.cli"]
STEP = ["--frame-step", "2"]
# small Ray: this machine has 2 cores shared with other test runs
SMALL = ["--cpus-per-scene", "1"]


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """Four tiny synthetic scenes (6 frames, 160x120; 3 keyframes at --frame-step 2)."""
    from openmask3d_ros.core.synthetic import make_scene
    root = tmp_path_factory.mktemp("batch_src")
    return [make_scene(root / f"s{i}", seed=i, num_frames=6, width=160, height=120)
            for i in range(4)]


def copy_scenes(src, dst: Path, names=None) -> list[Path]:
    dst.mkdir(parents=True, exist_ok=True)
    out = []
    for s in src:
        if names is None or s.name in names:
            out.append(Path(shutil.copytree(s, dst / s.name)))
    return out


def batch(*args, env=None, timeout=240) -> tuple[int, dict, str]:
    proc = subprocess.run([*OPENMASK3D, "batch", *args, *STEP, *SMALL, "--json"], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})
    try:
        report = json.loads(proc.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"no JSON summary (rc {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc.returncode, report, proc.stderr


def by_scene(report: dict) -> dict[str, dict]:
    return {r["scene"]: r for r in report["scenes"]}


def assert_same_map(a: Path, b: Path) -> None:
    ma, mb = InstanceMap.load(a), InstanceMap.load(b)
    assert ma.num_instances == mb.num_instances > 0
    np.testing.assert_array_equal(ma.points, mb.points)
    np.testing.assert_array_equal(ma.features, mb.features)
    for x, y in zip(ma.flat_indices(), mb.flat_indices()):
        np.testing.assert_array_equal(x, y)
    assert ma.meta.config == mb.meta.config
    assert ma.meta.inputs == mb.meta.inputs        # same files, same configuration
    assert [i.views for i in ma.meta.instances] == [i.views for i in mb.meta.instances]


def wait_for_pid(pidfile: Path, proc: subprocess.Popen, timeout: float = 180) -> int:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if pidfile.is_file() and pidfile.read_text().strip():
            return int(pidfile.read_text().split()[0])
        if proc.poll() is not None:
            pytest.fail(f"batch ended (rc {proc.returncode}) before the paused scene started:\n"
                        f"{proc.communicate()}")
        time.sleep(0.2)
    proc.kill()
    pytest.fail("the paused scene never started")


# -- the batch on a local Ray ------------------------------------------------------------------
def test_batch_maps_equal_run_and_damaged_scenes_do_not_stop_the_others(scenes, tmp_path):
    good = copy_scenes(scenes[:3], tmp_path / "batch")
    bad_cloud = Path(shutil.copytree(scenes[3], tmp_path / "batch" / "bad_cloud"))
    (bad_cloud / "cloud.ply").write_bytes(b"ply\nformat garbage\n\x00\x01")
    bad_depth = Path(shutil.copytree(scenes[3], tmp_path / "batch" / "bad_depth"))
    for png in (bad_depth / "depth").iterdir():
        png.write_bytes(png.read_bytes()[:40])        # truncated: no frame is readable
    rc, report, err = batch(str(tmp_path / "batch"), "--workers", "2")
    assert rc == 1, err                              # not every scene has a map
    res = by_scene(report)
    assert {n: r["status"] for n, r in res.items()} == {
        "bad_cloud": "failed", "bad_depth": "failed", "s0": "built", "s1": "built",
        "s2": "built"}
    assert "cloud.ply" in res["bad_cloud"]["reason"]
    assert "depth images can be read" in res["bad_depth"]["reason"]
    assert report["built"] == 3 and report["failed"] == 2 and not report["ok"]
    assert report["scenes_per_hour"] > 0 and len(report["workers"]) == 2
    assert f"FAILED bad_cloud: {res['bad_cloud']['reason']}" in err
    assert not (bad_cloud / "openmask3d").exists()

    # the same scenes mapped one by one with `openmask3d run`: identical maps
    single = copy_scenes(scenes[:3], tmp_path / "single")
    for s in single:
        assert cli(["run", str(s), *STEP]) == 0
    for b, s in zip(good, single):
        assert res[b.name]["instances"] == InstanceMap.load(s).num_instances
        assert_same_map(b, s)


def test_resume_after_an_interrupted_batch_builds_only_the_missing_scenes(scenes, tmp_path):
    root = tmp_path / "scenes"
    copy_scenes(scenes, root)
    pidfile = tmp_path / "paused.pid"
    # one worker, so s0 and s1 are built before s2, which pauses mid-scene: Ctrl-C then
    proc = subprocess.Popen(
        [*OPENMASK3D, "batch", str(root), *STEP, *SMALL, "--workers", "1", "--json"], cwd=REPO,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, TEST_PAUSE_ENV: f"s2:120:{pidfile}"})
    wait_for_pid(pidfile, proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    first = by_scene(json.loads(out))
    assert [first[s]["status"] for s in ("s0", "s1", "s2", "s3")] == \
        ["built", "built", "not run", "not run"]
    assert json.loads(out)["interrupted"]
    assert not (root / "s2" / "openmask3d" / "CURRENT").exists()
    stamps = {s: (root / s / "openmask3d" / "CURRENT").stat().st_mtime_ns for s in ("s0", "s1")}

    rc, report, err = batch(str(root), "--resume")
    assert rc == 0, err
    res = by_scene(report)
    assert [res[s]["status"] for s in ("s0", "s1", "s2", "s3")] == \
        ["skipped", "skipped", "built", "built"]
    assert report["ok"] and report["built"] == 2 and report["skipped"] == 2
    for s, stamp in stamps.items():               # untouched: same generation, same pointer
        assert (root / s / "openmask3d" / "CURRENT").stat().st_mtime_ns == stamp
        assert sorted(p.name for p in (root / s / "openmask3d").iterdir()
                      if p.name.startswith("gen-")) == ["gen-000001"]

    # all current: nothing to build, Ray is not even started; --eval pools the four scenes
    rc, report, err = batch(str(root), "--resume", "--eval", "--mode", "agnostic")
    assert rc == 0 and report["skipped"] == 4 and report["ray"] == {}, err
    assert report["eval"]["scenes"] == ["s0", "s1", "s2", "s3"]
    assert report["eval"]["results"]["agnostic"]["ap"] > 0
    # another configuration: rebuilt
    rc, report, err = batch(str(root / "s0"), "--resume", "--config", str(_cfg(tmp_path)))
    assert rc == 0 and report["built"] == 1, err


def test_a_worker_killed_mid_scene_is_replaced_and_its_scene_retried(scenes, tmp_path):
    root = tmp_path / "scenes"
    copy_scenes(scenes, root, names={"s0", "s1", "s2"})
    pidfile = tmp_path / "paused.pid"
    proc = subprocess.Popen(
        [*OPENMASK3D, "batch", str(root), *STEP, *SMALL, "--workers", "2", "--json"], cwd=REPO,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, TEST_PAUSE_ENV: f"s1:3:{pidfile}"})
    victim = wait_for_pid(pidfile, proc)
    os.kill(victim, signal.SIGKILL)                  # the worker process, mid-scene
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err
    report = json.loads(out)
    res = by_scene(report)
    assert all(r["status"] == "built" for r in res.values()), res
    assert res["s1"]["attempts"] == 2
    assert res["s1"]["worker_pid"] != victim
    assert f"worker process {victim} died" in res["s1"]["reason"]
    assert "retry  s1" in err
    assert InstanceMap.load(root / "s1").num_instances == res["s1"]["instances"]
    # the killed worker was restarted by Ray (models loaded again) and stayed in the pool
    assert sum(w["restarts"] for w in report["workers"]) <= 1


def test_the_same_command_runs_on_an_existing_ray_cluster(scenes, tmp_path):
    """--ray-address HOST:PORT: a cluster started by another process (its head lives as long as
    that process reads its stdin)."""
    head = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, ray; ctx = ray.init(address='local', num_cpus=2, include_dashboard=False, "
         "object_store_memory=100 * 2**20, logging_level='ERROR'); "
         "print(ctx.address_info['gcs_address'], flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        address = head.stdout.readline().strip()
        assert address, "the head did not start"
        root = tmp_path / "scenes"
        copy_scenes(scenes, root, names={"s0", "s1"})
        # the head enabled Ray's token auth (its default for a local cluster); a client given
        # an explicit address uses it only when told to, as Ray documents
        rc, report, err = batch(str(root), "--ray-address", address,
                                env={"RAY_AUTH_MODE": "token"})
        assert rc == 0, err
        assert report["ray"]["address"] == address and report["built"] == 2
    finally:
        head.stdin.close()
        head.wait(timeout=60)


def _cfg(tmp_path: Path) -> Path:
    path = tmp_path / "other.yaml"
    path.write_text("visibility:\n  k_view: 3\n")
    return path


# -- pieces that need no Ray -------------------------------------------------------------------
def test_map_is_current_follows_cloud_keyframes_and_configuration(scene_copy, tmp_path):
    scene = scene_copy(seed=0)                     # built by `openmask3d run --frame-step 2`
    cfg = PipelineConfig(frame_step=2)
    assert map_is_current(scene, cfg) == (True, "same files (name, size, mtime)")
    # run-only keys do not matter; result-shaping ones and other keyframes do
    assert map_is_current(scene, PipelineConfig(frame_step=2, threads=1, device="cpu"))[0]
    assert map_is_current(scene, PipelineConfig(frame_step=2).updated(
        {"visibility.k_view": 3})) == (False, "the configuration differs")
    assert map_is_current(scene, PipelineConfig(frame_step=4)) == \
        (False, "the configuration differs")
    # copied without times: same contents still count
    copy = tmp_path / "copy"
    shutil.copytree(scene, copy, copy_function=shutil.copyfile)
    assert map_is_current(copy, cfg) == (True, "same file contents")
    # a keyframe's pose or the cloud changed: not current
    pose = sorted((copy / "pose").iterdir())[0]
    pose.write_text(pose.read_text().replace("1.0", "1.00001", 1) + " ")
    assert map_is_current(copy, cfg) == (False, "the cloud or keyframe files changed")
    shutil.copyfile(scene / "pose" / pose.name, pose)
    with open(copy / "cloud.ply", "ab") as fh:
        fh.write(b"\n")
    assert not map_is_current(copy, cfg)[0]
    # a keyframe less (frames 18 and 19 of 20 gone): other keyframes
    for sub, ext in (("color", "png"), ("depth", "png"), ("pose", "txt")):
        for frame in (18, 19):
            (copy / sub / f"{frame}.{ext}").unlink()
    assert map_is_current(copy, cfg) == (False, "the keyframes differ")
    # no map / an older map without the record / a damaged map
    assert map_is_current(tmp_path, cfg) == (False, "no map")
    gen = scene / "openmask3d" / "gen-000001"
    data = json.loads((gen / "meta.json").read_text())
    data.pop("inputs")
    (gen / "meta.json").write_text(json.dumps(data))
    assert "older version" in map_is_current(scene, cfg)[1]
    (gen / "meta.json").write_text("{not json")
    assert "unreadable" in map_is_current(scene, cfg)[1]


def test_inputs_record_round_trips_and_old_maps_still_load():
    meta = MapMeta.from_json({"inputs": {"keyframes": 3, "files": 12, "stat_sha256": "a",
                                         "content_sha256": "b", "config_sha256": "c"}})
    assert meta.inputs.keyframes == 3 and meta.inputs.masks_sha256 is None
    assert MapMeta.from_json(meta.to_json()) == meta
    assert MapMeta.from_json({}).inputs is None
    assert MapMeta.from_json({"inputs": None}).inputs is None


def test_scene_discovery_and_sizes(scenes, tmp_path):
    root = tmp_path / "data"
    copy_scenes(scenes[:2], root)
    (root / "notes").mkdir()
    found, notes = find_scene_folders([str(root), str(root / "s0"), str(root / "s*")])
    assert [p.name for p in found] == ["s0", "s1"]
    assert any("notes" in n for n in notes) and any("duplicate" in n for n in notes)
    assert parse_size("8GB") == 8 * 10 ** 9 and parse_size("512MiB") == 512 * 2 ** 20
    with pytest.raises(ValueError):
        parse_size("lots")
    # a path that is not there, or a pattern matching nothing: usage error before any Ray
    assert cli(["batch", str(tmp_path / "missing")]) == 2
    assert cli(["batch", str(tmp_path / "nothing*")]) == 2


def test_only_the_batch_imports_ray(scene_copy):
    """The node and `openmask3d run` never import Ray (it is optional for them)."""
    code = ("import sys; from openmask3d_ros.cli import main; "
            f"rc = main(['run', {str(scene_copy(0))!r}, '--frame-step', '2']); "
            "assert rc == 0; assert 'ray' not in sys.modules, 'ray imported'")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    allowed = {REPO / "openmask3d_ros/core/batch.py"}
    for path in (REPO / "openmask3d_ros").rglob("*.py"):
        if path in allowed:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n == "ray" or n.startswith("ray.") for n in names), path


def test_workers_follow_the_resources_per_scene():
    node = {"CPU": 16.0, "GPU": 1.0, "memory": 64e9}
    assert plan_workers(node, 100, 1, 0, None, None) == 16       # CPU only: one a core
    assert plan_workers(node, 100, 4, 1, None, None) == 1        # one a GPU
    assert plan_workers(node, 100, 4, 0.5, None, None) == 2      # two share the GPU
    assert plan_workers(node, 100, 1, 0, int(20e9), None) == 3   # memory bounds them
    assert plan_workers(node, 3, 1, 0, None, None) == 3          # never more than scenes
    assert plan_workers(node, 100, 1, 0, None, 2) == 2
    with pytest.raises(BatchError, match="cannot fit one worker"):
        plan_workers({"CPU": 2.0, "memory": 8e9}, 5, 1, 1, None, None)   # no GPU here
    with pytest.raises(BatchError):
        plan_workers(node, 5, 1, 0, None, 0)
