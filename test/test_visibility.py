"""Visibility: in-view test, occlusion against measured depth, per-mask counts, view selection.

Both fidelity modes: ``paper`` (rounded pixels in [0, W-1], one-sided occlusion as the paper's
text when ``two_sided`` is off) and ``official`` (truncated pixels, u < W, two-sided test,
distinct-pixel counts).
"""
from functools import partial

import numpy as np
import pytest
from scipy import sparse

from openmask3d_ros.core.camera import Intrinsics, project
from openmask3d_ros.core.visibility import (count_pixels, count_visible, frame_visibility,
                                            mask_matrix, mask_pixels, select_views)
from openmask3d_ros.core.visibility import visible_points as _visible_points

visible_points = partial(_visible_points, fidelity="paper", two_sided=False)
official = partial(_visible_points, fidelity="official", two_sided=True)

K = Intrinsics(np.array([[100.0, 0, 49.5], [0, 100.0, 39.5], [0, 0, 1]]), 100, 80)
IDENTITY = np.eye(4)  # camera at the origin looking down +z (optical frame)


def flat_depth(d: float) -> np.ndarray:
    return np.full((K.height, K.width), d, dtype=np.float32)


def test_point_on_surface_is_visible_and_behind_it_is_occluded():
    pts = np.array([[0.0, 0.0, 2.0],      # exactly on the measured surface
                    [0.0, 0.0, 2.15],     # 15 cm behind: within k_threshold 0.2
                    [0.0, 0.0, 2.5]])     # 50 cm behind the surface: occluded
    seen = visible_points(pts, IDENTITY, flat_depth(2.0), K, k_threshold=0.2)
    assert seen.tolist() == [True, True, False]


def test_point_in_front_of_measured_depth_counts_as_visible():
    # w - d < 0 is not occlusion (the paper's one-sided test)
    seen = visible_points(np.array([[0.0, 0.0, 1.0]]), IDENTITY, flat_depth(3.0), K)
    assert seen.tolist() == [True]


def test_points_outside_field_of_view_or_behind_camera_are_not_visible():
    pts = np.array([[5.0, 0.0, 2.0],      # far right of the image
                    [0.0, -5.0, 2.0],     # above the image
                    [0.0, 0.0, -2.0],     # behind the camera
                    [0.0, 0.0, 0.0]])     # w == 0
    seen = visible_points(pts, IDENTITY, flat_depth(2.0), K)
    assert not seen.any()


def test_image_border_pixels_are_in_view():
    # u = W-1 and v = H-1 exactly are inside [0, W-1] x [0, H-1]
    z = 2.0
    corner = np.array([[(K.width - 1 - 49.5) * z / 100.0, (K.height - 1 - 39.5) * z / 100.0, z]])
    uv, _ = project(corner, IDENTITY, K.K)
    assert np.allclose(uv, [[K.width - 1, K.height - 1]])
    assert visible_points(corner, IDENTITY, flat_depth(z), K).tolist() == [True]


def test_missing_depth_measurement_means_not_visible():
    depth = flat_depth(2.0)
    depth[:, :] = 0.0
    assert not visible_points(np.array([[0.0, 0.0, 2.0]]), IDENTITY, depth, K).any()


def test_pose_is_camera_to_world():
    pose = np.eye(4)
    pose[:3, 3] = [1.0, 0.0, 0.0]   # camera moved +1 m in x
    seen = visible_points(np.array([[1.0, 0.0, 2.0]]), pose, flat_depth(2.0), K)
    uv, _ = project(np.array([[1.0, 0.0, 2.0]]), pose, K.K)
    assert seen.tolist() == [True] and np.allclose(uv, [[49.5, 39.5]])


def test_depth_size_must_match_its_intrinsics():
    with pytest.raises(ValueError, match="depth image is 50x40"):
        visible_points(np.zeros((1, 3)), IDENTITY, np.ones((40, 50), np.float32), K)


def test_counts_per_mask():
    seen = np.array([True, False, True, True])
    masks = np.array([[1, 0], [1, 1], [0, 1], [1, 1]], dtype=bool)
    assert count_visible(seen, mask_matrix(masks)).tolist() == [2, 2]


