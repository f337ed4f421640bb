"""The pipeline's disparity backends apart from their execution modes (those are in
test/ros/test_backend_modes.py): what "invalid" means, running the network at another size than
the camera's, and the network backend on image sizes that are not multiples of 32."""
from __future__ import annotations

import sys

import cv2
import numpy as np
import pytest
import torch

from foundation_stereo_ros.model import load_model
from foundation_stereo_ros.pipeline import FoundationStereoBackend, ProcessorConfig
from foundation_stereo_ros.pipeline.backends import invalidate
from foundation_stereo_ros.pipeline.backends.resize import infer_at_network_size, infer_at_network_size_on_device


def test_invalidate_marks_negative_and_out_of_image_matches():
    d = np.array([[-1.0, 0.5, 3.0, 2.0]], np.float32)  # u = 0..3: u - d = 1, 0.5, -1, 1
    out = invalidate(d.copy())
    assert np.array_equal(np.isnan(out), np.array([[True, False, True, False]]))
    assert out[0, 1] == 0.5 and out[0, 3] == 2.0


def _pair(h: int, w: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    left = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    return left, np.roll(left, -2, axis=1)


def test_at_the_camera_size_the_network_sees_the_pair_as_it_is():
    left, right = _pair(12, 20)
    seen = []
    out = np.full((12, 20), 3.0, np.float32)
    got = infer_at_network_size(lambda a, b: seen.append((a, b)) or out, left, right, (20, 12), area=True)
    assert got is out and seen[0][0] is left and seen[0][1] is right


@pytest.mark.parametrize("network_size,area,interpolation", [((10, 6), True, cv2.INTER_AREA),
                                                             ((40, 24), False, cv2.INTER_LINEAR)])
def test_another_size_resizes_the_pair_and_scales_the_disparity_back(network_size, area, interpolation):
    left, right = _pair(12, 20)
    nw, nh = network_size
    seen = []

    def network(a, b):
        seen.append((a, b))
        return np.full(a.shape[:2], 1.5, np.float32)  # network px

    got = infer_at_network_size(network, left, right, network_size, area=area)
    assert np.array_equal(seen[0][0], cv2.resize(left, (nw, nh), interpolation=interpolation))
    assert np.array_equal(seen[0][1], cv2.resize(right, (nw, nh), interpolation=interpolation))
    assert got.shape == (12, 20) and got.dtype == np.float32
    np.testing.assert_allclose(got, 1.5 * 20 / nw, rtol=1e-6)  # camera px


@pytest.mark.parametrize("network_size,area", [((10, 6), True), ((40, 24), False), ((20, 12), True)])
def test_the_device_variant_resizes_and_scales_like_the_host_one(network_size, area):
    left, right = _pair(12, 20)
    images = torch.from_numpy(np.stack([left, right])).permute(0, 3, 1, 2).float()  # (2, 3, 12, 20)
    seen = []

    def network(pair):
        seen.append(tuple(pair.shape))
        return torch.full((1, 1) + tuple(pair.shape[-2:]), 1.5)

    got = infer_at_network_size_on_device(network, images, network_size, area=area)
    nw, nh = network_size
    assert seen == [(2, 3, nh, nw)] and tuple(got.shape) == (1, 1, 12, 20)
    np.testing.assert_allclose(got.numpy(), 1.5 * 20 / nw, rtol=1e-6)


def test_importing_the_pipeline_backends_needs_no_torch():
    import subprocess

    code = ("import sys; import foundation_stereo_ros.pipeline.backends; "
            "print('torch' in sys.modules, 'onnxruntime' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


@pytest.mark.parametrize("execution", ["eager", pytest.param("compile", marks=pytest.mark.slow)])
def test_network_backend_matches_model_infer_on_odd_sizes(vits_checkpoint, execution, monkeypatch):
    """50x70 images (padded to 64x96 on the way in, cropped on the way out): the prepared runner
    (``compile``, dynamo's cheap ``eager`` backend here) and eager give the network's disparity."""
    monkeypatch.setattr(FoundationStereoBackend, "compile_backend", "eager")
    model = load_model(vits_checkpoint, device="cpu")
    left, _ = _pair(50, 70, seed=5)
    right = np.roll(left, -3, axis=1)
    config = ProcessorConfig(backend="foundation_stereo", checkpoint="unused", device="cpu", iters=2,
                             execution=execution)
    backend = FoundationStereoBackend(config, model=model)
    got = backend.compute(left, right)
    assert backend.last_fast is (None if execution == "eager" else True)
    to_t = lambda a: torch.from_numpy(a).permute(2, 0, 1)[None].float()  # noqa: E731
    expected = model.infer(to_t(left), to_t(right), iters=2)[0, 0].numpy()
    assert got.shape == (50, 70) and got.dtype == np.float32
    u = np.arange(70)[None, :]
    bad = (expected < 0) | (u - expected < 0)
    assert np.array_equal(np.isnan(got), bad)
    np.testing.assert_allclose(got[~bad], expected[~bad], atol=1e-4, rtol=1e-5)
    assert backend.search_range(70) == (0.0, float(model.cfg.max_disp)) and backend.delta_d == 0.0
