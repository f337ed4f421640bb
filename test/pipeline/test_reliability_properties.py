"""Property-based tests (hypothesis) of the message conversions and the disparity -> depth -> point
geometry: arbitrary sizes, strides, encodings and values never raise out of the conversion layer
except with the documented error type, and round trips are exact."""
from __future__ import annotations

import types

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from rclpy.serialization import deserialize_message, serialize_message
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header

from foundation_stereo_ros.pipeline import (ENCODINGS, CalibrationError, CameraModel, DecodedPair, DisparityBackend,
                                            ImageDecodeError, ProcessorConfig, StereoInputError, StereoProcessor,
                                            decode_image, decode_stereo_pair, depth_to_points, disparity_to_depth,
                                            image_to_numpy, project_points)
from foundation_stereo_ros.ros.conversions import (camera_info_msg, disparity_from_msg, disparity_image_msg,
                                                   image_to_array, numpy_to_image, pointcloud2_msg,
                                                   pointcloud2_to_array)

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
BYTES_PER_PIXEL = {info.channels * info.dtype.itemsize for info in ENCODINGS.values()}
EXTRA = {"32FC1": np.float32, "64FC1": np.float64, "16SC1": np.int16, "32SC1": np.int32}


def wire(msg):
    """The message as a subscriber receives it (through the ROS serialisation)."""
    return deserialize_message(serialize_message(msg), type(msg))


def pixels(draw, encoding, h, w):
    info = ENCODINGS[encoding]
    shape = (h, w) if info.channels == 1 else (h, w, info.channels)
    seed = draw(st.integers(0, 2 ** 32 - 1))
    return np.random.default_rng(seed).integers(0, np.iinfo(info.dtype).max, shape, endpoint=True).astype(info.dtype)


def raw_message(a, encoding, pad, big):
    """Image-like fields of array ``a`` with ``pad`` bytes after each row, big- or little-endian."""
    a = np.ascontiguousarray(a)
    a = a.astype(a.dtype.newbyteorder(">" if big else "<"))
    rows = a.reshape(a.shape[0], -1).view(np.uint8)
    rows = np.concatenate([rows, np.full((rows.shape[0], pad), 0xCD, np.uint8)], axis=1)
    return types.SimpleNamespace(encoding=encoding, height=a.shape[0], width=a.shape[1], step=rows.shape[1],
                                 is_bigendian=int(big), data=rows.tobytes())


def documented_wrong_encoding(encoding, width, step):
    """The documented ``wrong_encoding`` rule (pipeline.errors.ImageDecodeError)."""
    info = ENCODINGS[encoding]
    bpp = info.channels * info.dtype.itemsize
    return step - width * bpp >= 64 and step % width == 0 and step // width in BYTES_PER_PIXEL and \
        step // width > bpp


# ---------------------------------------------------------------------------------------------- images
@settings(max_examples=300, **SETTINGS)
@given(data=st.data(), encoding=st.sampled_from(sorted(ENCODINGS)), h=st.integers(1, 6), w=st.integers(1, 40),
       pad=st.integers(0, 100), big=st.booleans())
def test_any_valid_image_round_trips_exactly_through_any_stride_and_byte_order(data, encoding, h, w, pad, big):
    if ENCODINGS[encoding].kind == "yuv":
        w += w % 2  # 4:2:2 needs pairs of pixels
    a = pixels(data.draw, encoding, h, w)
    m = raw_message(a, encoding, pad, big)
    if documented_wrong_encoding(encoding, w, m.step):
        with pytest.raises(ImageDecodeError) as e:
            image_to_numpy(m.encoding, m.height, m.width, m.step, m.is_bigendian, m.data)
        assert e.value.problem == "wrong_encoding"
        return
    back = image_to_numpy(m.encoding, m.height, m.width, m.step, m.is_bigendian, m.data)
    assert back.dtype == ENCODINGS[encoding].dtype and back.dtype.isnative
    np.testing.assert_array_equal(back, a)
    rgb = decode_image(m.encoding, m.height, m.width, m.step, m.is_bigendian, m.data)
    assert rgb.shape == (h, w, 3) and rgb.dtype == np.uint8 and rgb.flags.writeable