def test_select_views_top_k_and_unseen():
    counts = np.array([[5, 0, 1], [9, 0, 0], [7, 0, 3], [1, 0, 0]])   # 4 frames x 3 masks
    views = select_views(counts, k_view=2)
    assert views[0].tolist() == [1, 2]          # best two frames of mask 0
    assert views[1].tolist() == [-1, -1]        # never seen
    assert views[2].tolist() == [2, 0]
    assert select_views(counts, k_view=6).shape == (3, 6)


def test_official_test_is_two_sided_and_paper_one_sided():
    # 1 m in front of the measured surface: visible for the paper, not for the official code
    pts = np.array([[0.0, 0.0, 1.0], [0.0, 0.0, 2.1], [0.0, 0.0, 2.5]])
    assert official(pts, IDENTITY, flat_depth(2.0), K).tolist() == [False, True, False]
    assert visible_points(pts, IDENTITY, flat_depth(2.0), K).tolist() == [True, True, False]
    two = _visible_points(pts, IDENTITY, flat_depth(2.0), K, fidelity="paper", two_sided=True)
    assert two.tolist() == [False, True, False]


def test_official_pixels_truncate_and_need_u_below_width():
    z = 2.0

    def at(u, v):
        return [(u - 49.5) * z / 100.0, (v - 39.5) * z / 100.0, z]
    pts = np.array([at(10.7, 20.9),      # truncated to (10, 20); paper rounds to (11, 21)
                    at(99.6, 5.0),       # u = 99.6 < W = 100: inside; paper: > W-1, outside
                    at(100.2, 5.0),      # u >= W: outside for both
                    at(-0.5, 5.0)])      # truncates toward zero to u = 0: inside (official)
    seen, pix = frame_visibility(pts, IDENTITY, flat_depth(z), K, fidelity="official")
    assert seen.tolist() == [True, True, False, True]
    assert pix.tolist() == [20 * 100 + 10, 5 * 100 + 99, -1, 5 * 100 + 0]
    seen_p, pix_p = frame_visibility(pts, IDENTITY, flat_depth(z), K, fidelity="paper")
    assert seen_p.tolist() == [True, False, False, False] and pix_p[0] == 21 * 100 + 11


def test_official_score_counts_distinct_pixels_not_points():
    # mask 0: 3 points on one pixel + 1 on another; mask 1: 2 points on 2 pixels
    seen = np.array([True, True, True, True, True, True, False])
    pix = np.array([7, 7, 7, 9, 3, 4, 5])
    masks = np.array([[1, 0], [1, 0], [1, 0], [1, 0], [0, 1], [0, 1], [1, 1]], dtype=bool)
    assert count_pixels(seen, pix, sparse.csr_matrix(masks), 100).tolist() == [2, 2]
    assert count_visible(seen, mask_matrix(masks)).tolist() == [4, 2]
    # the prompt pixel set: distinct, row-major (as np.where on the dense image), (x, y)
    assert mask_pixels(seen, pix, masks[:, 0], width=5).tolist() == [[2, 1], [4, 1]]


def test_bad_fidelity_is_named():
    with pytest.raises(ValueError, match="fidelity"):
        _visible_points(np.zeros((1, 3)), IDENTITY, flat_depth(1.0), K, fidelity="exact")


def test_tie_breaks():
    counts = np.array([[16], [30], [63], [63], [63], [37], [20], [19]])
    assert select_views(counts, 5)[0].tolist() == [2, 3, 4, 5, 1]          # stable: earliest
    official_order = np.argsort(-counts, axis=0)[:5, 0].tolist()            # the official call
    assert select_views(counts, 5, tie_break="official")[0].tolist() == official_order
    assert sorted(official_order) == [1, 2, 3, 4, 5]


def test_config_fidelity_is_checked_on_load(tmp_path):
    from openmask3d_ros.core.config import PipelineConfig, load_config
    from openmask3d_ros.core.errors import InputError
    cfg = PipelineConfig()
    assert cfg.fidelity == "official" and cfg.visibility.two_sided is True
    path = tmp_path / "c.yaml"
    path.write_text("fidelity: exact\n")
    with pytest.raises(InputError, match="fidelity.*official, paper"):
        load_config(path)
    path.write_text("fidelity: paper\nvisibility: {two_sided: false}\n")
    cfg = load_config(path)
    assert cfg.fidelity == "paper" and cfg.visibility.two_sided is False
