"""Several cameras' pairs through one processor (``process_batch``): pairs of one size go through
the network in one call, and every output equals the output of a single-camera run (fp32, CPU,
within 1e-4 px); a bad frame fails alone."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
from _stereo_rig import rig_calibration

from foundation_stereo_ros.pipeline import (ALL_OUTPUTS, BatchItem, DecodedPair, FrameError, ProcessorConfig,
                                            StereoCalibration, StereoProcessor)

H, W, F_PX = 64, 96, 70.0
pytestmark = pytest.mark.usefixtures("fp32_without_tf32")


def _load(opencv_data, name, size):
    img = cv2.imread(str(opencv_data / name))
    return cv2.cvtColor(cv2.resize(img, size, interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)


def _calibration(w: int, h: int, baseline: float, distorted: bool) -> StereoCalibration:
    return rig_calibration(w, h, F_PX, baseline, distorted, delta_cx=2.0)


@pytest.fixture(scope="module")
def items(opencv_data):
    aloe = DecodedPair(_load(opencv_data, "aloeL.jpg", (W, H)), _load(opencv_data, "aloeR.jpg", (W, H)), grey=False)
    flipped = DecodedPair(np.ascontiguousarray(aloe.right[:, ::-1]), np.ascontiguousarray(aloe.left[:, ::-1]),
                          grey=False)
    wide = DecodedPair(_load(opencv_data, "aloeL.jpg", (W + 32, H)), _load(opencv_data, "aloeR.jpg", (W + 32, H)),
                       grey=False)
    return [BatchItem(aloe, _calibration(W, H, 0.12, distorted=True), ALL_OUTPUTS),  # camera 1
            BatchItem(flipped, _calibration(W, H, 0.08, distorted=False), ALL_OUTPUTS),  # camera 2, same size
            BatchItem(wide, _calibration(W + 32, H, 0.1, distorted=True), ALL_OUTPUTS),  # camera 3, another size
            BatchItem(aloe, _calibration(W + 32, H, 0.1, distorted=True), ALL_OUTPUTS)]  # broken: CameraInfo of another size


@pytest.mark.slow
@pytest.mark.parametrize("geometry", ["host", "network"])
def test_batched_outputs_equal_single_camera_runs(vits_checkpoint, items, geometry):
    proc = StereoProcessor(ProcessorConfig(backend="foundation_stereo", checkpoint=str(vits_checkpoint), device="cpu",
                                           iters=2, geometry_device=geometry, min_depth=0.05, max_depth=50.0))
    model = proc.backend.model
    batches = []
    original = model.infer

    def counting_infer(left, right, *args, **kwargs):
        batches.append(left.shape[0])
        return original(left, right, *args, **kwargs)

    model.infer = counting_infer
    try:
        batched = proc.process_batch(items)
        assert sorted(batches) == [1, 2]  # one call for the two pairs of one size, one for the other size
        batches.clear()
        single = [proc.process_batch([item])[0] for item in items]
        assert batches == [1, 1, 1]  # the broken frame never reaches the network
    finally:
        model.infer = original
    assert isinstance(batched[3], FrameError) and batched[3].problem == "calibration_mismatch"
    assert isinstance(single[3], FrameError) and single[3].problem == "calibration_mismatch"
    for a, b in zip(batched[:3], single[:3]):
        assert np.array_equal(np.isnan(a.disparity), np.isnan(b.disparity))
        np.testing.assert_allclose(a.disparity, b.disparity, atol=1e-4, rtol=0, equal_nan=True)
        np.testing.assert_allclose(a.depth, b.depth, rtol=1e-5, atol=1e-6, equal_nan=True)
        np.testing.assert_allclose(a.points, b.points, rtol=1e-5, atol=1e-6, equal_nan=True)
        assert np.array_equal(a.colors, b.colors) and np.array_equal(a.left_rect, b.left_rect)
        assert a.camera == b.camera and a.t == b.t and a.delta_cx == b.delta_cx
        assert np.isfinite(a.disparity).any()
    # The two cameras of one size got their own results, not each other's.
    assert not np.allclose(np.nan_to_num(batched[0].disparity), np.nan_to_num(batched[1].disparity))


def test_a_failed_network_call_fails_only_the_frames_in_it(items):
    """SGBM here (no network): the wide pair's call raises a frame error for its frame only."""
    proc = StereoProcessor(ProcessorConfig(backend="sgbm", sgbm_num_disparities=32))
    original = proc.backend.compute

    def failing(left, right, grey=False):
        if left.shape[1] == W + 32:
            raise FrameError("out_of_memory", "simulated")
        return original(left, right, grey)

    proc.backend.compute = failing
    results = proc.process_batch(items)
    assert [isinstance(r, FrameError) for r in results] == [False, False, True, True]
    assert results[2].problem == "out_of_memory" and results[3].problem == "calibration_mismatch"
