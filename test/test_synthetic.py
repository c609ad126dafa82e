"""The pybullet synthetic scene generator: layout, determinism, ground truth and camera conventions."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

pytest.importorskip("pybullet")

from openmask3d_ros.core.camera import project  # noqa: E402
from openmask3d_ros.core.scene import SceneFolder  # noqa: E402
from openmask3d_ros.core.synthetic import FLOOR_RGB, PALETTE, TABLE_RGB, make_scene  # noqa: E402

W, H, FRAMES = 160, 120, 20


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    root = make_scene(tmp_path_factory.mktemp("synth") / "scene", seed=3, num_frames=FRAMES,
                      width=W, height=H)
    return SceneFolder(root)


def _spec(scene):
    return scene.meta["synthetic"]


def test_layout_is_a_readable_scene_folder(scene):
    assert len(scene.frame_ids) == FRAMES
    K = scene.color_intrinsics()
    assert (K.width, K.height) == (W, H)
    assert K.K[0, 0] == pytest.approx((H / 2) / np.tan(np.radians(30)), rel=1e-5)
    assert K.K[0, 0] == pytest.approx(K.K[1, 1])
    assert abs(K.K[0, 2] - W / 2) <= 1 and abs(K.K[1, 2] - H / 2) <= 1
    assert scene.depth_intrinsics().K == pytest.approx(K.K)
    d = scene.depth(scene.frame_ids[0])
    assert d.shape == (H, W) and d.dtype == np.float32
    valid = d[d > 0]
    assert valid.size > 0.5 * d.size
    assert 0.3 < valid.min() and valid.max() < 8.0
    assert scene.color(scene.frame_ids[0]).shape == (H, W, 3)
    assert scene.meta["depth_scale"] == 1000.0
    pts, cols = scene.cloud()
    assert 5_000 < len(pts) < 100_000 and cols.shape == pts.shape


def test_ground_truth_instances(scene):
    gt = scene.ground_truth()
    spec = _spec(scene)
    pts, _ = scene.cloud()
    assert gt.instance_ids.shape == (len(pts),)
    objects = spec["objects"]
    assert 4 <= len(objects) <= 6
    k = len(objects)
    assert sorted(gt.labels) == list(range(1, k + 3))
    assert gt.labels[k + 1] == {"label": "table", "color": "brown"}
    assert gt.labels[k + 2] == {"label": "floor", "color": "grey"}
    colors = [gt.labels[o["instance_id"]]["color"] for o in objects]
    assert len(set(colors)) == len(colors) and set(colors) <= set(PALETTE)
    for o in objects:
        mine = pts[gt.instance_ids == o["instance_id"]]
        assert len(mine) >= 100, o
        assert gt.labels[o["instance_id"]]["label"] == o["label"]
        # on the table top, roughly where the spec put it, and 8-20 cm large
        assert mine[:, 2].min() == pytest.approx(spec["table_top_z"], abs=0.02)
        assert np.linalg.norm(mine[:, :2].mean(0) - o["position"][:2]) < 0.06
        assert 0.06 < (mine.max(0) - mine.min(0)).max() < 0.25
    # the floor is cropped to the table's surroundings
    floor = pts[gt.instance_ids == k + 2]
    assert np.all(np.abs(floor[:, 2]) < 0.01)
    assert np.abs(floor[:, :2]).max() < 1.2


def test_deterministic(tmp_path):
    a = make_scene(tmp_path / "a", seed=5, num_frames=6, width=W, height=H)
    b = make_scene(tmp_path / "b", seed=5, num_frames=6, width=W, height=H)
    for rel in ("cloud.ply", "ground_truth/instance_ids.npy", "ground_truth/labels.json",
                "depth/3.png", "color/3.png", "pose/3.txt", "scene.json"):
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel


def test_different_seed_different_layout(scene, tmp_path):
    other = SceneFolder(make_scene(tmp_path / "o", seed=4, num_frames=2, width=W, height=H))
    s1, s2 = _spec(scene), _spec(other)
    layout = lambda s: [(o["label"], o["color"], tuple(np.round(o["position"], 3)))  # noqa: E731
                        for o in s["objects"]]
    assert layout(s1) != layout(s2)
    assert not np.allclose(scene.pose(scene.frame_ids[0]), other.pose(other.frame_ids[0]))


def test_objects_do_not_touch(scene):
    gt = scene.ground_truth()
    pts, _ = scene.cloud()
    objs = _spec(scene)["objects"]
    for i, a in enumerate(objs):
        for b in objs[i + 1:]:
            pa = pts[gt.instance_ids == a["instance_id"]]
            pb = pts[gt.instance_ids == b["instance_id"]]
            gap = np.linalg.norm(pa[:, None, :2] - pb[None, :, :2], axis=2).min()
            assert gap > 0.03, (a["label"], b["label"], gap)


def test_pose_convention_looks_at_table(scene):
    top = _spec(scene)["table_top_z"]
    for fid in scene.frame_ids[::5]:
        T = scene.pose(fid)
        assert T[:3, :3] @ T[:3, :3].T == pytest.approx(np.eye(3), abs=1e-6)
        assert np.linalg.det(T[:3, :3]) == pytest.approx(1.0, abs=1e-6)
        forward = T[:3, 2]
        to_centre = np.array([0, 0, top]) - T[:3, 3]
        assert forward @ to_centre / np.linalg.norm(to_centre) > 0.999
        assert T[2, 1] < 0          # image y (down) points downward in the world
        assert abs(T[2, 0]) < 1e-6  # no roll: image x stays horizontal


def _visible(scene, fid, points):
    """Pixels (rows, cols) of the points that project into frame ``fid`` unoccluded."""
    K = scene.color_intrinsics().K
    uv, w = project(points.astype(np.float64), scene.pose(fid), K)
    ok = (w > 0) & np.all(np.isfinite(uv), axis=1)
    px = np.round(uv[ok]).astype(int)
    inside = (px[:, 0] >= 0) & (px[:, 0] < W) & (px[:, 1] >= 0) & (px[:, 1] < H)
    px, w = px[inside], w[ok][inside]
    depth = scene.depth(fid)[px[:, 1], px[:, 0]]
    unoccluded = np.abs(depth - w) < 0.015
    return px[unoccluded, 1], px[unoccluded, 0]


def test_cloud_projects_onto_rendered_objects(scene):
    """Camera pose and intrinsics are right: GT points of each object land on that object's
    pixels in the instance masks, and the image colour there is the object's colour."""
    gt = scene.ground_truth()
    pts, _ = scene.cloud()
    names = dict(PALETTE, table=TABLE_RGB, floor=FLOOR_RGB)
    refs = np.array(list(names.values()), dtype=np.float64)
    for o in _spec(scene)["objects"]:
        iid = o["instance_id"]
        mine = pts[gt.instance_ids == iid]
        hits, colours = [], []
        for fid in scene.frame_ids[::4]:
            rows, cols = _visible(scene, fid, mine)
            if len(rows) < 10:
                continue
            mask = cv2.imread(str(scene.root / "ground_truth" / "instance_masks" / f"{fid}.png"),
                              cv2.IMREAD_UNCHANGED)
            hits.append((mask[rows, cols] == iid).mean())
            colours.append(scene.color(fid)[rows, cols].astype(np.float64).mean(0))
        assert len(hits) >= 2, o
        assert np.mean(hits) > 0.9, (o["label"], hits)
        mean = np.mean(colours, axis=0)
        nearest = list(names)[int(np.argmin(np.linalg.norm(refs - mean, axis=1)))]
        assert nearest == o["color"], (o["label"], o["color"], mean)
        assert np.linalg.norm(mean - np.array(PALETTE[o["color"]])) < 110, (o, mean)


