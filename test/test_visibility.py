"""Visibility: in-view test, occlusion against measured depth, per-mask counts, view selection."""
import numpy as np
import pytest

from openmask3d_ros.core.camera import Intrinsics, project
from openmask3d_ros.core.visibility import (count_visible, mask_matrix, select_views,
                                            visible_points)

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
