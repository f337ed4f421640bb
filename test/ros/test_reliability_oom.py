"""CUDA out of memory during inference: free, retry the frame at half the resolution, come back to
the configured resolution when memory allows; the node logs it and reports it in /diagnostics.

There is no GPU here: a stand-in network with a memory budget raises torch's OutOfMemoryError
when its input has more pixels than the budget allows (and returns the scene's true disparity
otherwise), so the retry logic and its effect on depth are checked exactly. One test injects the
error into the real network.
"""
from __future__ import annotations

import time
import types
import weakref

import cv2
import numpy as np
import pytest
import torch

import foundation_stereo_ros.model
from foundation_stereo_ros.model import load_model
from foundation_stereo_ros.pipeline import (FoundationStereoBackend, FrameError, InferenceMemoryError,
                                            ProcessorConfig, StereoProcessor, StereoInputError, is_out_of_memory)
from foundation_stereo_ros.pipeline.backends import network as backends_module
from foundation_stereo_ros.ros.conversions import image_to_array, numpy_to_image

from _ros_helpers import NodeHarness, diagnostic_values, rectified_infos, textured_scene, wait_for

H, W, F, B = 64, 192, 100.0, 0.1
LEFT, RIGHT, TRUTH = textured_scene(H, W, seed=3)
INFOS = rectified_infos(W, H, F, B, W / 2, W / 2, H / 2)


def oom(pixels):
    return torch.cuda.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {pixels * 4e-6:.2f} MiB "
                                       f"(GPU 0; 7.6 GiB total capacity)")


class BudgetNetwork:
    """Stands in for FoundationStereo. ``limit_px``: largest input (pixels) that fits in memory
    (None: no limit). Returns the true disparity of the scene at the size it is asked for."""

    def __init__(self, limit_px=None, error=oom):
        self.cfg = types.SimpleNamespace(max_disp=416)
        self.limit_px = limit_px
        self.error = error
        self.calls = []  # (width, height) of every call
        self.scratch = []  # weak references to what failed attempts allocated
        self.alive_at_call = []  # per call: whether a failed attempt's scratch was still alive

    def infer(self, left, right, iters=32, hierarchical=False, precision="fp32"):
        h, w = left.shape[-2:]
        self.calls.append((w, h))
        self.alive_at_call.append(any(r() is not None for r in self.scratch))
        if self.limit_px is not None and h * w > self.limit_px:
            scratch = torch.empty(h * w * 64)  # what the attempt held when it failed
            self.scratch.append(weakref.ref(scratch))
            raise self.error(h * w)
        d = cv2.resize(TRUTH, (w, h), interpolation=cv2.INTER_NEAREST) * np.float32(w / W)
        return torch.from_numpy(d)[None, None]


def processor(net, **config):
    cfg = ProcessorConfig(backend="foundation_stereo", checkpoint="fake.pth", device="cpu", rectify="never",
                          **config)
    return StereoProcessor(cfg, backend=FoundationStereoBackend(cfg, model=net))


def process(proc):
    return proc.process_messages(numpy_to_image(LEFT, "rgb8"), numpy_to_image(RIGHT, "rgb8"), *INFOS)


def assert_depth_is_the_scene(result):
    """The depth of the plane (12 px) and the box (24 px) by construction, away from edges."""
    inner = cv2.erode((TRUTH == 12).astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool)
    inner[:, :40] = False  # where the match leaves the right image
    box = cv2.erode((TRUTH == 24).astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool)
    for region, d_px in ((inner, 12), (box, 24)):
        np.testing.assert_allclose(result.depth[region], F * B / d_px, rtol=1e-4)


