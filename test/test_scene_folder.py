"""Scene folder reading/writing: intrinsics rescaling, depth units, bad data errors."""
import numpy as np
import pytest

from openmask3d_ros.core.camera import Intrinsics
from openmask3d_ros.core.scene import SceneError, SceneFolder, SceneWriter

KC = Intrinsics(np.array([[200.0, 0, 80], [0, 200.0, 60], [0, 0, 1]]), 160, 120)


def write_scene(root, n=3, depth_size=(80, 60), write_depth_intrinsics=True):
    w = SceneWriter(root)
    kd = KC.scaled(*depth_size)
    w.write_intrinsics(KC, kd)
    if not write_depth_intrinsics:
        (root / "intrinsic" / "intrinsic_depth.txt").unlink()
    for i in range(n):
        color = np.full((KC.height, KC.width, 3), (i * 40, 10, 200), np.uint8)
        depth = np.full(depth_size[::-1], 1.234, np.float32)
        w.write_frame(i * 10, color, depth, np.eye(4))
    w.write_cloud(np.random.default_rng(0).random((50, 3)).astype(np.float32),
                  np.zeros((50, 3), np.uint8))
    return SceneFolder(root)


def test_round_trip_and_depth_in_metres(tmp_path):
    s = write_scene(tmp_path)
    assert s.frame_ids == ["0", "10", "20"]
    assert s.color("10")[0, 0].tolist() == [40, 10, 200]
    assert s.depth("0").dtype == np.float32 and np.allclose(s.depth("0"), 1.234, atol=1e-3)
    assert np.allclose(s.pose("20"), np.eye(4))
    assert s.cloud()[0].shape == (50, 3)


def test_depth_intrinsics_rescaled_from_colour_when_absent(tmp_path):
    s = write_scene(tmp_path, write_depth_intrinsics=False)
    kd = s.depth_intrinsics()
    assert (kd.width, kd.height) == (80, 60)
    assert np.allclose(kd.K, KC.scaled(80, 60).K)
    assert np.isclose(kd.K[0, 0], 100.0)


def test_frames_sorted_numerically_and_incomplete_triples_ignored(tmp_path):
    s = write_scene(tmp_path, n=3)
    (tmp_path / "pose" / "20.txt").unlink()
    s = SceneFolder(tmp_path)
    assert s.frame_ids == ["0", "10"]


def test_bad_pose_and_depth_are_named(tmp_path):
    s = write_scene(tmp_path)
    (tmp_path / "pose" / "0.txt").write_text("1 2 3\n")
    with pytest.raises(SceneError, match="0.txt.*4x4"):
        s.pose("0")
    import cv2
    cv2.imwrite(str(tmp_path / "depth" / "10.png"), np.zeros((60, 80, 3), np.uint8))
    with pytest.raises(SceneError, match="uint16"):
        s.depth("10")


def test_missing_folder_and_cloud(tmp_path):
    with pytest.raises(SceneError, match="not found"):
        SceneFolder(tmp_path / "missing")
    with pytest.raises(SceneError, match="cloud.ply"):
        _ = SceneFolder(tmp_path).cloud_path


def test_intrinsics_validation():
    with pytest.raises(ValueError, match="3x3 or 4x4"):
        Intrinsics(np.eye(2), 10, 10)
    with pytest.raises(ValueError, match="focal"):
        Intrinsics(np.zeros((3, 3)), 10, 10)
