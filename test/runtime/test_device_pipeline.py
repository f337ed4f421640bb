"""Rectification, matching, depth and points on the network's device (``geometry_device``)
against the host path (OpenCV and numpy) of the same processor.

On a GPU node this path uploads the pair once and brings each output back in one copy; here it
runs on the CPU device ('network'), which exercises the same code.
"""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from _stereo_rig import rig_calibration

from foundation_stereo_ros.pipeline import ALL_OUTPUTS, DecodedPair, ProcessorConfig, StereoCalibration, StereoProcessor

H, W, F_PX, BASELINE = 64, 96, 70.0, 0.12
pytestmark = pytest.mark.usefixtures("fp32_without_tf32")  # fp32 parity on a GPU: no TF32


@pytest.fixture(scope="module")
def pair(opencv_data) -> DecodedPair:
    def load(name):
        img = cv2.imread(str(opencv_data / name))
        return cv2.cvtColor(cv2.resize(img, (W, H), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)
    return DecodedPair(load("aloeL.jpg"), load("aloeR.jpg"), grey=False)


def calibration(distorted: bool) -> StereoCalibration:
    # Principal points differ between the rectified cameras: delta_cx = 3 px.
    return rig_calibration(W, H, F_PX, BASELINE, distorted, delta_cx=3.0)


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]  # the GPU run of this path needs CUDA


@pytest.fixture(scope="module", params=DEVICES)
def processors(vits_checkpoint, request):
    host = StereoProcessor(ProcessorConfig(backend="foundation_stereo", checkpoint=str(vits_checkpoint),
                                           device=request.param, iters=2, geometry_device="host", min_depth=0.05,
                                           max_depth=50.0))
    device = host.reconfigured(host.config.replace(geometry_device="network"))
    assert device.backend.model is host.backend.model
    return host, device


def _same(a: np.ndarray, b: np.ndarray, atol: float) -> None:
    assert a.shape == b.shape and a.dtype == b.dtype
    assert np.array_equal(np.isnan(a), np.isnan(b))
    np.testing.assert_allclose(a, b, atol=atol, rtol=1e-5, equal_nan=True)


def test_only_the_network_backend_on_a_gpu_uses_the_device_path_by_default(processors):
    host, device = processors
    assert not host.geometry_on_device and device.geometry_on_device
    auto = host.reconfigured(host.config.replace(geometry_device="auto"))
    assert auto.geometry_on_device == (host.config.device == "cuda")  # on the GPU only
    sgbm = StereoProcessor(ProcessorConfig(backend="sgbm", geometry_device="network"))
    assert not sgbm.geometry_on_device


def test_device_path_equals_the_host_path_without_rectification(processors, pair):
    host, device = processors
    calib = calibration(distorted=False)
    a = host.process(pair, calib, ALL_OUTPUTS)
    b = device.process(pair, calib, ALL_OUTPUTS)
    assert not a.rectified and not b.rectified
    # The network saw the same pixels: the outputs agree to float rounding.
    _same(b.disparity, a.disparity, atol=1e-4)
    _same(b.depth, a.depth, atol=1e-5)
    _same(b.points, a.points, atol=1e-5)
    assert np.isfinite(a.disparity).any() and np.isnan(a.disparity).any()  # both kinds of pixel compared
    assert np.array_equal(b.colors, a.colors) and np.array_equal(b.left_rect, pair.left)
    assert (b.min_disparity, b.max_disparity, b.f, b.t) == (a.min_disparity, a.max_disparity, a.f, a.t)
    assert {"rectify", "match", "depth", "points", "download"} <= set(b.timings)


def test_device_rectification_matches_opencv_and_feeds_the_network(processors, pair):
    host, device = processors
    calib = calibration(distorted=True)
    a = host.process(pair, calib, ALL_OUTPUTS)
    b = device.process(pair, calib, ALL_OUTPUTS)
    assert a.rectified and b.rectified
    for got, expected in ((b.left_rect, a.left_rect), (b.right_rect, a.right_rect)):
        diff = np.abs(got.astype(int) - expected.astype(int))
        # The same sampling positions; OpenCV's interpolation weights round a little differently.
        assert diff.max() <= 2 and diff.mean() < 0.1, (diff.max(), diff.mean())
    assert (b.left_rect != pair.left).mean() > 0.5  # the images really were remapped
    # The device disparity is the network's answer for the device-rectified images.
    raw = host.backend.compute(b.left_rect, b.right_rect) - np.float32(calib.delta_cx)
    _same(b.disparity, raw, atol=1e-3)
    # Depth and points follow from that disparity exactly as on the host.
    from foundation_stereo_ros.pipeline import depth_to_points, disparity_to_depth

    depth = disparity_to_depth(b.disparity, calib.f, calib.baseline, 0.05, 50.0)
    cam = calib.rectified_left
    _same(b.depth, depth, atol=1e-5)
    _same(b.points, depth_to_points(depth, cam.fx, cam.fy, cam.cx, cam.cy), atol=1e-5)
    # The points' colours are the device-rectified left image's.
    rgb = b.left_rect.astype(np.uint32)
    assert np.array_equal(b.colors, (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2])