def test_table_and_floor_project_onto_their_pixels(scene):
    gt = scene.ground_truth()
    pts, _ = scene.cloud()
    k = len(_spec(scene)["objects"])
    fid = scene.frame_ids[7]
    mask = cv2.imread(str(scene.root / "ground_truth" / "instance_masks" / f"{fid}.png"),
                      cv2.IMREAD_UNCHANGED)
    for iid in (k + 1, k + 2):
        rows, cols = _visible(scene, fid, pts[gt.instance_ids == iid])
        assert len(rows) > 200
        assert (mask[rows, cols] == iid).mean() > 0.95


def test_other_resolution_scales_intrinsics(tmp_path):
    big = SceneFolder(make_scene(tmp_path / "big", seed=1, num_frames=2, width=240, height=180,
                                 num_objects=3))
    K = big.color_intrinsics()
    assert (K.width, K.height) == (240, 180)
    assert K.K[0, 0] == pytest.approx(90 / np.tan(np.radians(30)), rel=1e-5)
    assert big.color(big.frame_ids[1]).shape == (180, 240, 3)
    assert big.depth(big.frame_ids[1]).shape == (180, 240)
    assert len(big.meta["synthetic"]["objects"]) == 3
    assert big.ground_truth().instance_ids.max() == 5   # 3 objects, table, floor


def test_depth_noise_and_bad_arguments(tmp_path):
    noisy = SceneFolder(make_scene(tmp_path / "n", seed=0, num_frames=1, width=W, height=H,
                                   depth_noise=0.01))
    clean = SceneFolder(make_scene(tmp_path / "c", seed=0, num_frames=1, width=W, height=H))
    dn, dc = noisy.depth("0"), clean.depth("0")
    both = (dn > 0) & (dc > 0)
    diff = (dn - dc)[both]
    assert 0.005 < diff.std() < 0.02
    meta = json.loads((tmp_path / "n" / "scene.json").read_text())
    assert meta["synthetic"]["depth_noise"] == 0.01 and meta["depth_scale"] == 1000.0
    with pytest.raises(ValueError):
        make_scene(tmp_path / "x", num_objects=7, num_frames=1)
    with pytest.raises(ValueError):
        make_scene(tmp_path / "y", num_frames=0)


def test_rerun_replaces_old_scene_and_refuses_foreign_folders(tmp_path):
    root = make_scene(tmp_path / "s", seed=0, num_frames=4, width=W, height=H)
    make_scene(root, seed=0, num_frames=2, width=W, height=H)
    assert len(SceneFolder(root).frame_ids) == 2
    assert len(list((root / "ground_truth" / "instance_masks").iterdir())) == 2
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        make_scene(foreign, num_frames=1, width=W, height=H)
    assert (foreign / "notes.txt").read_text() == "keep me"
