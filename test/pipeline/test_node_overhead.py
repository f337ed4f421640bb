"""What makes the node's own work cheaper keeps its outputs: the rectified pair written into one
array (and uploaded without a copy), the faster invalidation, and the host work after the match
finished later, in another thread (the node's publisher), from what the backend said at match time."""
from __future__ import annotations

import threading

import cv2
import numpy as np
import pytest
from _stereo_rig import rig_calibration

from foundation_stereo_ros.pipeline import (ALL_OUTPUTS, BatchItem, DecodedPair, PendingResult, ProcessorConfig,
                                            StereoProcessor)
from foundation_stereo_ros.pipeline.backends.base import invalidate
from foundation_stereo_ros.runtime.upload import PinnedUpload, stacked_array

H, W = 48, 64


def _pair(seed: int = 0) -> DecodedPair:
    rng = np.random.default_rng(seed)
    left = cv2.GaussianBlur(rng.integers(0, 256, (H, W, 3), dtype=np.uint8), (5, 5), 1.5)
    return DecodedPair(left, np.ascontiguousarray(np.roll(left, -6, axis=1)), grey=False)


def test_the_rectified_pair_is_one_array_equal_to_two_separate_remaps():
    processor = StereoProcessor(ProcessorConfig(backend="sgbm", rectify="always"))
    calibration = rig_calibration(W, H, 50.0, 0.1, True, delta_cx=2.0)
    pair = _pair()
    left, right = processor.rectifier.rectify(pair.left, pair.right, calibration)
    maps = processor.rectifier.maps(calibration)
    assert np.array_equal(left, cv2.remap(pair.left, maps.left[0], maps.left[1], cv2.INTER_LINEAR))
    assert np.array_equal(right, cv2.remap(pair.right, maps.right[0], maps.right[1], cv2.INTER_LINEAR))
    both = stacked_array([left, right])
    assert both is not None and both.shape == (2, H, W, 3)
    uploaded = PinnedUpload("cpu")(left, right)  # on the CPU the network takes that array as it is
    assert uploaded.data_ptr() == both.ctypes.data
    assert np.array_equal(uploaded.numpy(), np.stack([left, right]))


def test_stacked_array_finds_only_consecutive_slices_of_one_array():
    a = np.zeros((3, 4, 5, 3), np.uint8)
    assert stacked_array([a[0], a[1], a[2]]) is a
    assert stacked_array([a[1], a[0], a[2]]) is None  # out of order
    assert stacked_array([a[0], a[1]]) is None  # not the whole array
    assert stacked_array([a[0, :, :4], a[1, :, :4]]) is None  # not contiguous
    assert stacked_array([np.zeros((4, 5, 3), np.uint8)] * 3) is None
    b = np.zeros((4, 5, 3), np.uint8)
    assert np.array_equal(PinnedUpload("cpu")(b, b + 1).numpy(), np.stack([b, b + 1]))  # stacked otherwise


def test_invalidate_equals_its_definition_on_every_kind_of_value():
    u = np.arange(8, dtype=np.float32)
    d = np.array([[-1.0, 0.0, 2.0, 3.0, 4.0001, np.nan, np.inf, -np.inf],
                  [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0],
                  [-0.0, 1e-30, -1e-30, 3.0, 4.0, 5.0, 6.5, 8.0]], np.float32)
    expected = d.copy()
    expected[(expected < 0) | (u[None] - expected < 0)] = np.nan  # NaN below 0 or left of the right image
    got = invalidate(d.copy())
    assert got.tobytes() == expected.tobytes()
    assert np.isnan(got[0, [0, 4, 6, 7]]).all() and np.isnan(got[2, [2, 6, 7]]).all()
    assert not np.isnan(got[1]).any()  # d == u: the match is the right image's first column
    assert not np.isnan(got[2, [0, 1, 3, 4, 5]]).any()


@pytest.fixture
def processor():
    return StereoProcessor(ProcessorConfig(backend="sgbm", rectify="always", sgbm_num_disparities=16))


