"""Property-based tests of the message conversions (hypothesis): random and mutated messages
raise nothing but ConversionError, and valid data round-trips."""
import math
import os

import numpy as np
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2, PointField

from openmask3d_ros.core.camera import Intrinsics
from openmask3d_ros.ros.conversions import (
    ConversionError, arrays_to_cloud, camera_info_to_intrinsics, cloud_to_arrays,
    compressed_to_depth, compressed_to_rgb, depth_to_compressed_depth, depth_to_image,
    image_to_depth, image_to_rgb, intrinsics_to_camera_info, matrix_to_transform, quat_to_matrix,
    rgb_to_compressed, rgb_to_image, transform_to_matrix)

from mutations import mutated  # test/mutations.py

# HYPOTHESIS_EXAMPLES=2000 for a longer hunt (1500 per test passed when this was written)
SETTINGS = settings(max_examples=int(os.environ.get("HYPOTHESIS_EXAMPLES", "150")), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])
ENCODINGS = ["rgb8", "bgr8", "rgba8", "bgra8", "mono8", "16UC1", "mono16", "32FC1", "8UC1",
             "rgb16", ""]
u32 = st.integers(0, 2 ** 32 - 1)
small = st.integers(0, 40)
any_float = st.floats(allow_nan=True, allow_infinity=True, width=64)


def only_conversion_errors(fn, *args, **kwargs):
    """Call ``fn``; a ConversionError is an accepted outcome, anything else fails the test."""
    try:
        return fn(*args, **kwargs)
    except ConversionError as exc:
        assert str(exc)            # always a message for the user
        return None


# -- Image --------------------------------------------------------------------------------------
@SETTINGS
@given(h=st.one_of(small, u32), w=st.one_of(small, u32), enc=st.sampled_from(ENCODINGS),
       step=st.one_of(st.integers(0, 200), u32), big=st.booleans(),
       data=st.binary(max_size=3000))
def test_random_images_only_raise_conversion_errors(h, w, enc, step, big, data):
    msg = Image(height=h, width=w, encoding=enc, step=step, is_bigendian=big, data=data)
    for fn in (image_to_rgb, image_to_depth):
        out = only_conversion_errors(fn, msg)
        if out is not None:
            assert out.shape[:2] == (h, w)


@SETTINGS
@given(rgb=arrays(np.uint8, st.tuples(st.integers(1, 12), st.integers(1, 12), st.just(3))),
       enc=st.sampled_from(["rgb8", "bgr8", "rgba8", "bgra8"]), pad=st.integers(0, 9))
def test_valid_colour_images_round_trip(rgb, enc, pad):
    msg = rgb_to_image(rgb, enc)
    if pad:   # rows padded to a longer step, as some drivers do
        rows = np.frombuffer(bytes(msg.data), np.uint8).reshape(msg.height, msg.step)
        padded = np.concatenate([rows, np.zeros((msg.height, pad), np.uint8)], axis=1)
        msg = Image(height=msg.height, width=msg.width, encoding=enc, step=msg.step + pad,
                    data=padded.tobytes())
    np.testing.assert_array_equal(image_to_rgb(msg), rgb)


@SETTINGS
@given(mm=arrays(np.uint16, st.tuples(st.integers(1, 12), st.integers(1, 12))),
       metres=arrays(np.float32, st.tuples(st.integers(1, 12), st.integers(1, 12)),
                     elements=st.floats(0, 100, width=32)))
def test_valid_depth_images_round_trip(mm, metres):
    np.testing.assert_array_equal(image_to_depth(depth_to_image(mm / 1000.0, "16UC1")),
                                  mm.astype(np.float32) / np.float32(1000))
    np.testing.assert_array_equal(image_to_depth(depth_to_image(metres, "32FC1")), metres)


# -- CompressedImage ----------------------------------------------------------------------------
FORMATS = ["rgb8; jpeg compressed bgr8", "rgb8; png compressed bgr8", "jpeg", "png", "",
           "16UC1; compressedDepth png", "32FC1; compressedDepth png", "32FC1; compressedDepth",
           "16UC1; compressedDepth rvl", "bgr8; tiff compressed bgr8"]


def _valid_compressed():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    depth = rng.uniform(0.2, 9.0, (24, 32))
    return [bytes(rgb_to_compressed(img, "jpeg").data), bytes(rgb_to_compressed(img, "png").data),
            bytes(depth_to_compressed_depth(depth, "16UC1").data),
            bytes(depth_to_compressed_depth(depth, "32FC1").data)]


VALID = _valid_compressed()


def damaged_payloads():
    """A valid JPEG/PNG/compressedDepth payload, damaged (24 header bytes: sizes, quantisation)."""
    return st.sampled_from(VALID).flatmap(lambda data: mutated(data, header_bytes=24))


@SETTINGS
@given(fmt=st.sampled_from(FORMATS), data=st.one_of(damaged_payloads(), st.binary(max_size=400)))
def test_random_and_mutated_compressed_images_only_raise_conversion_errors(fmt, data):
    msg = CompressedImage(format=fmt, data=data)
    rgb = only_conversion_errors(compressed_to_rgb, msg)
    if rgb is not None:
        assert rgb.ndim == 3 and rgb.shape[2] == 3 and rgb.dtype == np.uint8
    depth = only_conversion_errors(compressed_to_depth, msg)
    if depth is not None:
        assert depth.ndim == 2 and depth.dtype == np.float32
        assert np.all(np.isfinite(depth)) and np.all(depth >= 0)


@SETTINGS
@given(rgb=arrays(np.uint8, st.tuples(st.integers(1, 20), st.integers(1, 20), st.just(3))),
       mm=arrays(np.uint16, st.tuples(st.integers(1, 20), st.integers(1, 20)),
                 elements=st.integers(0, 10000)))
