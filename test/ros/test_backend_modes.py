"""The network backend's execution modes (parameter ``execution``) in the pipeline and the node.

torch.compile runs with dynamo's ``eager`` backend here (the whole forward pass captured with
``fullgraph=True``, the same graph inductor would compile) because inductor needs minutes for
the network on a small CPU; the CUDA-only modes skip without a GPU, with the reason.
"""
from __future__ import annotations

import itertools
import time

import numpy as np
import pytest
import torch

from foundation_stereo_ros.pipeline import (BackendError, ExecutionModeError, FoundationStereoBackend,
                                            ProcessorConfig, StereoProcessor)
from foundation_stereo_ros.pipeline import backends as backends_module
from foundation_stereo_ros.ros.conversions import disparity_from_msg
from foundation_stereo_ros.runtime.fastpath import PARITY_TOLERANCE_PX, NetworkRunner
from foundation_stereo_ros.runtime.upload import PinnedUpload

from _ros_helpers import (NodeHarness, diagnostic_values, domain_id_for_tests, rectified_infos, textured_scene,
                          wait_for)

import rclpy  # noqa: E402 - after _ros_helpers, which limits discovery to this machine
from rclpy.context import Context  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402

from foundation_stereo_ros.ros.stereo_depth_node import StartupError, StereoDepthNode  # noqa: E402

H, W, ITERS = 64, 96, 2
_ns = itertools.count()


@pytest.fixture(autouse=True)
def cheap_compile(monkeypatch):
    monkeypatch.setattr(FoundationStereoBackend, "compile_backend", "eager")


def config(checkpoint, **kw) -> ProcessorConfig:
    values = dict(backend="foundation_stereo", checkpoint=str(checkpoint), device="cpu", iters=ITERS)
    values.update(kw)
    return ProcessorConfig(**values)


@pytest.fixture(scope="module")
def eager(vits_checkpoint):
    return FoundationStereoBackend(config(vits_checkpoint))


@pytest.fixture(scope="module")
def scene():
    left, right, _ = textured_scene(H, W, seed=4)
    return left, right


def _close(a: np.ndarray, b: np.ndarray) -> None:
    mean_tol, max_tol = PARITY_TOLERANCE_PX["fp32"]
    both = np.isfinite(a) & np.isfinite(b)
    assert (np.isfinite(a) == np.isfinite(b)).mean() > 0.999
    diff = np.abs(a[both] - b[both])
    assert diff.mean() <= mean_tol and diff.max() <= max_tol, (diff.mean(), diff.max())


@pytest.mark.slow
def test_compiled_mode_is_prepared_once_and_matches_eager(eager, scene, monkeypatch):
    fast = FoundationStereoBackend(config("unused", execution="compile"), model=eager.model)
    calls = []
    real = NetworkRunner.__call__
    monkeypatch.setattr(NetworkRunner, "__call__", lambda self, l, r: calls.append(tuple(l.shape)) or real(self, l, r))
    assert fast.prepared_size is None
    assert fast.prepare(W - 6, H - 3) is True  # pads to 64x96
    assert fast.prepared_size == (H, W)
    calls.clear()
    left, right = scene
    _close(fast.compute(left, right), eager.compute(left, right))
    assert calls == [(1, 3, H, W)]  # the frame went through the prepared runner
    assert fast.last_fast is True and eager.last_fast is None

    # Another size runs eager and leaves the prepared size alone (no recompilation mid-stream).
    calls.clear()
    big_l, big_r = np.tile(left, (1, 2, 1)), np.tile(right, (1, 2, 1))
    _close(fast.compute(big_l, big_r), eager.compute(big_l, big_r))
    assert calls == [] and fast.prepared_size == (H, W) and fast.last_fast is False


@pytest.mark.slow
def test_first_frame_prepares_when_no_warmup_size_is_given(eager, scene):
    fast = FoundationStereoBackend(config("unused", execution="compile"), model=eager.model)
    left, right = scene
    _close(fast.compute(left, right), eager.compute(left, right))
    assert fast.prepared_size == (H, W)