def test_a_pending_result_finished_in_another_thread_equals_the_processed_one(processor):
    calibration = rig_calibration(W, H, 50.0, 0.1, True, delta_cx=2.0)
    item = BatchItem(_pair(), calibration, ALL_OUTPUTS)
    expected = processor.process_batch([item])[0]
    calls = []
    pending = processor.match_batch([item], before_match=lambda: calls.append("match"))[0]
    assert calls == ["match"] and isinstance(pending, PendingResult)
    assert "depth" not in pending.timings  # matched, not finished
    results = []
    thread = threading.Thread(target=lambda: results.append(pending.finish()))
    thread.start()
    thread.join()
    got = results[0]
    assert pending.finish() is got  # computed once
    for name in ("disparity", "depth", "left_rect", "right_rect", "disparity_color"):
        assert np.array_equal(getattr(got, name), getattr(expected, name), equal_nan=True), name
    assert got.cloud.tobytes() == expected.cloud.tobytes()
    assert (got.min_disparity, got.max_disparity, got.delta_d) == (expected.min_disparity, expected.max_disparity,
                                                                   expected.delta_d)
    assert {"rectify", "match", "depth", "points"} <= set(got.timings)


def test_a_pending_result_keeps_what_the_backend_said_of_its_own_match(processor):
    """The node's publisher finishes a frame while the worker matches the next: the next match's
    scale or retries must not reach the frame before."""
    calibration = rig_calibration(W, H, 50.0, 0.1, True, delta_cx=2.0)
    backend = processor.backend
    pending = processor.match_batch([BatchItem(_pair(), calibration, ALL_OUTPUTS)])[0]
    said = (backend.last_scale, backend.last_oom_retries, backend.last_fast)
    backend.last_scale, backend.last_oom_retries, backend.last_fast = 0.25, 3, False  # "the next frame's"
    result = pending.finish()
    assert (result.network_scale, result.oom_retries, result.fast_execution) == said


def test_the_calibration_is_found_by_the_camera_info_fields_and_follows_every_change():
    """The node looks its calibration up by the CameraInfo fields' bytes (no models built per frame);
    any change of a field gives the calibration of the new values, and a bad CameraInfo is refused
    with every frame, never cached."""
    from types import SimpleNamespace

    from foundation_stereo_ros.pipeline import CalibrationError

    from _ros_helpers import camera_info

    processor = StereoProcessor(ProcessorConfig(backend="sgbm"))
    calibration = rig_calibration(W, H, 50.0, 0.1, True, delta_cx=2.0)
    infos = [camera_info(cam.width, cam.height, cam.K, cam.D, cam.R, cam.P)
             for cam in (calibration.left, calibration.right)]
    first = processor.calibration(*infos)
    assert processor.calibration(*infos) is first
    assert processor.calibration(*infos, require_baseline=False) is not first
    moved = camera_info(W, H, calibration.right.K, calibration.right.D, calibration.right.R,
                        calibration.right.P + np.array([[0, 0, 1.5, 0], [0] * 4, [0] * 4]))
    assert processor.calibration(infos[0], moved).right.cx == first.right.cx + 1.5
    assert processor.calibration(*infos) is first
    binned = camera_info(W, H, calibration.left.K, calibration.left.D, calibration.left.R, calibration.left.P)
    binned.binning_x = 2
    for _ in range(2):
        with pytest.raises(CalibrationError, match="binning"):
            processor.calibration(binned, infos[1])
    ros1 = SimpleNamespace(width=W, height=H, K=calibration.left.K.reshape(-1), D=calibration.left.D,
                           R=calibration.left.R.reshape(-1), P=calibration.left.P.reshape(-1),
                           distortion_model="plumb_bob")  # ROS 1 field names: built the slow way
    assert processor.calibration(ros1, infos[1]).left.key == first.left.key


@pytest.mark.parametrize("limits", [(0.0, 0.0), (0.3, 20.0), (1e-50, 0.0), (0.0, 1e39), (1e39, 0.0), (1e-50, 1e-50)])
def test_host_depth_equals_the_previous_formula_on_every_kind_of_value(limits):
    """The host's depth (OpenCV's range test and masked copy) against the previous numpy formula,
    bit for bit: special values, overflow, subnormals, and limits that float32 rounds."""
    from foundation_stereo_ros.pipeline.geometry import disparity_to_depth

    tiny = np.nextafter(np.float32(0), np.float32(1))
    values = [-1.0, -0.0, 0.0, tiny, 1e-38, 1e-30, 0.5, 2.0, 3.0, 200.0, 1e30, 3.4e38, np.inf, -np.inf, np.nan]
    f, baseline = 60.0, 0.1
    fb = np.float32(f * baseline)
    lo, hi = limits
    exact = [fb / np.float32(v) for v in (0.3, 20.0)]  # depths exactly at the limits
    d = np.array(values + [fb / np.float32(0.3), fb / np.float32(20.0)] + [fb / z for z in exact], np.float32)
    d = np.tile(d, (3, 1))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        expected = fb / d
        bad = ~((expected > 0) & np.isfinite(expected))
        if lo > 0:
            bad |= expected < lo
        if hi > 0:
            bad |= expected > hi
    expected[bad] = np.nan
    got = disparity_to_depth(d, f, baseline, lo, hi)
    assert got.tobytes() == expected.tobytes()
    assert got.flags.c_contiguous and got.dtype == np.float32


