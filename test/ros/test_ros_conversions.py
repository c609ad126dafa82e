"""Image / CameraInfo / PointCloud2 / transform conversions (plain numpy, no cv_bridge)."""
import numpy as np
import pytest
from sensor_msgs.msg import CameraInfo, Image, PointCloud2, PointField

from openmask3d_ros.core.camera import Intrinsics
from openmask3d_ros.ros.conversions import (
    ConversionError, arrays_to_cloud, camera_info_to_intrinsics, cloud_to_arrays,
    compressed_to_depth, compressed_to_rgb, depth_to_compressed_depth, depth_to_image,
    image_to_depth, image_to_rgb, intrinsics_to_camera_info, matrix_to_pose, matrix_to_quat,
    matrix_to_transform, ns_to_stamp, pose_to_matrix, quat_to_matrix, rgb_to_compressed,
    rgb_to_image, stamp_to_ns, transform_to_matrix)

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


def test_image_data_of_the_wrong_length_is_rejected_both_ways():
    ok = rgb_to_image(_rgb(4, 3))
    longer = Image(height=4, width=3, encoding="rgb8", step=9, data=bytes(ok.data) + bytes(9))
    shorter = Image(height=4, width=3, encoding="rgb8", step=9, data=bytes(ok.data)[:-1])
    for bad in (longer, shorter):
        with pytest.raises(ConversionError, match=r"expected step x height = 9 x 4 = 36"):
            image_to_rgb(bad)


@pytest.mark.parametrize("q,reason", [((np.nan, 0, 0, 1), "a non-finite component"),
                                      ((0, 0, 0, np.inf), "a non-finite component"),
                                      ((0, 0, 0, 0), "zero norm")])
def test_rejected_transforms_say_why(q, reason):
    from geometry_msgs.msg import Transform
    t = Transform()
    t.rotation.x, t.rotation.y, t.rotation.z, t.rotation.w = (float(v) for v in q)
    with pytest.raises(ConversionError, match=f"map -> cam rotation has {reason}"):
        transform_to_matrix(t, "map -> cam")
    t.rotation.x, t.rotation.y, t.rotation.z, t.rotation.w = 0.0, 0.0, 0.0, 1.0
    t.translation.y = float("nan")
    with pytest.raises(ConversionError, match="translation is not finite"):
        transform_to_matrix(t)