def test_device_path_skips_the_rectified_pair_copy_when_not_asked(processors, pair):
    from dataclasses import replace

    _, device = processors
    calib = calibration(distorted=True)
    full = device.process(pair, calib, ALL_OUTPUTS)
    lean = device.process(pair, calib, replace(ALL_OUTPUTS, rectified_images=False))
    assert lean.left_rect is None and lean.right_rect is None and lean.rectified
    # Everything else is unchanged, the points' colours included (taken on the device).
    for name in ("disparity", "depth", "points", "disparity_color"):
        _same(getattr(lean, name), getattr(full, name), atol=0)
    assert np.array_equal(lean.colors, full.colors)
    # Without rectification the pictures are the decoded ones, already on the host: always kept.
    plain = device.process(pair, calibration(distorted=False), replace(ALL_OUTPUTS, rectified_images=False))
    assert np.array_equal(plain.left_rect, pair.left) and np.array_equal(plain.right_rect, pair.right)


def test_device_path_at_a_reduced_scale_matches_the_host_path(processors, pair, monkeypatch):
    host, device = processors
    half_host = host.reconfigured(host.config.replace(scale=0.5))
    half_device = device.reconfigured(device.config.replace(scale=0.5))
    calib = calibration(distorted=False)
    # Random weights leave few valid pixels at half size: compare what the network returned.
    seen = []
    real = type(host.backend)._network
    monkeypatch.setattr(type(host.backend), "_network",
                        lambda self, *a: seen.append(real(self, *a).clone()) or seen[-1])
    a = half_host.process(pair, calib, ALL_OUTPUTS)
    b = half_device.process(pair, calib, ALL_OUTPUTS)
    assert a.network_scale == b.network_scale == 0.5
    assert [tuple(s.shape) for s in seen] == [(1, 1, H // 2, W // 2)] * 2
    # The host resizes uint8 images (rounded), the device keeps them in float: nearly equal inputs.
    diff = (seen[0] - seen[1]).abs()
    assert diff.median().item() < 0.05 and diff.mean().item() < 0.2, (diff.median().item(), diff.mean().item())
    assert np.array_equal(np.isnan(a.disparity), np.isnan(b.disparity)) or \
        (np.isnan(a.disparity) != np.isnan(b.disparity)).mean() < 0.01


def test_device_path_is_cached_per_calibration(processors, pair):
    _, device = processors
    calib = calibration(distorted=True)
    device.process(pair, calib, ALL_OUTPUTS)
    built = device.rectifier.maps_computed
    remaps = len(device._device_path._remaps)
    device.process(pair, calib, ALL_OUTPUTS)
    assert device.rectifier.maps_computed == built and len(device._device_path._remaps) == remaps >= 1


def test_device_outputs_come_back_as_arrays_of_their_own():
    """to_host: one array per tensor, equal values, no memory shared with the device tensors or
    with each other (a result must survive the next frame). On CUDA through pinned memory."""
    from foundation_stereo_ros.pipeline.device_geometry import to_host

    device = "cuda" if torch.cuda.is_available() else "cpu"
    a = torch.arange(12, dtype=torch.float32, device=device).reshape(3, 4)
    b = torch.arange(24, dtype=torch.uint8, device=device).reshape(2, 3, 4).permute(0, 2, 1)  # not contiguous
    host = to_host({"a": a, "b": b})
    assert set(host) == {"a", "b"} and to_host({}) == {}
    np.testing.assert_array_equal(host["a"], a.cpu().numpy())
    np.testing.assert_array_equal(host["b"], b.cpu().numpy())
    assert host["b"].shape == (2, 4, 3) and host["b"].dtype == np.uint8
    assert not np.shares_memory(host["a"], host["b"])
    a.add_(1)  # the device tensors change (the next frame): the host arrays do not
    np.testing.assert_array_equal(host["a"], np.arange(12, dtype=np.float32).reshape(3, 4))
    if device == "cuda":
        second = to_host({"a": a})
        assert not np.shares_memory(second["a"], host["a"])  # a cached pinned block is not handed out twice
