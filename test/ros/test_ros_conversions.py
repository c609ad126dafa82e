"""Image / CameraInfo / PointCloud2 / transform conversions (plain numpy, no cv_bridge)."""
import numpy as np
import pytest
from sensor_msgs.msg import CameraInfo, Image, PointCloud2, PointField

from openmask3d_ros.core.camera import Intrinsics
from openmask3d_ros.ros.conversions import (
    ConversionError, arrays_to_cloud, camera_info_to_intrinsics, cloud_to_arrays, depth_to_image,
    image_to_depth, image_to_rgb, intrinsics_to_camera_info, matrix_to_pose, matrix_to_quat,
    matrix_to_transform, ns_to_stamp, pose_to_matrix, quat_to_matrix, rgb_to_image, stamp_to_ns,
    transform_to_matrix)

RNG = np.random.default_rng(0)


def _rgb(h=5, w=7):
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "bgra8"])
def test_colour_round_trip(encoding):
    rgb = _rgb()
    msg = rgb_to_image(rgb, encoding)
    assert isinstance(msg, Image) and msg.encoding == encoding
    assert (msg.width, msg.height) == (7, 5)
    np.testing.assert_array_equal(image_to_rgb(msg), rgb)


def test_mono8_is_grey_rgb():
    msg = rgb_to_image(_rgb(), "mono8")
    out = image_to_rgb(msg)
    assert out.shape == (5, 7, 3)
    assert np.all(out[:, :, 0] == out[:, :, 1]) and np.all(out[:, :, 1] == out[:, :, 2])


def test_row_padding_is_honoured():
    rgb = _rgb(4, 3)
    padded = np.zeros((4, 16), np.uint8)            # step 16 > 3 * 3 bytes
    padded[:, :9] = rgb.reshape(4, 9)
    msg = Image(height=4, width=3, encoding="rgb8", step=16, data=padded.tobytes())
    np.testing.assert_array_equal(image_to_rgb(msg), rgb)


def test_depth_16uc1_is_millimetres():
    depth = np.array([[0.0, 1.0], [1.2345, 65.0]], np.float32)
    msg = depth_to_image(depth, "16UC1")
    assert msg.encoding == "16UC1" and msg.step == 4
    np.testing.assert_allclose(image_to_depth(msg), [[0, 1.0], [1.234, 65.0]], atol=1e-3)


def test_depth_16uc1_big_endian():
    raw = np.array([[1000, 2500]], dtype=">u2")
    msg = Image(height=1, width=2, encoding="16UC1", is_bigendian=1, step=4, data=raw.tobytes())
    np.testing.assert_allclose(image_to_depth(msg), [[1.0, 2.5]])


def test_depth_32fc1_metres_and_invalid_values():
    depth = np.array([[0.5, np.nan], [np.inf, -1.0]], np.float32)
    msg = Image(height=2, width=2, encoding="32FC1", step=8, data=depth.tobytes())
    np.testing.assert_array_equal(image_to_depth(msg), [[0.5, 0.0], [0.0, 0.0]])
    np.testing.assert_allclose(image_to_depth(depth_to_image(np.full((3, 4), 2.25), "32FC1")),
                               np.full((3, 4), 2.25))


@pytest.mark.parametrize("encoding", ["8UC3", "rgb16", "bayer_rggb8", "", "16SC1"])
def test_unsupported_depth_encodings_raise(encoding):
    msg = Image(height=2, width=2, encoding=encoding, step=6, data=bytes(12))
    with pytest.raises(ConversionError, match="encoding"):
        image_to_depth(msg)


def test_bad_colour_images_raise():
    with pytest.raises(ConversionError, match="encoding"):
        image_to_rgb(Image(height=2, width=2, encoding="16UC1", step=4, data=bytes(8)))
    with pytest.raises(ConversionError, match="bytes"):
        image_to_rgb(Image(height=4, width=4, encoding="rgb8", step=12, data=bytes(10)))
    with pytest.raises(ConversionError, match="no pixels"):
        image_to_rgb(Image(height=0, width=4, encoding="rgb8", step=12))


