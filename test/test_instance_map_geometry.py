"""Centroids and boxes: computed once (vectorised), stored in instances.npz, read back by load()
and used by the query engine; maps written before they were stored still load and answer."""
import numpy as np
import pytest

from openmask3d_ros.core import instance_map as im
from openmask3d_ros.core.encoders.colour import ColourEncoder
from openmask3d_ros.core.instance_map import InstanceMap
from openmask3d_ros.core.query import QueryEngine


@pytest.fixture
def imap():
    rng = np.random.default_rng(3)
    pts = rng.normal(size=(5000, 3)).astype(np.float32)
    idx = [rng.choice(5000, n, replace=False).astype(np.int64) for n in (40, 1, 0, 700, 3)]
    enc = ColourEncoder()
    return InstanceMap(pts, idx, enc.encode_text(["red", "green", "blue", "yellow", "white"]))


def _truth(m):
    c, lo, hi = [], [], []
    for idx in m.point_indices:
        p = m.points[idx].astype(np.float64)
        nan = np.full(3, np.nan)
        c.append(p.mean(0) if len(p) else nan)
        lo.append(p.min(0) if len(p) else nan)
        hi.append(p.max(0) if len(p) else nan)
    return np.array(c), np.array(lo), np.array(hi)


def test_geometry_matches_per_instance_numpy_including_empty_instances(imap):
    c, lo, hi = _truth(imap)
    np.testing.assert_allclose(imap.centroids(), c, atol=1e-6)
    got_lo, got_hi = imap.boxes()
    np.testing.assert_array_equal(got_lo, lo)
    np.testing.assert_array_equal(got_hi, hi)


def test_stored_geometry_is_loaded_and_used_without_recomputing(imap, tmp_path, monkeypatch):
    gen = imap.save(tmp_path / "map")
    with np.load(gen / "instances.npz") as data:
        c, lo, hi = _truth(imap)
        np.testing.assert_allclose(data["centroids"], c, atol=1e-5)
        np.testing.assert_array_equal(data["bbox_min"], lo.astype(np.float32))
        np.testing.assert_array_equal(data["bbox_max"], hi.astype(np.float32))

    def no_recompute(*_):
        raise AssertionError("geometry recomputed although the map file stores it")
    monkeypatch.setattr(im, "instance_geometry", no_recompute)
    loaded = InstanceMap.load(tmp_path / "map")
    engine = QueryEngine(loaded, ColourEncoder())
    (hit,) = engine.query("yellow", top_k=1, min_relevance=0.0,
                          include_structure=True)
    assert hit.instance_id == 3
    np.testing.assert_allclose(hit.centroid, c[3], atol=1e-5)
    np.testing.assert_array_equal(hit.bbox_min, lo[3].astype(np.float32))
    np.testing.assert_array_equal(hit.points, imap.points[imap.point_indices[3]])


def test_map_file_without_geometry_still_loads_and_answers(imap, tmp_path):
    gen = imap.save(tmp_path / "map")
    with np.load(gen / "instances.npz") as data:      # rewrite as an older version did
        old = {k: data[k] for k in ("point_indices", "offsets", "features", "num_points")}
    np.savez_compressed(gen / "instances.npz", **old)
    loaded = InstanceMap.load(tmp_path / "map")
    c, lo, hi = _truth(imap)
    np.testing.assert_allclose(loaded.centroids(), c, atol=1e-6)
    np.testing.assert_array_equal(loaded.boxes()[1], hi)
    (hit,) = QueryEngine(loaded, ColourEncoder()).query("red", top_k=1, min_relevance=0.0,
                                                       include_structure=True)
    assert hit.instance_id == 0
    np.testing.assert_allclose(hit.centroid, c[0], atol=1e-6)