FIELD_CHANGES = st.one_of(
    st.fixed_dictionaries({"encoding": st.one_of(st.sampled_from(sorted(ENCODINGS) + ["32FC1", "jpeg", "RGB8", ""]),
                                                 st.text(max_size=10))}),
    st.fixed_dictionaries({"height": st.integers(-2, 12)}),
    st.fixed_dictionaries({"width": st.integers(-2, 60)}),
    st.fixed_dictionaries({"step": st.integers(-4, 400)}),
    st.fixed_dictionaries({"is_bigendian": st.integers(0, 255)}),
    st.fixed_dictionaries({"data": st.binary(max_size=600)}),
    st.fixed_dictionaries({"cut": st.integers(-50, 50)}),
)


@settings(max_examples=400, **SETTINGS)
@given(data=st.data(), encoding=st.sampled_from(sorted(ENCODINGS)), h=st.integers(1, 5), w=st.integers(1, 24),
       pad=st.integers(0, 8), changes=st.lists(FIELD_CHANGES, min_size=1, max_size=3))
def test_corrupted_images_decode_correctly_or_raise_the_documented_error(data, encoding, h, w, pad, changes):
    m = raw_message(pixels(data.draw, encoding, h, w), encoding, pad, False)
    for change in changes:
        if "cut" in change:  # data shortened or lengthened by a few bytes
            m.data = m.data[:change["cut"]] if change["cut"] < 0 else m.data + bytes(change["cut"])
        else:
            vars(m).update(change)
    try:
        out = decode_image(m.encoding, m.height, m.width, m.step, m.is_bigendian, m.data)
    except ImageDecodeError as e:
        assert e.problem in {"empty_image", "unknown_encoding", "bad_step", "data_size", "bad_width",
                             "wrong_encoding"}
        assert str(e)
        return
    # Accepted: then it is exactly what the fields describe.
    assert out.shape == (m.height, m.width, 3) and out.dtype == np.uint8
    assert len(m.data) == m.step * m.height


@settings(max_examples=150, **SETTINGS)
@given(data=st.data(), l_enc=st.sampled_from(sorted(ENCODINGS)), r_enc=st.sampled_from(sorted(ENCODINGS)),
       size_l=st.tuples(st.integers(1, 5), st.integers(1, 12)), size_r=st.tuples(st.integers(1, 5), st.integers(1, 12)))
def test_any_pair_decodes_or_raises_a_stereo_input_error(data, l_enc, r_enc, size_l, size_r):
    def make(enc, hw):
        h, w = hw
        w += w % 2 if ENCODINGS[enc].kind == "yuv" else 0
        return raw_message(pixels(data.draw, enc, h, w), enc, 0, False)

    left, right = make(l_enc, size_l), make(r_enc, size_r)
    try:
        pair = decode_stereo_pair(left, right)
    except StereoInputError as e:
        assert e.problem in {"size_mismatch", "encoding_mismatch"}
        return
    assert pair.left.shape == pair.right.shape == (left.height, left.width, 3)
    assert pair.grey == ENCODINGS[l_enc].grey


ROS_ENCODINGS = sorted(set(ENCODINGS) - {"yuv422", "uyvy", "yuv422_yuy2", "yuyv"}) + sorted(EXTRA)


def ros_array(draw, encoding, h, w):
    if encoding in EXTRA:
        dtype = np.dtype(EXTRA[encoding])
        if dtype.kind == "f":
            values = st.floats(allow_nan=True, allow_infinity=True, width=dtype.itemsize * 8)
            flat = draw(st.lists(values, min_size=h * w, max_size=h * w))
            return np.array(flat, dtype).reshape(h, w)
        info = np.iinfo(dtype)
        seed = draw(st.integers(0, 2 ** 32 - 1))
        return np.random.default_rng(seed).integers(info.min, info.max, (h, w), endpoint=True).astype(dtype)
    return pixels(draw, encoding, h, w)