def test_out_of_memory_retries_the_frame_at_half_scale_with_right_depth():
    net = BudgetNetwork(limit_px=H * W // 2)  # full resolution does not fit, half does
    result = process(processor(net, oom_probe_period_s=0.0))
    assert net.calls == [(W, H), (W // 2, H // 2)]
    assert result.network_scale == 0.5 and result.oom_retries == 1 and result.reduced_resolution
    assert result.depth.shape == (H, W)
    assert_depth_is_the_scene(result)
    # Reported range follows the resolution really used: max_disp at half width covers twice the px.
    assert result.max_disparity == pytest.approx(416 * 2)


def test_memory_of_the_failed_attempt_is_freed_before_the_retry(monkeypatch):
    emptied = []
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(len(net.calls)))
    net = BudgetNetwork(limit_px=(W // 4) * (H // 4))
    process(processor(net, oom_probe_period_s=0.0))
    assert net.calls == [(W, H), (W // 2, H // 2), (W // 4, H // 4)]
    assert emptied == [1, 2]  # the cache was emptied after each failed attempt, before the next
    # Nothing a failed attempt allocated was still referenced (e.g. by its traceback) at the retry.
    assert net.alive_at_call == [False, False, False]
    assert all(r() is None for r in net.scratch)


def test_next_frames_return_to_the_configured_scale_when_memory_allows():
    net = BudgetNetwork(limit_px=H * W // 2)
    proc = processor(net, oom_probe_period_s=0.0)  # try the configured scale on every frame
    assert process(proc).network_scale == 0.5
    assert process(proc).network_scale == 0.5  # memory still short: full tried, half used
    assert net.calls[2:] == [(W, H), (W // 2, H // 2)]
    net.limit_px = None  # the other process released the GPU
    result = process(proc)
    assert result.network_scale == 1.0 and result.oom_retries == 0 and not result.reduced_resolution
    assert net.calls[-1] == (W, H)
    assert_depth_is_the_scene(result)


def test_reduced_scale_is_kept_between_probes_of_the_configured_one(monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(backends_module, "time", types.SimpleNamespace(monotonic=lambda: clock[0]))
    net = BudgetNetwork(limit_px=H * W // 2)
    proc = processor(net, oom_probe_period_s=5.0)
    assert process(proc).network_scale == 0.5
    net.limit_px = None
    clock[0] += 1.0
    calls = len(net.calls)
    result = process(proc)  # within the probe period: straight to the scale that worked, no failed try
    assert result.network_scale == 0.5 and result.oom_retries == 0
    assert net.calls[calls:] == [(W // 2, H // 2)]
    clock[0] += 5.0
    assert process(proc).network_scale == 1.0  # probe: memory is back
    assert process(proc).network_scale == 1.0
    assert net.calls[-2:] == [(W, H), (W, H)]


def test_out_of_memory_at_every_scale_skips_the_frame_and_the_next_one_starts_over():
    net = BudgetNetwork(limit_px=16)
    proc = processor(net, oom_probe_period_s=60.0, oom_min_scale_factor=0.25)
    with pytest.raises(InferenceMemoryError) as e:
        process(proc)
    assert e.value.problem == "out_of_memory"
    assert isinstance(e.value, FrameError) and isinstance(e.value, RuntimeError)
    assert not isinstance(e.value, StereoInputError)  # not the input's fault
    assert "out of memory" in str(e.value) and "0.25" in str(e.value)
    assert net.calls == [(W, H), (W // 2, H // 2), (W // 4, H // 4)]
    net.limit_px = None
    assert process(proc).network_scale == 1.0  # no stale fallback after a failure


def test_no_retries_when_the_factor_is_one():
    net = BudgetNetwork(limit_px=H * W // 2)
    with pytest.raises(InferenceMemoryError):
        process(processor(net, oom_min_scale_factor=1.0))
    assert net.calls == [(W, H)]


def test_configured_scale_is_the_starting_point():
    net = BudgetNetwork(limit_px=(W // 4) * (H // 4))
    result = process(processor(net, scale=0.5, oom_probe_period_s=0.0))
    assert result.network_scale == 0.25 and net.calls == [(W // 2, H // 2), (W // 4, H // 4)]
    assert_depth_is_the_scene(result)


@pytest.mark.parametrize("error,handled", [
    (lambda px: torch.cuda.OutOfMemoryError("CUDA out of memory."), True),
    (lambda px: RuntimeError("CUDA error: out of memory"), True),
    (lambda px: RuntimeError("cuDNN error: CUDNN_STATUS_INTERNAL_ERROR"), False),
    # cuDNN and cuBLAS allocation failures, as PyTorch words them
    (lambda px: RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"), True),
    (lambda px: RuntimeError("cuDNN error: CUDNN_STATUS_INTERNAL_ERROR_DEVICE_ALLOCATION_FAILED"), True),
    (lambda px: RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"), True),
    (lambda px: RuntimeError("CUDA error: cudaErrorMemoryAllocation"), True),
    (lambda px: ValueError("out of memory"), False),
])
def test_only_allocator_failures_are_retried(error, handled):
    """cuDNN / cuBLAS allocation failures are retried at a lower scale like torch's own
    OutOfMemoryError, not counted as internal errors."""
    assert is_out_of_memory(error(1)) == handled
    net = BudgetNetwork(limit_px=H * W // 2, error=error)
    proc = processor(net)
    if handled:
        assert process(proc).network_scale == 0.5
    else:
        with pytest.raises(type(error(1))):
            process(proc)
        assert len(net.calls) == 1


def test_an_allocator_failure_wrapped_by_another_error_is_retried():
    """torch.compile re-raises a failure inside compiled code as its own error ``from`` it."""
    class BackendFailed(Exception):
        pass

    def wrapped(px):
        try:
            raise RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED")
        except RuntimeError as e:
            raise BackendFailed("backend='inductor' raised: RuntimeError") from e

    def error(px):
        try:
            wrapped(px)
        except BackendFailed as e:
            return e

    assert is_out_of_memory(error(1))
    assert not is_out_of_memory(BackendFailed("no cause"))
    net = BudgetNetwork(limit_px=H * W // 2, error=error)
    assert process(processor(net)).network_scale == 0.5


def test_real_network_recovers_from_an_injected_out_of_memory(vits_checkpoint):
    model = load_model(str(vits_checkpoint), device="cpu")
    real_infer = model.infer
    sizes, outputs = [], []

    def infer(left, right, **kw):
        sizes.append(tuple(left.shape[-2:]))
        if left.shape[-1] > 64:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        outputs.append(real_infer(left, right, **kw))
        return outputs[-1]

    model.infer = infer
    h, w = 32, 128
    cfg = ProcessorConfig(backend="foundation_stereo", checkpoint=str(vits_checkpoint), device="cpu", iters=1,
                          rectify="never")
    proc = StereoProcessor(cfg, backend=FoundationStereoBackend(cfg, model=model))
    left, right, _ = textured_scene(h, w, seed=1)
    infos = rectified_infos(w, h, F, B, w / 2, w / 2, h / 2)
    result = proc.process_messages(numpy_to_image(left, "rgb8"), numpy_to_image(right, "rgb8"), *infos)
    assert sizes == [(h, w), (h // 2, w // 2)]
    assert result.network_scale == 0.5 and result.disparity.shape == (h, w)
    # Random weights: the values mean nothing, but the published disparity must be the half-size
    # network output brought back to camera pixels (resized, times 2), invalid where it leaves the image.
    half = outputs[0][0, 0].numpy()
    expected = cv2.resize(half, (w, h), interpolation=cv2.INTER_LINEAR) * np.float32(2.0)
    expected[(expected < 0) | (expected > np.arange(w, dtype=np.float32)[None, :])] = np.nan
    np.testing.assert_allclose(result.disparity, expected, rtol=1e-6, atol=1e-5)


# ---------------------------------------------------------------------------------------------- node
@pytest.fixture
def oom_node(monkeypatch):
    net = BudgetNetwork(limit_px=H * W // 2)
    monkeypatch.setattr(foundation_stereo_ros.model, "load_model", lambda path, device="cpu": net)
    h = NodeHarness(dict(backend="foundation_stereo", checkpoint="/models/fake.pth", device="cpu", rectify="never",
                         oom_probe_period_s=0.0, diagnostics_period_s=0.3, log_throttle_s=60.0),
                    namespace="/oom", subscribe=("disparity", "depth"))
    h.net = net
    yield h
    h.close()


def send(node):
    stamp = time.time_ns()
    node.publish(numpy_to_image(LEFT, "rgb8"), numpy_to_image(RIGHT, "rgb8"), *INFOS, stamp)
    return stamp


def latest_diagnostics(node):
    values = diagnostic_values(node.received, node.node.get_fully_qualified_name())
    return values[-1] if values else {}


def test_node_survives_out_of_memory_and_recovers(oom_node):
    node, net = oom_node, oom_node.net
    # 1. Memory is short: the frame comes out, matched at half resolution, with the right depth.
    stamp = send(node)
    out = node.wait_outputs(stamp, ["disparity", "depth"])
    assert net.calls[-2:] == [(W, H), (W // 2, H // 2)]
    result = types.SimpleNamespace(depth=image_to_array(out["depth"]))
    assert_depth_is_the_scene(result)
    assert wait_for(lambda: latest_diagnostics(node).get("network_scale") == "0.5"
                    and int(latest_diagnostics(node).get("reduced_resolution_frames", 0)) == 1, 5.0)
    values = latest_diagnostics(node)
    assert int(values["oom_retries"]) == 1 and values["configured_scale"] == "1"
    assert any(int(v["_level"]) == 1 and "out of GPU memory" in v["_message"]
               for v in diagnostic_values(node.received, node.node.get_fully_qualified_name()))
    assert wait_for(lambda: any("[out_of_memory_fallback]" in line and "scale 0.5" in line
                                for line in node.rosout_lines()), 5.0)

    # 2. Memory is back: the next frame runs at the configured resolution.
    net.limit_px = None
    stamp = send(node)
    node.wait_outputs(stamp, ["disparity", "depth"])
    assert net.calls[-1] == (W, H)
    assert wait_for(lambda: latest_diagnostics(node).get("network_scale") == "1", 5.0)

    # 3. Not even the smallest scale fits: the frame is skipped, logged and counted; no depth.
    net.limit_px = 16
    bad = send(node)
    assert wait_for(lambda: node.problem_count("out_of_memory") == 1, 20.0)
    net.limit_px = None
    stamp = send(node)
    node.wait_outputs(stamp, ["disparity", "depth"])
    assert node.received.by_stamp("depth", bad) is None and node.received.by_stamp("disparity", bad) is None
    assert wait_for(lambda: any("[out_of_memory]" in line for line in node.rosout_lines()), 5.0)
    assert wait_for(lambda: node.diagnostic_count("problem.out_of_memory") == 1, 5.0)
    assert node.problem_count("internal_error") == 0