# -- CompressedImage (image_transport compressed / compressedDepth) ------------------------------
def _smooth_rgb(h=48, w=64):
    """A smooth image (JPEG keeps it within a few levels)."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // w, y * 255 // h, np.full_like(x, 90)], axis=2).astype(np.uint8)


def test_compressed_colour_round_trip_jpeg_and_png():
    from sensor_msgs.msg import CompressedImage
    rgb = _smooth_rgb()
    jpeg = rgb_to_compressed(rgb, "jpeg", quality=95)
    assert isinstance(jpeg, CompressedImage) and jpeg.format == "rgb8; jpeg compressed bgr8"
    out = compressed_to_rgb(jpeg)
    assert out.shape == rgb.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - rgb).mean() < 2.0      # lossy, but colours stay in place
    png = rgb_to_compressed(rgb, "png")
    assert png.format == "rgb8; png compressed bgr8"
    np.testing.assert_array_equal(compressed_to_rgb(png), rgb)


def test_compressed_colour_from_a_plain_publisher():
    """Older publishers write format 'jpeg' and a file made from a BGR array (OpenCV order)."""
    import cv2
    from sensor_msgs.msg import CompressedImage
    rgb = _smooth_rgb()
    _, buf = cv2.imencode(".png", rgb[:, :, ::-1])
    np.testing.assert_array_equal(
        compressed_to_rgb(CompressedImage(format="png", data=buf.tobytes())), rgb)
    grey = cv2.imencode(".png", rgb[:, :, 0])[1].tobytes()
    out = compressed_to_rgb(CompressedImage(format="mono8; png compressed mono8", data=grey))
    np.testing.assert_array_equal(out, np.repeat(rgb[:, :, :1], 3, axis=2))


@pytest.mark.parametrize("fmt", ["jpeg", "png"])
def test_truncated_compressed_images_are_errors(fmt):
    msg = rgb_to_compressed(RNG.integers(0, 256, (60, 80, 3), dtype=np.uint8), fmt)
    data = bytes(msg.data)
    msg.data = data[:len(data) // 3]                      # a file cut to a third
    with pytest.raises(ConversionError, match="truncated"):
        compressed_to_rgb(msg)
    msg.data = b"not an image at all"
    with pytest.raises(ConversionError, match="neither JPEG nor PNG"):
        compressed_to_rgb(msg)


def test_compressed_depth_16uc1_is_lossless_millimetres():
    depth = np.round(RNG.uniform(0.3, 6.0, (30, 40)), 3)
    depth[0, :5] = 0.0
    msg = depth_to_compressed_depth(depth, "16UC1")
    assert msg.format == "16UC1; compressedDepth png"
    data = bytes(msg.data)
    assert data[:4] == bytes(4) and data[12:20] == b"\x89PNG\r\n\x1a\n"   # header, then PNG
    np.testing.assert_allclose(compressed_to_depth(msg), depth, atol=1e-6)


def test_compressed_depth_32fc1_inverse_depth_quantisation():
    depth = RNG.uniform(0.5, 8.0, (30, 40)).astype(np.float32)
    depth[1, 1] = np.nan
    depth[2, 2] = 12.0                                    # beyond depth_max: invalid
    msg = depth_to_compressed_depth(depth, "32FC1")
    assert msg.format == "32FC1; compressedDepth png"
    out = compressed_to_depth(msg)
    ok = np.isfinite(depth) & (depth < 10.0)
    # quantisation step of inverse depth: d^2 / (q (q + 1)) with q = 100; rounding -> half a step
    np.testing.assert_array_less(np.abs(out - depth)[ok], depth[ok] ** 2 / 10100 * 0.51 + 1e-5)
    assert out[1, 1] == 0 and out[2, 2] == 0


def test_compressed_depth_written_like_the_cpp_plugin():
    """The header as compressed_depth_image_transport writes it for 32FC1 (A = q (q + 1),
    B = 1 - A / depth_max, pixels A / d + B truncated), decoded with our function."""
    import struct
    import cv2
    from sensor_msgs.msg import CompressedImage
    depth = np.array([[1.0, 2.0, 4.0], [0.5, 9.9, 0.0]], np.float32)
    a = np.float32(100 * 101)
    b = np.float32(1 - a / np.float32(10.0))
    inv = np.where(depth > 0, a / np.where(depth > 0, depth, 1) + b, 0).astype(np.uint16)
    data = struct.pack("<iff", 0, a, b) + cv2.imencode(".png", inv)[1].tobytes()
    out = compressed_to_depth(CompressedImage(format="32FC1; compressedDepth", data=data))
    np.testing.assert_allclose(out, depth, atol=0.01)


def test_bad_compressed_depth_messages():
    from sensor_msgs.msg import CompressedImage
    msg = depth_to_compressed_depth(np.ones((8, 8)), "16UC1")
    data = bytes(msg.data)
    cases = [(CompressedImage(format=msg.format, data=data[:10]), "too short"),
             (CompressedImage(format=msg.format, data=data[:-20]), "truncated"),
             (CompressedImage(format="8UC1; compressedDepth png", data=data), "8UC1"),
             (CompressedImage(format="16UC1; compressedDepth rvl", data=data), "rvl"),
             (CompressedImage(format=msg.format, data=bytes(12) + b"garbage!" * 4), "no PNG")]
    for bad, text in cases:
        with pytest.raises(ConversionError, match=text):
            compressed_to_depth(bad)
    with pytest.raises(ConversionError, match="depth image"):
        compressed_to_rgb(msg)
