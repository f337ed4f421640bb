"""Message conversions: exact round trips through real (serialised) ROS messages."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rclpy.serialization import deserialize_message, serialize_message
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from std_msgs.msg import Header
from stereo_msgs.msg import DisparityImage

from foundation_stereo_ros.pipeline import CameraModel, decode_image_msg, make_camera_model, unpack_rgb
from foundation_stereo_ros.ros.conversions import (camera_info_msg, disparity_from_msg, disparity_image_msg,
                                                   image_to_array, numpy_to_image, pointcloud2_msg,
                                                   pointcloud2_to_array)


def wire(msg):
    """The message after a trip through the ROS serialisation, as a subscriber receives it."""
    return deserialize_message(serialize_message(msg), type(msg))


def header(t=12, frame="cam_left_optical"):
    h = Header()
    h.stamp.sec, h.stamp.nanosec, h.frame_id = t, 345, frame
    return h


ENCODINGS = {"mono8": (np.uint8, 1), "rgb8": (np.uint8, 3), "bgra8": (np.uint8, 4), "mono16": (np.uint16, 1),
             "16UC1": (np.uint16, 1), "rgb16": (np.uint16, 3), "32FC1": (np.float32, 1)}


@settings(max_examples=40, deadline=None)
@given(encoding=st.sampled_from(sorted(ENCODINGS)), h=st.integers(1, 9), w=st.integers(1, 9),
       seed=st.integers(0, 10_000))
def test_image_round_trip_is_exact(encoding, h, w, seed):
    dtype, c = ENCODINGS[encoding]
    rng = np.random.default_rng(seed)
    shape = (h, w) if c == 1 else (h, w, c)
    if dtype == np.float32:
        a = rng.standard_normal(shape).astype(np.float32)
        a.flat[0] = np.nan
    else:
        a = rng.integers(0, np.iinfo(dtype).max, shape, endpoint=True).astype(dtype)
    msg = wire(numpy_to_image(a, encoding, header()))
    assert (msg.height, msg.width, msg.encoding, msg.header.frame_id) == (h, w, encoding, "cam_left_optical")
    back = image_to_array(msg)
    np.testing.assert_array_equal(back.reshape(shape), a)


def test_rgb8_image_decodes_to_the_same_pixels_in_the_pipeline():
    a = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    np.testing.assert_array_equal(decode_image_msg(wire(numpy_to_image(a, "rgb8"))), a)
    np.testing.assert_array_equal(decode_image_msg(wire(numpy_to_image(a[..., ::-1].copy(), "bgr8"))), a)


def test_numpy_to_image_rejects_mismatched_arrays():
    with pytest.raises(ValueError, match="dtype"):
        numpy_to_image(np.zeros((2, 2), np.float64), "32FC1")
    with pytest.raises(ValueError, match="channel"):
        numpy_to_image(np.zeros((2, 2, 3), np.uint8), "mono8")
    with pytest.raises(ValueError):
        numpy_to_image(np.zeros((2, 2), np.uint8), "h264")


def test_camera_info_round_trip():
    model = make_camera_model(640, 480, [500, 0, 320, 0, 501, 240, 0, 0, 1], [0.1, -0.02, 0, 0, 0.001],
                              [1, 0, 0, 0, 1, 0, 0, 0, 1], [500, 0, 318, -60, 0, 500, 241, 0, 0, 0, 1, 0])
    msg = wire(camera_info_msg(model, header()))
    back = CameraModel.from_camera_info(msg)
    for a in ("K", "D", "R", "P"):
        np.testing.assert_array_equal(getattr(back, a), getattr(model, a))
    assert (back.width, back.height, back.distortion_model) == (640, 480, "plumb_bob")


@pytest.mark.parametrize("organized", [True, False])
def test_point_cloud_round_trip(organized):
    rng = np.random.default_rng(3)
    pts = rng.standard_normal((4, 6, 3)).astype(np.float32)
    pts[1, 2] = np.nan
    pts[3, 0] = np.nan
    rgb = rng.integers(0, 256, (4, 6, 3), dtype=np.uint8)
    packed = (rgb[..., 0].astype(np.uint32) << 16) | (rgb[..., 1].astype(np.uint32) << 8) | rgb[..., 2]
    msg = wire(pointcloud2_msg(pts, packed, header(), organized=organized))
    assert [f.name for f in msg.fields] == ["x", "y", "z", "rgb"]
    assert msg.point_step == 16 and msg.row_step == 16 * msg.width
    cloud = pointcloud2_to_array(msg)
    xyz = np.stack([cloud["x"], cloud["y"], cloud["z"]], axis=-1)
    valid = np.isfinite(pts[..., 2])
    if organized:
        assert (msg.height, msg.width, msg.is_dense) == (4, 6, False)
        np.testing.assert_array_equal(xyz[valid], pts[valid])
        assert np.isnan(xyz[~valid]).all()
        np.testing.assert_array_equal(unpack_rgb(cloud["rgb"]), rgb)
    else:
        assert (msg.height, msg.width, msg.is_dense) == (1, int(valid.sum()), True)
        np.testing.assert_array_equal(xyz[0], pts[valid])
        np.testing.assert_array_equal(unpack_rgb(cloud["rgb"][0]), rgb[valid])


class _Result:
    def __init__(self, disparity):
        self.disparity = disparity
        self.f, self.t, self.min_disparity, self.max_disparity = 400.0, 0.12, -2.5, 125.5
        self.delta_d, self.valid_window = 0.0625, (10, 2, 100, 60)


def test_disparity_image_marks_invalid_below_min_disparity():
    d = np.array([[np.nan, 3.0, 7.5], [100.0, np.nan, -2.5]], np.float32)
    msg = wire(disparity_image_msg(_Result(d), header()))
    assert msg.image.encoding == "32FC1" and (msg.image.height, msg.image.width) == (2, 3)
    assert msg.f == 400.0 and msg.t == pytest.approx(0.12) and msg.delta_d == 0.0625
    assert (msg.min_disparity, msg.max_disparity) == (-2.5, 125.5)
    assert (msg.valid_window.x_offset, msg.valid_window.width) == (10, 100)
    raw = image_to_array(msg.image)
    assert raw[0, 0] == -3.5 and raw[1, 1] == -3.5  # min_disparity - 1, as stereo_image_proc
    back = disparity_from_msg(msg)
    np.testing.assert_array_equal(np.isnan(back), np.isnan(d))
    np.testing.assert_array_equal(back[~np.isnan(d)], d[~np.isnan(d)])


@pytest.mark.parametrize("organized", [True, False])
def test_point_cloud_from_the_processors_interleaved_buffer_is_the_same_message(organized):
    from foundation_stereo_ros.pipeline import PointProjector

    rng = np.random.default_rng(4)
    depth = rng.uniform(0.5, 5.0, (5, 7)).astype(np.float32)
    depth[2, 3] = np.nan
    rgb = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    projector = PointProjector()
    cloud = projector.cloud(depth, rgb, 50.0, 51.0, 3.2, 2.1)
    points = projector.points(depth, 50.0, 51.0, 3.2, 2.1)
    np.testing.assert_array_equal(cloud[..., :3], points)
    np.testing.assert_array_equal(unpack_rgb(cloud[..., 3]), rgb)
    packed = (rgb[..., 0].astype(np.uint32) << 16) | (rgb[..., 1].astype(np.uint32) << 8) | rgb[..., 2]
    expected = pointcloud2_msg(points, packed, header(), organized=organized)
    got = pointcloud2_msg(np.zeros((1, 1, 3), np.float32), None, header(), organized=organized, cloud=cloud)
    # Compared after the wire, field by field: the serialised bytes also hold CDR's alignment
    # padding, which the serialiser does not clear (whatever its buffer held before).
    assert wire(got) == wire(expected)
    with pytest.raises(ValueError, match=r"\(H, W, 4\) float32"):
        pointcloud2_msg(points, None, header(), cloud=points)


def test_payloads_are_byte_arrays_that_rclpy_field_checks_accept_at_once(monkeypatch):
    """With ROS_PYTHON_CHECK_FIELDS=1 rclpy checks every element of a ``bytes`` payload in Python
    (about 0.7 s for a 640x480 cloud); an array.array('B') is taken as it is."""
    import array
    import time

    import sensor_msgs.msg._image as image_mod
    import sensor_msgs.msg._point_cloud2 as cloud_mod

    monkeypatch.setattr(image_mod, "ros_python_check_fields", "1")
    monkeypatch.setattr(cloud_mod, "ros_python_check_fields", "1")
    assert Image()._check_fields  # the checks are on for messages made now
    rng = np.random.default_rng(0)
    depth = rng.random((480, 640), dtype=np.float32)
    points = rng.random((480, 640, 3), dtype=np.float32)
    colors = rng.integers(0, 2 ** 24, (480, 640), dtype=np.uint32)
    t = time.perf_counter()
    img = numpy_to_image(depth, "32FC1", Header())
    cloud = pointcloud2_msg(points, colors, Header(), True)
    took = time.perf_counter() - t
    assert isinstance(img.data, array.array) and isinstance(cloud.data, array.array)
    assert took < 0.2, took  # a 'bytes' payload takes seconds here
    np.testing.assert_array_equal(image_to_array(img), depth)
    back = pointcloud2_to_array(deserialize_message(serialize_message(cloud), PointCloud2))
    np.testing.assert_array_equal(back["z"], points[..., 2])
    # Empty arrays work too (a dense cloud without valid points).
    empty = pointcloud2_msg(np.full((2, 3, 3), np.nan, np.float32), None, Header(), organized=False)
    assert empty.width == 0 and len(empty.data) == 0


def test_messages_take_over_message_buffers_and_copy_other_arrays_once():
    """A cloud the pipeline wrote into a message buffer becomes the message's data as it is (no
    copy; rclpy serialises it unchanged); any other array is copied, so the message owns it."""
    from foundation_stereo_ros.pipeline import PointProjector
    from foundation_stereo_ros.pipeline.geometry import message_buffer, message_buffer_owner

    rng = np.random.default_rng(5)
    depth = rng.uniform(0.5, 5.0, (6, 8)).astype(np.float32)
    rgb = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    cloud = PointProjector().cloud(depth, rgb, 50.0, 51.0, 3.2, 2.1)
    msg = pointcloud2_msg(cloud[..., :3], None, header(), cloud=cloud)
    assert msg.data is message_buffer_owner(cloud)
    back = pointcloud2_to_array(wire(msg))
    np.testing.assert_array_equal(back["z"], depth)
    np.testing.assert_array_equal(unpack_rgb(back["rgb"]), rgb)

    plain = rng.random((6, 8), dtype=np.float32)
    img = numpy_to_image(plain, "32FC1", header())
    plain[0, 0] = -1.0  # the message holds its own copy
    assert image_to_array(wire(img))[0, 0] != -1.0
    adopted = message_buffer((6, 8), np.float32)
    adopted[...] = plain
    assert numpy_to_image(adopted, "32FC1", header()).data is message_buffer_owner(adopted)


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 12), st.integers(1, 12), st.floats(-5.0, 50.0), st.integers(0, 2 ** 32 - 1))
def test_disparity_message_bytes_equal_the_previous_implementation(h, w, min_disparity, seed):
    """Invalid pixels are filled in place (one copy); the bytes are those of the previous
    np.where formula, and the result's NaN disparity is left untouched."""
    import types

    rng = np.random.default_rng(seed)
    d = rng.uniform(-10, 200, (h, w)).astype(np.float32)
    d[rng.random((h, w)) < 0.3] = np.nan
    kept = d.copy()
    result = types.SimpleNamespace(disparity=d, f=500.0, t=0.1, min_disparity=min_disparity, max_disparity=192.0,
                                   delta_d=0.0, valid_window=(0, 0, w, h))
    msg = disparity_image_msg(result, header())
    old = np.where(np.isnan(d), np.float32(min_disparity - 1.0), d).astype(np.float32, copy=False)
    assert bytes(msg.image.data) == old.tobytes()
    np.testing.assert_array_equal(d, kept)
