"""Voxel downsampling of a map's instances: the centroids of each instance's occupied voxels,
as a naive per-instance computation gives them, computed once per map and voxel size."""
import numpy as np
import pytest

from openmask3d_ros.core.encoders.colour import ColourEncoder
from openmask3d_ros.core.instance_map import InstanceMap
from openmask3d_ros.core.query import QueryEngine
from openmask3d_ros.core.voxel import group_voxel_centroids


def _naive(points: np.ndarray, size: float) -> np.ndarray:
    """Centroids of the occupied voxels of one point set, in (x, y, z) voxel order."""
    keys = np.floor(points.astype(np.float64) / size).astype(np.int64)
    cells: dict = {}
    for key, p in zip(map(tuple, keys), points.astype(np.float64)):
        cells.setdefault(key, []).append(p)
    return np.array([np.mean(cells[k], axis=0) for k in sorted(cells)], np.float32)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("size", [0.013, 0.05, 0.4])
def test_group_centroids_match_each_group_on_its_own(seed, size):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(0, 300, 7)                    # an empty group may occur
    groups = [rng.normal(rng.uniform(-3, 3, 3), rng.uniform(0.02, 0.5), (n, 3)) for n in sizes]
    pts = np.concatenate(groups).astype(np.float32)
    off = np.concatenate([[0], np.cumsum(sizes)])
    got, got_off = group_voxel_centroids(pts, off, size)
    for g, part in enumerate(groups):
        want = _naive(part.astype(np.float32), size) if len(part) else np.zeros((0, 3))
        np.testing.assert_allclose(got[got_off[g]:got_off[g + 1]], want, atol=1e-5)


def test_group_centroids_refuse_a_size_that_is_not_positive():
    with pytest.raises(ValueError, match="voxel size"):
        group_voxel_centroids(np.zeros((3, 3), np.float32), np.array([0, 3]), 0.0)


def test_engine_voxelises_once_per_size_and_keeps_the_latest_sizes():
    rng = np.random.default_rng(5)
    pts = rng.uniform(0, 2, (3000, 3)).astype(np.float32)
    indices = [np.arange(0, 1000), np.arange(1000, 3000), np.arange(500, 1500)]  # overlapping
    enc = ColourEncoder()
    engine = QueryEngine(InstanceMap(pts, indices, enc.encode_text(["red", "green", "blue"])),
                         enc)
    first = engine.voxel_points(0.1)
    vp, off = first
    for m, idx in enumerate(indices):
        np.testing.assert_allclose(vp[off[m]:off[m + 1]], _naive(pts[idx], 0.1), atol=1e-5)
    assert engine.voxel_points(0.1) is first                  # the second ask only reads
    for size in (0.2, 0.3, 0.4, 0.5):
        engine.voxel_points(size)
    assert engine.voxel_points(0.1) is not first              # evicted after 4 newer sizes
    np.testing.assert_array_equal(engine.voxel_points(0.1)[0], vp)


@pytest.mark.parametrize("size", [0.01, 0.3, 1e-12])     # 1e-12: the grid overflows int64 keys
def test_voxel_keys_sort_like_voxel_rows(size):
    """The int64 keys (and the row fallback of a huge grid) give np.unique(rows, axis=0)'s
    first indices and inverse: what the DBSCAN split and the cloud cap rely on."""
    from openmask3d_ros.core.voxel import unique_keys, voxel_keys
    rng = np.random.default_rng(5)
    pts = rng.normal(0, 2, (5000, 3))
    pts[2500:] = pts[:2500]                               # repeated points share a voxel
    rows = np.floor(pts / size).astype(np.int64)
    _, first, inverse = np.unique(rows, axis=0, return_index=True, return_inverse=True)
    keys = voxel_keys(pts, size)
    assert keys.ndim == (2 if size < 1e-6 else 1)
    _, got_first, got_inverse = unique_keys(keys, return_index=True, return_inverse=True)
    np.testing.assert_array_equal(got_first, first)
    np.testing.assert_array_equal(got_inverse, inverse.reshape(-1))