def test_camera_info_round_trip_and_scaling():
    K = np.array([[500.0, 0, 319.5], [0, 510.0, 239.5], [0, 0, 1]])
    intr = Intrinsics(K, 640, 480)
    msg = intrinsics_to_camera_info(intr)
    assert isinstance(msg, CameraInfo) and (msg.width, msg.height) == (640, 480)
    back = camera_info_to_intrinsics(msg)
    np.testing.assert_allclose(back.K, K)
    half = camera_info_to_intrinsics(msg, 320, 240)      # e.g. a depth image at half size
    assert (half.width, half.height) == (320, 240)
    np.testing.assert_allclose(half.K[0], [250.0, 0, 159.75])
    np.testing.assert_allclose(half.K[1], [0, 255.0, 119.75])


def test_camera_info_binning_and_missing_size():
    msg = intrinsics_to_camera_info(Intrinsics(np.diag([400.0, 400.0, 1.0]), 640, 480))
    msg.binning_x = msg.binning_y = 2
    binned = camera_info_to_intrinsics(msg)
    assert (binned.width, binned.height) == (320, 240) and binned.K[0, 0] == 200.0
    msg = intrinsics_to_camera_info(Intrinsics(np.diag([400.0, 400.0, 1.0]), 640, 480))
    msg.width = msg.height = 0
    assert camera_info_to_intrinsics(msg, 640, 480).width == 640
    with pytest.raises(ConversionError):
        camera_info_to_intrinsics(msg)
    with pytest.raises(ConversionError, match="K matrix"):
        camera_info_to_intrinsics(CameraInfo(width=10, height=10))


def test_cloud_round_trip_with_packed_rgb():
    pts = RNG.normal(size=(100, 3)).astype(np.float32)
    cols = RNG.integers(0, 256, (100, 3), dtype=np.uint8)
    msg = arrays_to_cloud(pts, cols, frame_id="map")
    assert isinstance(msg, PointCloud2) and msg.width == 100 and msg.header.frame_id == "map"
    p2, c2 = cloud_to_arrays(msg)
    np.testing.assert_array_equal(p2, pts)
    np.testing.assert_array_equal(c2, cols)
    p3, c3 = cloud_to_arrays(arrays_to_cloud(pts))
    np.testing.assert_array_equal(p3, pts)
    assert c3 is None


def test_cloud_separate_rgb_fields_padding_and_nans():
    # x y z as float64, r g b as uint8, 4 bytes padding: point_step 32
    dtype = np.dtype({"names": ["x", "y", "z", "r", "g", "b"],
                      "formats": ["<f8", "<f8", "<f8", "u1", "u1", "u1"],
                      "offsets": [0, 8, 16, 24, 25, 26], "itemsize": 32})
    rec = np.zeros(3, dtype)
    rec["x"], rec["y"], rec["z"] = [1, np.nan, 3], [4, 5, 6], [7, 8, 9]
    rec["r"], rec["g"], rec["b"] = [10, 20, 30], [40, 50, 60], [70, 80, 90]
    fields = [PointField(name=n, offset=o, datatype=d, count=1)
              for n, o, d in (("x", 0, 8), ("y", 8, 8), ("z", 16, 8), ("r", 24, 2), ("g", 25, 2),
                              ("b", 26, 2))]
    msg = PointCloud2(height=1, width=3, fields=fields, point_step=32, row_step=96,
                      data=rec.tobytes())
    pts, cols = cloud_to_arrays(msg)
    np.testing.assert_array_equal(pts, [[1, 4, 7], [3, 6, 9]])
    np.testing.assert_array_equal(cols, [[10, 40, 70], [30, 60, 90]])


def test_cloud_without_xyz_raises():
    msg = PointCloud2(height=1, width=1, point_step=4, row_step=4, data=bytes(4),
                      fields=[PointField(name="intensity", offset=0, datatype=7, count=1)])
    with pytest.raises(ConversionError, match="'x'"):
        cloud_to_arrays(msg)


def test_transforms_and_stamps():
    q = np.array([0.1, -0.3, 0.2, 0.9])
    q /= np.linalg.norm(q)
    R = quat_to_matrix(q)
    np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(matrix_to_quat(R), q, atol=1e-12)
    M = np.eye(4)
    M[:3, :3], M[:3, 3] = R, [1.0, -2.0, 0.5]
    np.testing.assert_allclose(transform_to_matrix(matrix_to_transform(M)), M, atol=1e-12)
    np.testing.assert_allclose(pose_to_matrix(matrix_to_pose(M)), M, atol=1e-12)
    assert stamp_to_ns(ns_to_stamp(1_700_000_123_456_789_012)) == 1_700_000_123_456_789_012
