"""A disparity needs no baseline: with ``Outputs(disparity_without_baseline=True)`` a calibration whose
right P[0,3] is 0 gives the disparity (t = 0) and no depth or points; everything that would make the
disparity itself wrong still raises."""
from __future__ import annotations

import types

import numpy as np
import pytest

from foundation_stereo_ros.pipeline import CalibrationError, Outputs, ProcessorConfig, StereoProcessor
from foundation_stereo_ros.pipeline.calibration import StereoCalibration, camera_info_values, rectified_pair

from _ros_helpers import textured_scene

H, W, F = 40, 120, 100.0
LEFT, RIGHT, _ = textured_scene(H, W, seed=4)
WITHOUT_BASELINE = Outputs(depth=True, points=True, disparity_color=True, disparity_without_baseline=True)


def image(rgb):
    return types.SimpleNamespace(header=types.SimpleNamespace(frame_id=""), encoding="rgb8", height=rgb.shape[0],
                                 width=rgb.shape[1], step=rgb.shape[1] * 3, is_bigendian=0, data=rgb.tobytes())


def infos(baseline: float, right_p_changes=None):
    calib = rectified_pair(F, W / 2, H / 2, 1.0, W, H)
    out = []
    for cam in (calib.left, calib.right):
        values = camera_info_values(cam)
        if cam.name == "right":
            values["p"][3] = -F * baseline
            for i, v in (right_p_changes or {}).items():
                values["p"][i] = v
        out.append(types.SimpleNamespace(header=types.SimpleNamespace(frame_id=""), binning_x=0, binning_y=0,
                                         roi=None, **values))
    return out


def stereo_image_proc_fixture_info():
    """What image_pipeline's stereo_image_proc test fixture publishes: size and P = [1 0 1 0; 0 1 1 0; 0 0 1 0]
    only (K, R all zeros, D empty)."""
    return types.SimpleNamespace(header=types.SimpleNamespace(frame_id=""), width=W, height=H, distortion_model="",
                                 d=[], k=[0.0] * 9, r=[0.0] * 9, p=[1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0,
                                                                    0.0, 0.0, 1.0, 0.0],
                                 binning_x=0, binning_y=0, roi=None)


@pytest.fixture(scope="module")
def proc():
    return StereoProcessor(ProcessorConfig(backend="sgbm", sgbm_num_disparities=32))


def test_zero_baseline_gives_the_disparity_and_no_depth(proc):
    with_baseline = proc.process_messages(image(LEFT), image(RIGHT), *infos(0.1), WITHOUT_BASELINE)
    result = proc.process_messages(image(LEFT), image(RIGHT), *infos(0.0), WITHOUT_BASELINE)
    assert with_baseline.depth_problem is None and with_baseline.depth is not None
    assert result.depth_problem is not None and result.depth_problem.problem == "zero_baseline"
    np.testing.assert_array_equal(result.disparity, with_baseline.disparity)
    assert np.isfinite(result.disparity).mean() > 0.5
    assert result.depth is None and result.points is None and result.cloud is None
    assert result.f == F and result.t == 0.0 and not np.signbit(result.t)
    assert result.right_camera.P[0, 3] == 0.0  # right_rect/camera_info stays honest
    assert result.disparity_color is not None and result.left_rect is not None


def test_zero_baseline_still_raises_unless_asked_for(proc):
    with pytest.raises(CalibrationError) as e:
        proc.process_messages(image(LEFT), image(RIGHT), *infos(0.0))
    assert e.value.problem == "zero_baseline"


@pytest.mark.parametrize("baseline,changes,problem", [
    (-0.1, None, "negative_baseline"),  # left and right swapped: the disparity itself would be wrong
    (0.0, {7: 5.0}, "vertical_stereo"),  # P[1,3]: a vertical rig
    (0.0, {5: F * 1.1}, "not_rectified"),  # right fy differs
    (0.0, {6: H / 2 + 3}, "not_rectified"),  # right cy differs: rows do not correspond
    (0.0, {0: 0.0}, "calibration_zero_focal"),
])
def test_what_makes_the_disparity_wrong_still_raises(proc, baseline, changes, problem):
    with pytest.raises(CalibrationError) as e:
        proc.process_messages(image(LEFT), image(RIGHT), *infos(baseline, changes), WITHOUT_BASELINE)
    assert e.value.problem == problem


def test_image_and_calibration_sizes_must_still_agree(proc):
    l_info, r_info = infos(0.0)
    l_info.width = r_info.width = W + 8
    with pytest.raises(CalibrationError) as e:
        proc.process_messages(image(LEFT), image(RIGHT), l_info, r_info, WITHOUT_BASELINE)
    assert e.value.problem == "calibration_mismatch"


def test_the_stereo_image_proc_test_fixture_calibration_gives_a_disparity(proc):
    info = stereo_image_proc_fixture_info()
    result = proc.process_messages(image(LEFT), image(RIGHT), info, info, WITHOUT_BASELINE)
    assert result.depth_problem.problem == "zero_baseline" and (result.f, result.t) == (1.0, 0.0)
    assert not result.rectified and np.isfinite(result.disparity).mean() > 0.5


def test_calibration_without_baseline_keeps_the_choice_when_resized():
    calib = rectified_pair(F, W / 2, H / 2, 0.1, W, H)
    right = calib.right.__class__(W, H, calib.right.K, calib.right.D, calib.right.R,
                                  np.hstack([calib.right.P[:, :3], np.zeros((3, 1))]), name="right")
    with pytest.raises(CalibrationError):
        StereoCalibration(calib.left, right)
    free = StereoCalibration(calib.left, right, require_baseline=False)
    assert free.depth_problem.problem == "zero_baseline" and calib.depth_problem is None
    assert free.scaled(0.5).depth_problem is not None and free.with_size(W, H).require_baseline is False
    assert free.cropped(0, 0, W // 2, H).depth_problem is not None


@pytest.mark.slow
def test_network_with_geometry_on_its_device_gives_the_disparity_without_depth(vits_checkpoint):
    # The GPU's path (upload, rectification, depth and points on the network's device), here on the CPU.
    proc = StereoProcessor(ProcessorConfig(backend="foundation_stereo", checkpoint=str(vits_checkpoint), device="cpu",
                                           iters=2, geometry_device="network"))
    assert proc.geometry_on_device
    result = proc.process_messages(image(LEFT), image(RIGHT), *infos(0.0), WITHOUT_BASELINE)
    with_baseline = proc.process_messages(image(LEFT), image(RIGHT), *infos(0.1), WITHOUT_BASELINE)
    assert result.depth_problem.problem == "zero_baseline" and result.t == 0.0
    assert result.depth is None and result.points is None and with_baseline.depth is not None
    np.testing.assert_allclose(result.disparity, with_baseline.disparity, equal_nan=True)
