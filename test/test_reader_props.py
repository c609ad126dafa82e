"""Property-based tests of the file readers: random and mutated files never raise anything but
InputError, and valid files round-trip (ply, map npz, meta.json, scene.json, intrinsics, pose,
images, masks, config)."""
import json
import os
import shutil
import tempfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from openmask3d_ros.core import map_versions
from openmask3d_ros.core.config import PipelineConfig, load_config
from openmask3d_ros.core.errors import InputError
from openmask3d_ros.core.instance_map import InstanceMap, read_instances, read_meta
from openmask3d_ros.core.pipeline import _read_masks
from openmask3d_ros.core.scene import (SceneFolder, SceneWriter, read_image, read_matrix, read_ply,
                                       read_scene_json, write_ply)
from openmask3d_ros.core.camera import Intrinsics

from mutations import mutated  # test/mutations.py

SETTINGS = settings(max_examples=int(os.environ.get("HYPOTHESIS_EXAMPLES", 60)), deadline=None,
                    derandomize=not os.environ.get("HYPOTHESIS_EXAMPLES"),
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])


def files(original: bytes):
    """Random bytes, or ``original`` mutated."""
    return st.one_of(st.binary(max_size=512), mutated(original))


def only_input_error(fn, *args):
    try:
        fn(*args)
    except InputError:
        pass


@pytest.fixture(scope="module")
def work():
    with tempfile.TemporaryDirectory() as d:
        yield Path(d)


@pytest.fixture(scope="module")
def valid_map(work):
    """A small map with its generation folder: (points, gen folder)."""
    rng = np.random.default_rng(0)
    pts = rng.normal(size=(200, 3)).astype(np.float32)
    idx = [np.arange(0, 50), np.arange(60, 61), np.arange(100, 200)]
    feats = rng.normal(size=(3, 8)).astype(np.float32)
    gen = InstanceMap(pts, idx, feats, {"note": "x"}).save(work / "map", keep=1)
    return pts, gen


# -- damaged files: InputError only ------------------------------------------------------------
@SETTINGS
@given(data=st.data())
def test_ply_reader(valid_map, work, data):
    path = work / "p.ply"
    path.write_bytes(data.draw(files((valid_map[1] / "cloud.ply").read_bytes()[:3000])))
    only_input_error(read_ply, path)


@SETTINGS
@given(data=st.data())
def test_map_npz_reader(valid_map, work, data):
    path = work / "i.npz"
    path.write_bytes(data.draw(files((valid_map[1] / "instances.npz").read_bytes())))
    only_input_error(read_instances, path, 200)


@SETTINGS
@given(data=st.data())
def test_map_meta_reader(valid_map, work, data):
    path = work / "meta.json"
    path.write_bytes(data.draw(files((valid_map[1] / "meta.json").read_bytes())))
    only_input_error(read_meta, path)


@SETTINGS
@given(data=st.data(), which=st.sampled_from(["cloud.ply", "instances.npz", "meta.json"]))
def test_whole_map_load(valid_map, work, data, which):
    """Any one file of a generation damaged: loading is refused with InputError (or, when the
    damage is harmless, the map still matches its cloud)."""
    gen = work / "gen-000001"
    if gen.exists():
        shutil.rmtree(gen)
    shutil.copytree(valid_map[1], gen)
    (gen / which).write_bytes(data.draw(mutated((valid_map[1] / which).read_bytes())))
    try:
        imap = InstanceMap.load(gen)
    except InputError:
        return
    assert all(len(i) == 0 or i.max() < len(imap.points) for i in imap.point_indices)


@SETTINGS
@given(data=st.data())
def test_scene_json_reader(work, data):
    path = work / "scene.json"
    path.write_bytes(data.draw(files(b'{"depth_scale": 1000.0, "keyframe_step": 10}')))
    only_input_error(read_scene_json, path)
    root = work / "sj"
    root.mkdir(exist_ok=True)
    shutil.copy(path, root / "scene.json")
    only_input_error(SceneFolder, root)


@SETTINGS
@given(data=st.data())
def test_matrix_reader_intrinsics_and_pose(work, data):
    text = b"525.0 0 319.5 0\n0 525.0 239.5 0\n0 0 1 0\n0 0 0 1\n"
    path = work / "m.txt"
    path.write_bytes(data.draw(files(text)))
    only_input_error(read_matrix, path)


@pytest.fixture(scope="module")
def tiny_scene(work):
    root = work / "tiny"
    w = SceneWriter(root)
    K = Intrinsics(np.array([[50.0, 0, 16], [0, 50.0, 12], [0, 0, 1]]), 32, 24)
    w.write_intrinsics(K)
    rgb = np.random.default_rng(0).integers(0, 255, (24, 32, 3), dtype=np.uint8)
    w.write_frame(0, rgb, np.full((24, 32), 1.5), np.eye(4))
    write_ply(root / "cloud.ply", np.zeros((5, 3), np.float32))
    return root


