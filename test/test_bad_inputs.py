"""Corrupt and inconsistent inputs: exit status 2 and one line naming the file or field, never a
traceback, never a silently wrong map (the cases of the hostile pass in issue 11)."""
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import zlib
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


# -- query images (issue 21: F1, W1) and render --query (W2) -------------------------------------
def solid_png(path: Path, width: int, height: int, grey: int = 128) -> Path:
    """A one-colour greyscale PNG written row by row: a 20000 x 20000 one is ~0.4 MB on disk and
    never in memory here (the decoder would need 1.2 GB for it)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data +
                struct.pack(">I", zlib.crc32(kind + data)))
    comp = zlib.compressobj(6)
    rows = (b"\x00" + bytes([grey]) * width) * 100          # filter byte + pixels, 100 rows
    idat = [comp.compress(rows) for _ in range(height // 100)]
    idat.append(comp.compress((b"\x00" + bytes([grey]) * width) * (height % 100)) + comp.flush())
    path.write_bytes(b"\x89PNG\r\n\x1a\n" +
                     chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)) +
                     chunk(b"IDAT", b"".join(idat)) + chunk(b"IEND", b""))
    return path


# The CLI in a fresh process that writes its peak RSS (VmHWM of its own address space) to a file
# on the way out. Not getrusage: Linux counts the peak of the forking parent (this test process,
# hundreds of MB after other tests) into a child's ru_maxrss.
_MEASURED = ("import sys\n"
             "from openmask3d_ros.cli import main\n"
             "code = main(sys.argv[2:])\n"
             "hwm = next(ln for ln in open('/proc/self/status') if ln.startswith('VmHWM'))\n"
             "open(sys.argv[1], 'w').write(hwm.split()[1])\n"
             "sys.exit(code)\n")


def run_measured(argv: list[str]) -> tuple[int, float, str]:
    """(exit status, peak RSS in MB, stderr) of ``openmask3d ARGV`` run in a subprocess."""
    with tempfile.TemporaryDirectory() as tmp:
        peak = Path(tmp) / "peak_kb"
        run = subprocess.run([sys.executable, "-c", _MEASURED, str(peak), *argv],
                             capture_output=True, text=True, timeout=120,
                             env=dict(os.environ, OMP_NUM_THREADS="1"))
        return run.returncode, int(peak.read_text()) / 1024, run.stderr


def test_a_huge_query_image_is_refused_from_its_header_in_bounded_memory(scene, tmp_path):
    """F1: a 0.4 MB PNG of 20000 x 20000 pixels took 12 GB and 26 s; it is refused from its
    header (exit 2 naming the file, its size and the limit) and the process stays small. An
    image just within the limit (4096 x 4096) is answered, shrunk before encoding."""
    huge = solid_png(tmp_path / "huge.png", 20000, 20000)
    assert huge.stat().st_size < 1_000_000
    code, peak_mb, err = run_measured(["query", str(scene), "--image", str(huge)])
    assert code == 2, err
    line = err.strip().splitlines()[-1]
    for needle in ("huge.png", "20000x20000", "16,777,216", "query.max_image_pixels"):
        assert needle in line, line
    assert "Traceback" not in err and peak_mb < 300, (peak_mb, err)
    largest = solid_png(tmp_path / "largest.png", 4096, 4096)
    code, peak_mb, err = run_measured(["query", str(scene), "--image", str(largest)])
    assert code == 0 and peak_mb < 400, (peak_mb, err)


def test_query_image_limit_is_a_config_value(scene, tmp_path, capsys):
    small = tmp_path / "small.png"
    cv2.imwrite(str(small), np.full((60, 50, 3), 200, np.uint8))
    cfg = tmp_path / "limit.yaml"
    cfg.write_text("query: {max_image_pixels: 2000}\n")
    fails(capsys, ["query", str(scene), "--image", str(small), "--config", str(cfg)],
          "small.png", "50x60", "2,000")
    assert cli(["query", str(scene), "--image", str(small)]) == 0


@pytest.mark.parametrize("kind", ["missing", "folder", "text", "truncated"])
def test_unusable_query_image_is_named_without_library_noise(scene, tmp_path, kind):
    """W1: a missing file is said to be missing; no OpenCV/libpng line reaches the terminal."""
    path = {"missing": tmp_path / "nonexistent.png", "folder": tmp_path}.get(kind)
    if kind == "text":
        path = tmp_path / "notes.png"
        path.write_text("not an image\n")
    elif kind == "truncated":
        path = tmp_path / "cut.png"
        cv2.imwrite(str(path), np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8))
        truncate(path, 0.5)
    code, _, err = run_measured(["query", str(scene), "--image", str(path)])
    lines = [ln for ln in err.splitlines() if not ln.startswith("INFO ")]
    assert code == 2 and len(lines) == 1, err
    assert str(path) in lines[0] and "Traceback" not in err
    assert {"missing": "does not exist", "folder": "not a file", "text": "not a readable image",
            "truncated": "cannot be decoded"}[kind] in lines[0]


def test_render_refuses_an_empty_query_as_query_does(scene, tmp_path, capsys):
    """W2: `render --query ""` drew the unlabelled instance picture and exited 0."""
    out = tmp_path / "q.png"
    for text in ("", "   "):
        fails(capsys, ["render", str(scene), "--query", text, "--out", str(out)], "--query",
              "empty")
        fails(capsys, ["query", str(scene), text], "non-empty query text")
    assert not out.exists()


# -- masks files that would give an empty map (W4) ------------------------------------------------
def test_all_zero_masks_are_refused_and_the_good_map_stays_current(scene, capsys):
    before = gen(scene).name
    n = len(read_ply(scene / "cloud.ply")[0])
    for name, masks in (("zeros.npy", np.zeros((n, 5), np.float32)),
                        ("none.npy", np.zeros((n, 0), bool))):
        np.save(scene.parent / name, masks)
        fails(capsys, ["run", str(scene), *STEP, "--masks", str(scene.parent / name)], name,
              "no usable mask")
    assert gen(scene).name == before and InstanceMap.load(scene).num_instances > 0


def test_a_build_with_no_instance_left_never_replaces_the_map(scene, capsys, tmp_path):
    """Every mask under proposals.min_mask_points (paper mode drops them): no instance is left,
    and that is an error, not an empty map made current."""
    before = gen(scene).name
    masks = np.zeros((len(read_ply(scene / "cloud.ply")[0]), 3), bool)
    masks[:5, :] = True                              # 5 points each, under the 20 required
    np.save(tmp_path / "tiny.npy", masks)
    (tmp_path / "paper.yaml").write_text("fidelity: paper\n")
    fails(capsys, ["run", str(scene), *STEP, "--masks", str(tmp_path / "tiny.npy"),
                   "--config", str(tmp_path / "paper.yaml")], "no instance", "no map was written")
    assert gen(scene).name == before