def test_lossless_compressed_images_round_trip(rgb, mm):
    np.testing.assert_array_equal(compressed_to_rgb(rgb_to_compressed(rgb, "png")), rgb)
    out = compressed_to_depth(depth_to_compressed_depth(mm / 1000.0, "16UC1"))
    np.testing.assert_allclose(out, mm / 1000.0, atol=1e-6)


@SETTINGS
@given(depth=arrays(np.float64, st.tuples(st.integers(1, 16), st.integers(1, 16)),
                    elements=st.floats(0.2, 9.9)))
def test_compressed_depth_32fc1_round_trips_within_a_quantisation_step(depth):
    out = compressed_to_depth(depth_to_compressed_depth(depth, "32FC1"))
    assert np.all(np.abs(out - depth) <= depth ** 2 / 10100 * 0.51 + 1e-4)


# -- CameraInfo ---------------------------------------------------------------------------------
@SETTINGS
@given(k=st.lists(any_float, min_size=0, max_size=12), w=st.one_of(small, u32),
       h=st.one_of(small, u32), bx=st.integers(0, 8), by=st.integers(0, 8),
       size=st.one_of(st.none(), st.tuples(st.integers(0, 2000), st.integers(0, 2000))))
def test_random_camera_info_only_raises_conversion_errors(k, w, h, bx, by, size):
    msg = CameraInfo(width=w, height=h, binning_x=bx, binning_y=by)
    msg.k = (k + [0.0] * 9)[:9]
    if len(k) != 9:   # the rclpy message insists on 9 values: a rosbags-like object does not
        msg = type("Info", (), {"k": k, "width": w, "height": h, "binning_x": bx,
                                "binning_y": by})()
    args = size or (None, None)
    intr = only_conversion_errors(camera_info_to_intrinsics, msg, *args)
    if intr is not None:
        assert intr.width > 0 and intr.height > 0 and np.all(np.isfinite(intr.K))


@SETTINGS
@given(fx=st.floats(1, 5000), fy=st.floats(1, 5000), cx=st.floats(0, 2000),
       cy=st.floats(0, 2000), w=st.integers(1, 4000), h=st.integers(1, 4000))
def test_valid_camera_info_round_trips(fx, fy, cx, cy, w, h):
    K = np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1.0]])
    back = camera_info_to_intrinsics(intrinsics_to_camera_info(Intrinsics(K, w, h)))
    assert (back.width, back.height) == (w, h)
    np.testing.assert_array_equal(back.K, K)


# -- PointCloud2 --------------------------------------------------------------------------------
field = st.builds(lambda name, offset, datatype, count: PointField(
    name=name, offset=offset, datatype=datatype, count=count),
    name=st.sampled_from(["x", "y", "z", "rgb", "rgba", "r", "g", "b", "intensity", ""]),
    offset=st.one_of(st.integers(0, 40), u32), datatype=st.integers(0, 10),
    count=st.integers(0, 3))


@SETTINGS
@given(fields=st.lists(field, max_size=8), w=st.one_of(small, u32), h=st.one_of(small, u32),
       point_step=st.one_of(st.integers(0, 48), u32), row_step=st.one_of(st.integers(0, 600), u32),
       big=st.booleans(), data=st.binary(max_size=2000))
def test_random_clouds_only_raise_conversion_errors(fields, w, h, point_step, row_step, big,
                                                    data):
    msg = PointCloud2(height=h, width=w, fields=fields, point_step=point_step,
                      row_step=row_step, is_bigendian=big, data=data)
    out = only_conversion_errors(cloud_to_arrays, msg)
    if out is not None:
        pts, cols = out
        assert pts.ndim == 2 and pts.shape[1] == 3 and np.all(np.isfinite(pts))
        assert cols is None or cols.shape == pts.shape


@SETTINGS
@given(n=st.integers(0, 50), seed=st.integers(0, 2 ** 31), with_colour=st.booleans())
def test_valid_clouds_round_trip(n, seed, with_colour):
    rng = np.random.default_rng(seed)
    pts = rng.normal(scale=10, size=(n, 3)).astype(np.float32)
    cols = rng.integers(0, 256, (n, 3), dtype=np.uint8) if with_colour else None
    p2, c2 = cloud_to_arrays(arrays_to_cloud(pts, cols, frame_id="map"))
    np.testing.assert_array_equal(p2, pts)
    if with_colour and n:
        np.testing.assert_array_equal(c2, cols)


# -- transforms ---------------------------------------------------------------------------------
@SETTINGS
@given(q=st.tuples(any_float, any_float, any_float, any_float),
       t=st.tuples(any_float, any_float, any_float))
def test_random_transforms_only_raise_conversion_errors(q, t):
    from geometry_msgs.msg import Transform
    msg = Transform()
    msg.rotation.x, msg.rotation.y, msg.rotation.z, msg.rotation.w = q
    msg.translation.x, msg.translation.y, msg.translation.z = t
    M = only_conversion_errors(transform_to_matrix, msg, "map -> cam")
    bad = not all(math.isfinite(v) for v in q + t)
    if M is None:
        return
    assert not bad
    R = M[:3, :3]
    np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-6)


@SETTINGS
@given(q=st.tuples(*[st.floats(-1, 1)] * 4), t=st.tuples(*[st.floats(-1e3, 1e3)] * 3))
def test_valid_transforms_round_trip(q, t):
    assume(np.linalg.norm(q) > 0.1)
    M = np.eye(4)
    M[:3, :3], M[:3, 3] = quat_to_matrix(q), t
    np.testing.assert_allclose(transform_to_matrix(matrix_to_transform(M)), M, atol=1e-9)
