"""DBSCAN split of masks into spatially contiguous parts (eps 0.95)."""
import numpy as np

from openmask3d_ros.core.dbscan_split import split_masks


def blob(centre, n, rng, spread=0.1):
    return np.asarray(centre) + rng.normal(scale=spread, size=(n, 3))


def test_mask_with_two_far_parts_is_split_in_two():
    rng = np.random.default_rng(0)
    pts = np.concatenate([blob([0, 0, 0], 200, rng), blob([3, 0, 0], 150, rng)])
    masks = np.ones((len(pts), 1), bool)
    out = split_masks(pts, masks, eps=0.95)
    assert out.shape == (350, 2)
    sizes = sorted(out.sum(axis=0).tolist())
    assert sizes == [150, 200]
    assert not (out[:, 0] & out[:, 1]).any()


def test_contiguous_mask_is_kept_whole_and_other_points_untouched():
    rng = np.random.default_rng(1)
    pts = np.concatenate([blob([0, 0, 0], 100, rng), blob([0.6, 0, 0], 100, rng),
                          blob([9, 9, 9], 30, rng)])
    masks = np.zeros((len(pts), 1), bool)
    masks[:200, 0] = True
    out = split_masks(pts, masks, eps=0.95)
    assert out.shape[1] == 1 and out[:200, 0].all() and not out[200:, 0].any()


def test_small_parts_dropped_by_min_mask_points():
    rng = np.random.default_rng(2)
    pts = np.concatenate([blob([0, 0, 0], 100, rng), blob([5, 0, 0], 5, rng)])
    out = split_masks(pts, np.ones((105, 1), bool), eps=0.95, min_mask_points=10)
    assert out.shape[1] == 1 and out.sum() == 100
