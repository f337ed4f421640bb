"""The edge filter (``edge_filter``): pixels on a depth discontinuity ("flying pixels") become
invalid in disparity, depth and points, with the same mask on the host (numpy) and on the
network's device (torch; here on the CPU, on a GPU with the ``gpu`` marker)."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from foundation_stereo_ros.pipeline import (ALL_OUTPUTS, DecodedPair, ProcessorConfig, StereoCalibration,
                                            StereoProcessor, config_problems, make_camera_model)
from foundation_stereo_ros.pipeline import device_geometry
from foundation_stereo_ros.pipeline.backends import FoundationStereoBackend
from foundation_stereo_ros.pipeline.geometry import depth_edges, remove_depth_edges

from _edge_scene import step_scene

H, W, F_PX, BASELINE, DELTA_CX = 40, 64, 100.0, 0.1, 1.5  # f * B = 10
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


def _device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    return torch.device(name)


def test_off_by_default_and_range_checked():
    assert ProcessorConfig().edge_filter == 0.0
    assert config_problems(dict(edge_filter=-0.01)) and "edge_filter" in config_problems(dict(edge_filter=-0.01))[0]
    assert not config_problems(dict(edge_filter=0.05))


def test_threshold_is_the_relative_depth_jump_to_the_nearer_neighbour():
    # Depths 1.00 and 1.04 m (4 %) stay at 0.05; 1.00 and 1.06 m (6 %) do not; the unit is a fraction.
    fb = 10.0
    for far_z, removed in ((1.04, False), (1.06, True)):
        d = np.array([[fb / 1.0, fb / far_z]], np.float32)
        assert depth_edges(d, 0.05, np).tolist() == [[removed, removed]]
    # Symmetric: the same jump is found from either side, vertically too.
    d = np.array([[5.0], [10.0], [10.0]], np.float32)
    assert depth_edges(d, 0.5, np)[:, 0].tolist() == [True, True, False]
    # Neither a NaN nor a non-positive neighbour is a discontinuity.
    d = np.array([[np.nan, 10.0, -3.0, 0.0, 10.0]], np.float32)
    assert not depth_edges(d, 0.05, np).any()


def test_step_scene_loses_its_flying_pixels_and_keeps_the_planes():
    d, flying, interior = step_scene(H, W)
    edges = depth_edges(d, 0.05, np)
    assert edges[flying].all()
    assert not edges[interior].any()
    # Only the ramp and the last pixel of each plane beside it.
    assert np.array_equal(np.flatnonzero(edges.any(axis=0)), np.arange(29, 35))
    # Off (0) changes nothing, bit for bit.
    assert remove_depth_edges(d.copy(), 0.0).tobytes() == d.tobytes()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("max_jump", [0.001, 0.05, 0.3, 2.0])
def test_host_and_device_masks_are_identical(device, max_jump):
    rng = np.random.default_rng(int(max_jump * 1000))
    d = rng.uniform(0.5, 80, (61, 83)).astype(np.float32)
    d[rng.random(d.shape) < 0.05] = np.nan
    d[rng.random(d.shape) < 0.02] = 0.0
    d[rng.random(d.shape) < 0.02] *= -1
    d[3, 3], d[9, 9] = np.inf, 3e38  # overflowing products compare alike
    # Neighbours exactly at the threshold (float32 rounding decides: both sides must round alike).
    factor = np.float32(1 + max_jump)
    d[20, 10:14] = [7.0, 7.0 * factor, 7.0 * factor * factor, np.nextafter(7.0 * factor ** 3, np.float32(1e9))]
    host = depth_edges(d, max_jump, np)
    dev = depth_edges(torch.from_numpy(d).to(_device(device)), max_jump, torch).cpu().numpy()
    assert host.dtype == dev.dtype == np.bool_
    assert np.array_equal(host, dev)
    assert host.any() and not host.all()
    filtered = device_geometry.remove_depth_edges(torch.from_numpy(d).to(_device(device)), max_jump).cpu().numpy()
    assert np.array_equal(np.isnan(filtered), np.isnan(remove_depth_edges(d.copy(), max_jump)))


class SceneBackend(FoundationStereoBackend):
    """The network backend (so the device path runs) answering with a fixed raw disparity."""

    def __init__(self, config: ProcessorConfig, raw: np.ndarray) -> None:
        super().__init__(config, model=SimpleNamespace(cfg=SimpleNamespace(max_disp=64)))
        self.raw = raw

    def compute(self, left, right, grey=False):
        return self.raw.copy()

    def compute_on_device(self, images):
        return torch.from_numpy(self.raw.copy()).to(images.device)


def _calibration() -> StereoCalibration:
    k = [F_PX, 0, W / 2, 0, F_PX, H / 2, 0, 0, 1]
    def p(cx: float, tx: float):
        return [F_PX, 0, cx, tx, 0, F_PX, H / 2, 0, 0, 0, 1, 0]
    left = make_camera_model(W, H, k, [0.0] * 5, np.eye(3).reshape(-1), p(W / 2, 0.0))
    right = make_camera_model(W, H, k, [0.0] * 5, np.eye(3).reshape(-1), p(W / 2 - DELTA_CX, -F_PX * BASELINE))
    return StereoCalibration(left, right)


def _process(geometry_device: str, device: str, **options):
    d, flying, interior = step_scene(H, W)
    config = ProcessorConfig(backend="foundation_stereo", checkpoint="unused", device=device,
                             geometry_device=geometry_device, **options)
    proc = StereoProcessor(config, backend=SceneBackend(config, d + np.float32(DELTA_CX)))
    assert proc.geometry_on_device == (geometry_device == "network")
    rgb = np.random.default_rng(1).integers(0, 256, (H, W, 3), np.uint8)
    return proc.process(DecodedPair(rgb, rgb.copy(), grey=False), _calibration(), ALL_OUTPUTS), d, flying, interior


@pytest.mark.parametrize("device", DEVICES)
def test_both_geometry_paths_filter_disparity_depth_and_points_alike(device):
    _device(device)
    results = {}
    for path in ("host", "network"):
        off, d, flying, interior = _process(path, device)
        # Off: today's output, the ramp's flying pixels included.
        np.testing.assert_allclose(off.disparity, d, rtol=1e-6, equal_nan=True)
        assert np.isfinite(off.depth[flying]).all() and np.isfinite(off.points[flying]).all()
        on, *_ = _process(path, device, edge_filter=0.05)
        for name, a in (("disparity", on.disparity), ("depth", on.depth), ("points", on.points)):
            invalid = np.isnan(a) if a.ndim == 2 else np.isnan(a).any(axis=-1)
            assert invalid[flying].all(), f"{path}: flying pixels kept in {name}"
            assert not invalid[interior].any(), f"{path}: plane interior lost in {name}"
            assert np.array_equal(invalid, np.isnan(on.disparity)), f"{path}: {name} disagrees with the disparity"
        assert "edge_filter" in on.timings
        results[path] = on
    assert np.array_equal(np.isnan(results["host"].disparity), np.isnan(results["network"].disparity))
    np.testing.assert_allclose(results["network"].depth, results["host"].depth, rtol=1e-6, equal_nan=True)


def test_off_is_bit_for_bit_the_output_without_the_parameter():
    for path in ("host", "network"):
        default, *_ = _process(path, "cpu")
        off, *_ = _process(path, "cpu", edge_filter=0.0)
        for name in ("disparity", "depth", "cloud"):
            assert getattr(off, name).tobytes() == getattr(default, name).tobytes(), (path, name)
        assert "edge_filter" not in off.timings


def test_sgbm_and_a_reconfigured_processor_filter_too():
    # The offline tools' SGBM path: the filter removes exactly the discontinuities of the unfiltered
    # (published-convention) disparity, and a runtime reconfiguration switches it.
    rng = np.random.default_rng(3)
    right = rng.integers(0, 256, (H, W + 40), np.uint8)
    left = right[:, 8:W + 8].copy()  # background: 8 px
    left[10:30, 30:50] = right[10:30, 14:34]  # a box in front: 16 px
    rgb = lambda g: np.repeat(g[..., None], 3, axis=2)  # noqa: E731
    pair = DecodedPair(rgb(left), rgb(right[:, :W].copy()), grey=True)
    proc = StereoProcessor(ProcessorConfig(backend="sgbm", sgbm_num_disparities=16, sgbm_block_size=3))
    off = proc.process(pair, _calibration(), ALL_OUTPUTS)
    on = proc.reconfigured(proc.config.replace(edge_filter=0.2)).process(pair, _calibration(), ALL_OUTPUTS)
    expected = np.isnan(off.disparity) | depth_edges(off.disparity, 0.2, np)
    assert np.array_equal(np.isnan(on.disparity), expected)
    assert np.array_equal(np.isnan(on.depth), np.isnan(on.disparity) | np.isnan(off.depth))
    assert expected.sum() > np.isnan(off.disparity).sum()  # the box's edges were discontinuities


def test_on_the_aloe_pair_with_sgbm_the_filter_removes_few_pixels_and_worse_ones(opencv_data):
    """The README's figures: fraction of SGBM's valid pixels removed and bad-3 of those kept, per
    threshold, against no filter (printed; ``pytest -s`` shows them)."""
    from foundation_stereo_ros.tools.main_job import aloe_frames

    (frame,), _ = aloe_frames(opencv_data, scale=1 / 3, frames=1, window=1.0)  # 427x370, as the main job
    left, right, gt, calib = frame.left, frame.right, frame.gt_disparity, frame.calibration
    h, w = left.shape[:2]
    known = np.isfinite(gt) & (gt > 0)
    rows = {}
    for threshold in (0.0, 0.02, 0.05, 0.1):
        proc = StereoProcessor(ProcessorConfig(backend="sgbm", sgbm_num_disparities=96, edge_filter=threshold))
        d = proc.process(DecodedPair(left, right, grey=False), calib, ALL_OUTPUTS).disparity
        valid = np.isfinite(d) & known
        bad3 = float((np.abs(d[valid] - gt[valid]) > 3.0).mean())
        rows[threshold] = (int(valid.sum()), bad3)
    base_valid, base_bad3 = rows[0.0]
    print(f"\nAloe {w}x{h}, SGBM 96 disparities: no filter {base_valid} pixels with ground truth, bad-3 "
          f"{100 * base_bad3:.2f} %")
    for threshold in (0.02, 0.05, 0.1):
        n, bad3 = rows[threshold]
        print(f"edge_filter {threshold}: removes {100 * (1 - n / base_valid):.2f} % of them, bad-3 of those kept "
              f"{100 * bad3:.2f} %")
    removed = 1 - rows[0.05][0] / base_valid
    assert 0.0 < removed < 0.25  # it removes some pixels, not the picture
    assert rows[0.05][1] < base_bad3  # and those it keeps are better than before
    assert rows[0.02][0] <= rows[0.05][0] <= rows[0.1][0] <= base_valid  # a smaller threshold removes more