def test_a_mode_that_cannot_be_prepared_skips_one_frame_then_runs_eager(eager, scene, monkeypatch):
    def broken(self, height, width, batch=1, runs=2):
        raise RuntimeError("no C++ compiler found\nlong details")

    monkeypatch.setattr(NetworkRunner, "warmup", broken)
    left, right = scene
    at_start = FoundationStereoBackend(config("unused", execution="compile"), model=eager.model)
    with pytest.raises(BackendError, match="execution 'compile' could not be prepared for 96x64 images: "
                                           "RuntimeError: no C\\+\\+ compiler found"):
        at_start.prepare(W, H)

    lazy = FoundationStereoBackend(config("unused", execution="compile"), model=eager.model)
    with pytest.raises(ExecutionModeError, match="later frames run eager") as info:
        lazy.compute(left, right)
    assert info.value.problem == "execution_failed"
    _close(lazy.compute(left, right), eager.compute(left, right))
    assert lazy.prepared_size is None


def test_out_of_memory_while_preparing_falls_back_to_a_lower_scale(eager, scene, monkeypatch):
    def oom(self, height, width, batch=1, runs=2):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(NetworkRunner, "warmup", oom)
    fast = FoundationStereoBackend(config("unused", execution="compile"), model=eager.model)
    left, right = scene
    out = fast.compute(left, right)
    assert fast.last_scale == 0.5 and fast.last_oom_retries == 1
    half = FoundationStereoBackend(config("unused", scale=0.5), model=eager.model)
    np.testing.assert_allclose(out, half.compute(left, right), atol=PARITY_TOLERANCE_PX["fp32"][1], equal_nan=True)


def test_reconfiguring_keeps_the_prepared_mode_unless_it_is_affected(eager, scene, vits_checkpoint):
    proc = StereoProcessor(config(vits_checkpoint, execution="compile"), backend=None)
    assert proc.prepare(W, H) is True
    runner = proc.backend._runner
    same = proc.reconfigured(proc.config.replace(min_depth=0.5, max_depth=9.0))
    assert same.backend.model is proc.backend.model and same.backend._runner is runner
    assert same.backend.prepared_size == (H, W)
    other = proc.reconfigured(proc.config.replace(iters=ITERS + 1))
    assert other.backend.model is proc.backend.model and other.backend._runner is None
    eager_again = proc.reconfigured(proc.config.replace(execution="eager"))
    assert eager_again.prepare(W, H) is False and eager_again.backend.prepared_size is None


@pytest.mark.parametrize("values,message", [
    (dict(execution="cudagraph"), "execution 'cudagraph' needs a CUDA device"),
    (dict(execution="compile-cudagraph"), "needs a CUDA device"),
    (dict(execution="compile", hierarchical=True), "hierarchical inference runs two passes"),
    (dict(execution="compile", warmup_width=640), "set both warmup_width and warmup_height"),
])
def test_impossible_mode_settings_are_refused(values, message):
    with pytest.raises(ValueError, match=message):
        ProcessorConfig(backend="foundation_stereo", checkpoint="x", device="cpu", **values)


def test_pinned_upload_gives_the_pair_on_the_device():
    left = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    right = left[::-1].copy()
    up = PinnedUpload("cpu")
    pair = up(left, right)
    assert pair.dtype == torch.uint8 and tuple(pair.shape) == (2, 5, 7, 3)
    assert np.array_equal(pair[0].numpy(), left) and np.array_equal(pair[1].numpy(), right)
    assert up.allocations == 0  # no page-locked memory off CUDA


@pytest.mark.gpu  # pinned host buffers are for CUDA transfers; no GPU here
def test_pinned_upload_reuses_one_buffer_per_size():
    rng = np.random.default_rng(1)
    up = PinnedUpload("cuda")
    for _ in range(3):
        left = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
        right = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
        pair = up(left, right)
        assert pair.is_cuda and np.array_equal(pair[1].cpu().numpy(), right)
    assert up.allocations == 1
    up(left[:32], right[:32])
    assert up.allocations == 2


@pytest.mark.gpu  # the pinned upload and CUDA graphs exist only with CUDA
def test_cuda_graph_mode_on_an_odd_size_matches_the_cpu_network(vits_checkpoint, eager):
    """60x90 images: uploaded through the pinned buffer, padded to 64x96, run as one CUDA graph."""
    rng = np.random.default_rng(7)
    left = rng.integers(0, 256, (60, 90, 3), dtype=np.uint8)
    right = np.roll(left, -4, axis=1)
    gpu = FoundationStereoBackend(config(vits_checkpoint, device="cuda", execution="cudagraph"))
    assert gpu.prepare(90, 60) is True and gpu.prepared_size == (H, W)
    got = gpu.compute(left, right)
    assert gpu.last_fast is True  # the frame went through the captured graph
    _close(got, eager.compute(left, right))