@settings(max_examples=200, **SETTINGS)
@given(data=st.data(), encoding=st.sampled_from(ROS_ENCODINGS), h=st.integers(1, 8), w=st.integers(1, 16))
def test_ros_image_round_trip_is_exact_for_every_encoding_and_value(data, encoding, h, w):
    a = ros_array(data.draw, encoding, h, w)
    header = Header(frame_id="cam")
    msg = wire(numpy_to_image(a, encoding, header))
    assert (msg.height, msg.width, msg.encoding, msg.header.frame_id) == (h, w, encoding, "cam")
    back = image_to_array(msg)
    assert back.dtype == a.dtype
    np.testing.assert_array_equal(back.reshape(a.shape), a)  # NaN == NaN here; bit-exact values


@settings(max_examples=200, **SETTINGS)
@given(data=st.data(), encoding=st.sampled_from(sorted(EXTRA)), h=st.integers(1, 5), w=st.integers(1, 9),
       pad=st.integers(0, 9), big=st.booleans(), changes=st.lists(FIELD_CHANGES, max_size=2))
def test_ros_float_images_with_any_stride_round_trip_or_raise_value_error(data, encoding, h, w, pad, big, changes):
    a = ros_array(data.draw, encoding, h, w)
    m = raw_message(a, encoding, pad, big)
    msg = Image(height=m.height, width=m.width, encoding=m.encoding, is_bigendian=m.is_bigendian, step=m.step,
                data=m.data)
    if not changes:
        np.testing.assert_array_equal(image_to_array(msg), a)
        return
    for change in changes:
        if "cut" in change:
            msg.data = bytes(msg.data)[:change["cut"]] if change["cut"] < 0 else bytes(msg.data) + bytes(change["cut"])
        else:
            key, value = next(iter(change.items()))
            if key in ("height", "width", "step"):
                value = max(value, 0)  # uint32 fields of a real message
            if key == "is_bigendian":
                value = value % 256
            setattr(msg, key, value)
    try:
        out = image_to_array(msg)
    except ValueError:  # ImageDecodeError is one too
        return
    assert out.shape[:2] == (msg.height, msg.width)


# ---------------------------------------------------------------------------------------------- calibration
finite = st.floats(-1e6, 1e6, allow_nan=False)
anything = st.one_of(finite, st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, -0.0, 1e308]))


@st.composite
def camera_infos(draw, width, height):
    f = draw(st.one_of(st.floats(1.0, 5000.0), anything))
    fy = draw(st.one_of(st.just(f), anything))
    cx, cy = draw(anything), draw(anything)
    tx = draw(st.one_of(st.floats(-1e4, -1e-3), anything))
    info = CameraInfo()
    info.width = draw(st.sampled_from([width, width, 0, width + 2]))
    info.height = draw(st.sampled_from([height, height, 0, height - 1]))
    info.distortion_model = draw(st.sampled_from(["plumb_bob", "rational_polynomial", "equidistant", "weird", ""]))
    info.d = [draw(st.one_of(st.floats(-0.2, 0.2), anything)) for _ in range(draw(st.sampled_from([0, 4, 5, 8, 3])))]
    info.k = [f, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0]
    info.r = draw(st.sampled_from([[1.0, 0, 0, 0, 1, 0, 0, 0, 1], [0.0] * 9, [0.0, -1, 0, 1, 0, 0, 0, 0, 1],
                                   [2.0, 0, 0, 0, 1, 0, 0, 0, 1]]))
    info.p = [f, 0.0, cx, tx, 0.0, fy, cy, draw(st.sampled_from([0.0, 0.0, 5.0])), 0.0, 0.0,
              draw(st.sampled_from([1.0, 1.0, 0.0])), 0.0]
    return info


class ConstantBackend(DisparityBackend):
    """Returns a given raw disparity field (the geometry under test, not a matcher)."""

    name = "constant"

    def __init__(self, raw):
        self.raw = raw

    def compute(self, left, right, grey=False):
        return self.raw.copy()

    def search_range(self, width):
        return 0.0, 100.0

    @property
    def delta_d(self):
        return 0.0