@pytest.mark.parametrize("four_channel", [True, False])
def test_the_processor_rectifies_in_the_form_its_opencv_does_best(four_channel):
    """OpenCV 5: bgr8 messages decoded straight to RGBA and remapped with float tables; OpenCV 4:
    decoded to RGB and remapped with the fixed-point tables. Either way the pipeline's images are
    the plain remap of the decoded RGB pair with those tables."""
    from foundation_stereo_ros.pipeline import MessageFrame
    from foundation_stereo_ros.pipeline.rectification import Rectifier
    from foundation_stereo_ros.ros.conversions import numpy_to_image

    from _ros_helpers import camera_info

    processor = StereoProcessor(ProcessorConfig(backend="sgbm", rectify="always", sgbm_num_disparities=16),
                                _rectifier=Rectifier(four_channel=four_channel))
    calibration = rig_calibration(W, H, 50.0, 0.1, True, delta_cx=2.0)
    infos = [camera_info(c.width, c.height, c.K, c.D, c.R, c.P) for c in (calibration.left, calibration.right)]
    pair = _pair(5)
    messages = [numpy_to_image(np.ascontiguousarray(im[..., ::-1]), "bgr8") for im in (pair.left, pair.right)]
    staged = processor.stage_messages_batch([MessageFrame(*messages, *infos, ALL_OUTPUTS)])
    frame = staged.frames[0]
    assert frame.pair.left.shape[2] == (4 if four_channel else 3)  # RGBA only for the four-channel form
    maps = processor.rectifier.maps(processor.calibration(*infos))
    assert maps.float_tables == four_channel
    for got, raw, table in ((frame.left, pair.left, maps.left), (frame.right, pair.right, maps.right)):
        np.testing.assert_array_equal(got, cv2.remap(raw, table[0], table[1], cv2.INTER_LINEAR))


def _previous_colorize(disparity, min_disparity, max_disparity):
    """The disparity picture as it was built before (numpy where/clip, BGR colour map, boolean index)."""
    span = max(float(max_disparity) - float(min_disparity), 1e-6)
    d = np.asarray(disparity, np.float32)
    valid = np.isfinite(d) & (d >= min_disparity)
    with np.errstate(over="ignore", invalid="ignore"):
        scaled = np.where(valid, (d - np.float32(min_disparity)) * np.float32(255.0 / span), 0.0)
    grey = np.clip(scaled, 0, 255).astype(np.uint8)
    colour = cv2.cvtColor(cv2.applyColorMap(grey, cv2.COLORMAP_TURBO), cv2.COLOR_BGR2RGB)
    colour[~valid] = 0
    return colour


@pytest.mark.parametrize("shape", [(48, 64), (1, 7), (5, 1), (3, 3)])
@pytest.mark.parametrize("limits", [(-3.0, 192.0), (0.0, 64.0), (5.5, 5.5), (-1e30, 1e30), (10.25, 11.0)])
def test_the_disparity_picture_is_the_previous_one_byte_for_byte(shape, limits):
    from foundation_stereo_ros.pipeline.geometry import colorize_disparity

    rng = np.random.default_rng(sum(shape))
    d = (rng.random(shape, dtype=np.float32) * 300 - 50)
    d[rng.random(shape) < 0.25] = np.nan
    special = np.array([np.inf, -np.inf, 3.4e38, -3.4e38, 0.0, -0.0, limits[0], limits[1], 1e-40], np.float32)
    flat = d.reshape(-1)
    flat[:min(flat.size, special.size)] = special[:flat.size]
    got = colorize_disparity(d, *limits)
    assert got.shape == shape + (3,) and got.dtype == np.uint8
    assert got.tobytes() == _previous_colorize(d, *limits).tobytes()