@SETTINGS
@given(data=st.data(), which=st.sampled_from(["intrinsic/intrinsic_depth.txt",
                                              "intrinsic/intrinsic_color.txt"]))
def test_intrinsics_checked_against_images(tiny_scene, work, data, which):
    root = work / "tiny_copy"
    if root.exists():
        shutil.rmtree(root)
    shutil.copytree(tiny_scene, root)
    (root / which).write_bytes(data.draw(files((tiny_scene / which).read_bytes())))
    scene = SceneFolder(root)
    only_input_error(scene.depth_intrinsics)
    only_input_error(scene.color_intrinsics)


@SETTINGS
@given(data=st.data(), which=st.sampled_from(["color/0.png", "depth/0.png"]))
def test_image_reader(tiny_scene, work, data, which):
    path = work / "img.png"
    path.write_bytes(data.draw(files((tiny_scene / which).read_bytes())))
    only_input_error(read_image, path)


@SETTINGS
@given(data=st.data())
def test_masks_reader(work, data):
    path = work / "m.npy"
    np.save(path, np.eye(20, 4, dtype=bool))
    path.write_bytes(data.draw(files(path.read_bytes())))
    only_input_error(_read_masks, path, 20)


@SETTINGS
@given(data=st.data())
def test_config_reader(work, data):
    path = work / "c.yaml"
    text = b"pipeline:\n  frame_step: 5\n  visibility: {k_view: 3, k_threshold: 0.2}\n" \
           b"  crops: {levels: 2, k_exp: 0.1}\n"
    path.write_bytes(data.draw(files(text)))
    only_input_error(load_config, path)


# -- valid files round-trip -----------------------------------------------------------------------
finite = st.floats(-1e6, 1e6, allow_nan=False, width=32)


@SETTINGS
@given(n=st.integers(1, 50), seed=st.integers(0, 2 ** 16), colour=st.booleans())
def test_ply_round_trip(work, n, seed, colour):
    rng = np.random.default_rng(seed)
    pts = (rng.normal(size=(n, 3)) * rng.uniform(0.01, 1e4)).astype(np.float32)
    cols = rng.integers(0, 256, (n, 3), dtype=np.uint8) if colour else None
    write_ply(work / "rt.ply", pts, cols)
    got, gcols = read_ply(work / "rt.ply")
    assert np.array_equal(got, pts)
    assert np.array_equal(gcols, cols if colour else np.full((n, 3), 128, np.uint8))


@SETTINGS
@given(n=st.integers(1, 60), m=st.integers(0, 5), d=st.integers(1, 6), seed=st.integers(0, 999))
def test_map_round_trip(work, n, m, d, seed):
    rng = np.random.default_rng(seed)
    pts = rng.normal(size=(n, 3)).astype(np.float32)
    idx = [np.sort(rng.choice(n, rng.integers(1, n + 1), replace=False)) for _ in range(m)]
    feats = rng.normal(size=(m, d)).astype(np.float32)
    root = work / "rt_map"
    gen = InstanceMap(pts, idx, feats, {"k": [1, 2]}).save(root, keep=2)   # key of another version
    got = InstanceMap.load(root)
    assert got.meta.generation == gen.name == map_versions.current(root).name
    assert np.array_equal(got.points, pts) and np.array_equal(got.features, feats)
    assert all(np.array_equal(a, b) for a, b in zip(got.point_indices, idx))
    assert got.meta.extra == {"k": [1, 2]} and len(map_versions.generations(root)) <= 2


@SETTINGS
@given(M=st.lists(st.lists(finite, min_size=4, max_size=4), min_size=4, max_size=4))
def test_matrix_round_trip(work, M):
    M = np.array(M, dtype=np.float64)
    np.savetxt(work / "pose.txt", M, fmt="%.17g")
    assert np.array_equal(read_matrix(work / "pose.txt"), M)


@SETTINGS
@given(k_view=st.integers(1, 20), levels=st.integers(1, 5), k_exp=st.floats(0, 1),
       step=st.integers(1, 50))
def test_config_round_trip(work, k_view, levels, k_exp, step):
    cfg = PipelineConfig().updated({"visibility.k_view": k_view, "crops.levels": levels,
                                    "crops.k_exp": k_exp, "frame_step": step})
    (work / "rt.yaml").write_text(yaml.safe_dump({"pipeline": cfg.to_dict()}))
    assert load_config(work / "rt.yaml") == cfg


@SETTINGS
@given(obj=st.dictionaries(st.text(max_size=8), st.integers() | st.text(max_size=8), max_size=5))
def test_scene_json_round_trip(work, obj):
    (work / "ok.json").write_text(json.dumps(obj))
    assert read_scene_json(work / "ok.json") == obj


def test_image_round_trip(tiny_scene):
    depth = read_image(tiny_scene / "depth" / "0.png")
    assert depth.dtype == np.uint16 and depth.shape == (24, 32) and np.all(depth == 1500)
    assert read_image(tiny_scene / "color" / "0.png", cv2.IMREAD_COLOR).shape == (24, 32, 3)