@settings(max_examples=300, **SETTINGS)
@given(data=st.data(), rectify=st.sampled_from(["auto", "always", "never"]))
def test_any_camera_info_is_usable_or_raises_a_calibration_error(data, rectify):
    h, w = 6, 10
    left, right = data.draw(camera_infos(w, h)), data.draw(camera_infos(w, h))
    raw = np.full((h, w), 3.0, np.float32)
    proc = StereoProcessor(ProcessorConfig(backend="sgbm", rectify=rectify), backend=ConstantBackend(raw))
    img = np.zeros((h, w, 3), np.uint8)
    try:
        calib = proc.calibration(left, right)
        result = proc.process(DecodedPair(img, img, False), calib)
    except CalibrationError as e:
        assert e.problem and str(e)
        return
    # Accepted: the geometry it publishes is finite and positive, and depth is finite or NaN.
    assert np.isfinite([result.f, result.t, result.delta_cx]).all() and result.f > 0 and result.t > 0
    assert not np.isinf(result.depth).any() and not np.isinf(result.points).any()


@settings(max_examples=100, **SETTINGS)
@given(w=st.integers(1, 4000), h=st.integers(1, 3000), values=st.lists(finite, min_size=4, max_size=4),
       d=st.lists(st.floats(-1.0, 1.0), min_size=5, max_size=5))
def test_camera_info_round_trip_is_exact(w, h, values, d):
    fx, fy, cx, cy = values
    model = CameraModel(w, h, np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1.0]]), np.array(d), np.eye(3),
                        np.array([[fx, 0, cx, -fx * 0.1], [0, fy, cy, 0], [0, 0, 1.0, 0]]))
    back = CameraModel.from_camera_info(wire(camera_info_msg(model)))
    for attr in ("K", "D", "R", "P"):
        np.testing.assert_array_equal(getattr(back, attr), getattr(model, attr))
    assert (back.width, back.height) == (w, h)


# ---------------------------------------------------------------------------------------------- geometry
disparities = st.one_of(st.floats(-50.0, 500.0), st.sampled_from([0.0, -0.0, np.nan, np.inf, -np.inf, 1e-30]))


@settings(max_examples=300, **SETTINGS)
@given(h=st.integers(1, 6), w=st.integers(1, 8), data=st.data(), f=st.floats(1.0, 5000.0),
       baseline=st.floats(1e-3, 2.0), limits=st.tuples(st.floats(0.0, 5.0), st.floats(0.0, 200.0)))
def test_disparity_to_depth_to_points_geometry(h, w, data, f, baseline, limits):
    min_depth, max_depth = limits
    assume(max_depth == 0.0 or min_depth < max_depth)
    d = np.array(data.draw(st.lists(disparities, min_size=h * w, max_size=h * w)), np.float32).reshape(h, w)
    depth = disparity_to_depth(d, f, baseline, min_depth, max_depth)
    assert depth.dtype == np.float32 and depth.shape == (h, w)
    assert not np.isinf(depth).any()
    valid = np.isfinite(depth)
    # Valid exactly where the disparity is a positive number and the depth is inside the limits.
    with np.errstate(over="ignore", invalid="ignore"):
        z = np.float32(f * baseline) / np.where(d > 0, d, np.float32(1))
    expected = (d > 0) & np.isfinite(z) & (z >= min_depth) & ((max_depth == 0) | (z <= max_depth))
    expected &= z > 0
    np.testing.assert_array_equal(valid, expected)
    np.testing.assert_allclose(depth[valid] * d[valid], f * baseline, rtol=1e-5)

    fx, fy = f, data.draw(st.floats(1.0, 5000.0))
    cx, cy = data.draw(st.floats(-20.0, 20.0)), data.draw(st.floats(-20.0, 20.0))
    pts = depth_to_points(depth, fx, fy, cx, cy)
    np.testing.assert_array_equal(np.isfinite(pts).all(axis=2), valid)
    assert np.isnan(pts[~valid]).all()
    np.testing.assert_array_equal(pts[..., 2][valid], depth[valid])
    u, v = project_points(pts, fx, fy, cx, cy)
    vv, uu = np.mgrid[0:h, 0:w]
    np.testing.assert_allclose(u[valid], uu[valid], atol=1e-3 * max(1.0, abs(cx)))
    np.testing.assert_allclose(v[valid], vv[valid], atol=1e-3 * max(1.0, abs(cy)))


