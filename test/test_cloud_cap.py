"""A cloud larger than max_cloud_points is thinned before the build (issue 21, W14): the map is
built on at most that many original points, keeps their indices into the input cloud, and still
finds every object."""
import numpy as np
import pytest

from openmask3d_ros.core.cloud_cap import cap_cloud
from openmask3d_ros.core.config import PipelineConfig
from openmask3d_ros.core.errors import InputError
from openmask3d_ros.core.instance_map import SOURCE_INDEX_FILE, InstanceMap
from openmask3d_ros.core.pipeline import run_pipeline
from openmask3d_ros.core.query import open_map
from openmask3d_ros.core.scene import SceneFolder
from openmask3d_ros.core.synthetic import make_scene


@pytest.mark.parametrize("seed,cap", [(0, 1000), (1, 20000), (2, 123457)])
def test_thinned_cloud_is_a_bounded_subset_one_point_per_voxel(seed, cap):
    rng = np.random.default_rng(seed)
    # a dense floor and a box: surfaces, as scans are
    floor = np.c_[rng.uniform(0, 4, (150_000, 2)), rng.normal(0, 0.002, 150_000)]
    box = rng.uniform([1, 1, 0], [1.5, 1.4, 0.8], (60_000, 3))
    points = np.vstack([floor, box]).astype(np.float32)
    colors = rng.integers(0, 255, (len(points), 3), dtype=np.uint8)
    out = cap_cloud(points, colors, cap)
    if cap >= len(points):
        assert out.source_index is None and out.points is points
        return
    assert 0.25 * cap <= len(out.points) <= cap, len(out.points)
    assert np.all(np.diff(out.source_index) > 0)                 # input order, no repeats
    np.testing.assert_array_equal(out.points, points[out.source_index])
    np.testing.assert_array_equal(out.colors, colors[out.source_index])
    cells = np.floor(out.points.astype(np.float64) / out.voxel).astype(np.int64)
    assert len(np.unique(cells, axis=0)) == len(cells)           # one point per voxel
    assert out.source_points == len(points)


def test_no_cap_keeps_the_cloud():
    points = np.zeros((10, 3), np.float32)
    assert cap_cloud(points, None, 0).source_index is None
    assert cap_cloud(points, None, 10).source_index is None


def _dense_scene(root, seed: int, factor: int = 4):
    """The synthetic scene with its cloud densified ``factor`` times (3 mm jitter, as a dense
    scan), and each dense point's ground-truth instance id."""
    from openmask3d_ros.core.scene import write_ply
    scene = SceneFolder(root)
    points, colors = scene.cloud()
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(points), factor * len(points))
    dense = (points[pick] + rng.normal(0, 0.003, (len(pick), 3))).astype(np.float32)
    write_ply(scene.cloud_path, dense, colors[pick])
    return dense, scene.ground_truth().instance_ids[pick]


@pytest.mark.parametrize("seed", [3, 11])
def test_map_built_on_a_thinned_cloud_finds_objects_and_maps_back(tmp_path, seed):
    root = make_scene(tmp_path / "scene", seed=seed, num_frames=60, width=256, height=192)
    cap = len(SceneFolder(root).cloud()[0])          # a 4x denser scan, thinned back
    points, truth_ids = _dense_scene(root, seed)
    cfg = PipelineConfig().updated({"max_cloud_points": cap})
    run_pipeline(root, cfg, cache="off")
    imap = InstanceMap.load(root)
    assert len(imap.points) <= cap
    assert imap.meta.cloud.source_points == len(points) and imap.meta.cloud.voxel > 0
    np.testing.assert_array_equal(imap.points, points[imap.source_index])
    labels = SceneFolder(root).ground_truth().labels
    engine = open_map(root)
    checked = 0
    for gid, info in labels.items():
        if info.get("color") not in ("red", "green", "blue", "yellow"):
            continue
        top = engine.query(info["color"], top_k=1)[0]
        got = imap.source_indices(top.instance_id)
        truth = imap.source_index[truth_ids[imap.source_index] == gid]
        iou = len(np.intersect1d(truth, got)) / len(np.union1d(truth, got))
        assert iou >= 0.5, f"{info['color']} {info['label']}: IoU {iou:.2f}"
        checked += 1
    assert checked >= 3


def test_damaged_source_index_is_refused_naming_the_file(tmp_path):
    root = make_scene(tmp_path / "scene", seed=4, num_frames=30, width=160, height=120)
    points, _ = SceneFolder(root).cloud()
    run_pipeline(root, PipelineConfig().updated({"max_cloud_points": len(points) // 2}),
                 cache="off")
    path = next((root / "openmask3d").rglob(SOURCE_INDEX_FILE))
    np.save(path, np.arange(5))
    with pytest.raises(InputError, match=SOURCE_INDEX_FILE):
        InstanceMap.load(root)


def test_negative_cap_is_refused():
    with pytest.raises(InputError, match="max_cloud_points"):
        PipelineConfig().updated({"max_cloud_points": -1}).validate()