def _publish_and_compare(h: NodeHarness, eager: FoundationStereoBackend, seed: int) -> None:
    """One rectified pair through the node: its disparity must be the eager backend's."""
    left, right, _ = textured_scene(H, W, seed=seed)
    infos = rectified_infos(W, H, 80.0, 0.1, W / 2, W / 2, H / 2)
    stamp = time.time_ns()
    h.publish_arrays(left, right, "rgb8", infos, stamp)
    msg = h.wait_outputs(stamp, ["disparity"], timeout_s=120.0)["disparity"]
    _close(disparity_from_msg(msg), eager.compute(left, right))


@pytest.mark.slow
def test_node_prepares_the_mode_at_start_and_publishes_the_same_disparity(vits_checkpoint, eager, capfd):
    params = dict(backend="foundation_stereo", checkpoint=str(vits_checkpoint), device="cpu", iters=ITERS,
                  execution="compile", warmup_width=W, warmup_height=H)
    h = NodeHarness(params, namespace=f"/modes_{next(_ns)}", subscribe=("disparity",))
    try:
        backend = h.node.processor.backend
        assert backend.prepared_size == (H, W)  # prepared before any frame arrived
        _publish_and_compare(h, eager, seed=6)
        # Logged during construction, before any /rosout subscriber could exist: read the console.
        console = capfd.readouterr().err
        assert f"preparing execution 'compile' for {W}x{H} images" in console
        assert f"execution 'compile' prepared for {W}x{H} images" in console
        # A camera of another size still gets depth (eager), and the node says why it is slow.
        wide = 2 * W
        left, right, _ = textured_scene(H, wide, seed=8)
        stamp = time.time_ns()
        h.publish_arrays(left, right, "rgb8", rectified_infos(wide, H, 80.0, 0.1, wide / 2, wide / 2, H / 2), stamp)
        msg = h.wait_outputs(stamp, ["disparity"], timeout_s=120.0)["disparity"]
        _close(disparity_from_msg(msg), eager.compute(left, right))
        hw = h.node.get_fully_qualified_name()
        assert wait_for(lambda: any(v.get("eager_fallback_frames") == "1" and v["_level"] == "1"
                                    for v in diagnostic_values(h.received, hw)), 10.0)
        assert any(f"({wide}x{H}) ran eager: execution 'compile' is prepared for network input {W}x{H} only" in line
                   for line in h.rosout_lines()), h.rosout_lines()
    finally:
        h.close()


def test_node_refuses_to_start_when_the_mode_cannot_be_prepared(vits_checkpoint, monkeypatch):
    monkeypatch.setattr(backends_module.FoundationStereoBackend, "_prepare_runner",
                        lambda self, *size: (_ for _ in ()).throw(RuntimeError("inductor failed")))
    params = dict(backend="foundation_stereo", checkpoint=str(vits_checkpoint), device="cpu", iters=ITERS,
                  execution="compile", warmup_width=W, warmup_height=H)
    context = Context()
    rclpy.init(context=context, domain_id=domain_id_for_tests())
    try:
        with pytest.raises(StartupError, match="could not be prepared for 96x64 images: RuntimeError: inductor "
                                               "failed"):
            StereoDepthNode(context=context, namespace=f"/modes_{next(_ns)}",
                            parameter_overrides=[Parameter(k, value=v) for k, v in params.items()])
    finally:
        rclpy.try_shutdown(context=context)


@pytest.mark.slow
def test_switching_the_mode_at_runtime_prepares_it_on_the_next_frame(vits_checkpoint, eager):
    from _ros_helpers import set_params

    params = dict(backend="foundation_stereo", checkpoint=str(vits_checkpoint), device="cpu", iters=ITERS)
    h = NodeHarness(params, namespace=f"/modes_{next(_ns)}", subscribe=("disparity",))
    try:
        assert h.node.processor.backend.prepared_size is None
        (result,) = set_params(h, execution="compile")
        assert result.successful, result.reason
        assert wait_for(lambda: any("execution 'compile' will be prepared on the next frame" in line
                                    for line in h.rosout_lines()), 10.0), h.rosout_lines()
        _publish_and_compare(h, eager, seed=7)
        backend = h.node.processor.backend
        assert backend.execution == "compile" and backend.prepared_size == (H, W)
        (refused,) = set_params(h, execution="cudagraph")  # no CUDA here: refused with the reason
        assert not refused.successful and "needs a CUDA device" in refused.reason
    finally:
        h.close()