@settings(max_examples=150, **SETTINGS)
@given(h=st.integers(2, 6), w=st.integers(2, 8), data=st.data(), f=st.floats(50.0, 2000.0),
       baseline=st.floats(0.01, 1.0), cx_l=st.floats(0.0, 8.0), delta_cx=st.floats(-5.0, 5.0))
def test_processor_depth_and_points_follow_the_calibration(h, w, data, f, baseline, cx_l, delta_cx):
    """End to end through StereoProcessor with a given raw disparity: depth = f B / (raw - delta_cx)
    and every point projects back onto its pixel through the published camera."""
    raw = np.array(data.draw(st.lists(st.floats(-10.0, 100.0), min_size=h * w, max_size=h * w)),
                   np.float32).reshape(h, w)
    cx_r, cy = cx_l - delta_cx, h / 2
    left = types.SimpleNamespace(width=w, height=h, k=[f, 0, cx_l, 0, f, cy, 0, 0, 1], d=[], r=[1, 0, 0, 0, 1, 0, 0, 0, 1],
                                 p=[f, 0, cx_l, 0, 0, f, cy, 0, 0, 0, 1, 0], distortion_model="plumb_bob")
    right = types.SimpleNamespace(width=w, height=h, k=[f, 0, cx_r, 0, f, cy, 0, 0, 1], d=[],
                                  r=[1, 0, 0, 0, 1, 0, 0, 0, 1], p=[f, 0, cx_r, -f * baseline, 0, f, cy, 0, 0, 0, 1, 0],
                                  distortion_model="plumb_bob")
    proc = StereoProcessor(ProcessorConfig(backend="sgbm"), backend=ConstantBackend(raw))
    img = np.zeros((h, w, 3), np.uint8)
    result = proc.process(DecodedPair(img, img, False), proc.calibration(left, right))
    published = raw - np.float32(cx_l - cx_r)
    np.testing.assert_array_equal(result.disparity, published)
    with np.errstate(over="ignore"):  # a subnormal disparity: its depth overflows and is invalid
        ok = (published > 0) & np.isfinite(np.float32(f * baseline) / np.where(published > 0, published, 1))
    np.testing.assert_array_equal(np.isfinite(result.depth), ok)
    np.testing.assert_allclose(result.depth[ok], f * baseline / published[ok].astype(np.float64), rtol=1e-5)
    K = result.camera.K
    u, v = project_points(result.points, K[0, 0], K[1, 1], K[0, 2], K[1, 2])
    vv, uu = np.mgrid[0:h, 0:w]
    np.testing.assert_allclose(u[ok], uu[ok], atol=1e-3)
    np.testing.assert_allclose(v[ok], vv[ok], atol=1e-3)

    # And through the ROS messages: DisparityImage and PointCloud2 round trips are exact.
    header = Header(frame_id="left")
    d_back = disparity_from_msg(wire(disparity_image_msg(result, header)))
    np.testing.assert_array_equal(np.isnan(d_back), np.isnan(result.disparity) | (result.disparity < result.min_disparity))
    keep = ~np.isnan(d_back)
    np.testing.assert_array_equal(d_back[keep], result.disparity[keep])
    for organized in (True, False):
        cloud = pointcloud2_to_array(wire(pointcloud2_msg(result.points, result.colors, header, organized)))
        xyz = np.stack([cloud["x"], cloud["y"], cloud["z"]], axis=-1)
        if organized:
            np.testing.assert_array_equal(xyz[ok], result.points[ok])
            assert np.isnan(xyz[~ok]).all()
        else:
            np.testing.assert_array_equal(xyz[0], result.points[ok])
