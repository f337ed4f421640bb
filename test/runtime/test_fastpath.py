"""Execution modes against the eager fp32 path; no host-device synchronisation.

Modes that need CUDA skip with the reason on a machine without it. torch.compile is tested with
the ``aot_eager`` backend (dynamo capture with ``fullgraph=True``, so any graph break or
host-device synchronisation fails, plus AOT decompositions) because inductor takes many minutes
to compile the network on a small CPU; set FOUNDATION_STEREO_TEST_INDUCTOR=1 to use inductor.
The benchmark records every mode's difference from eager fp32 with inductor on a GPU.
"""
from __future__ import annotations

import os
from typing import List

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from foundation_stereo_ros.analysis.host_traffic import SYNCHRONISING_OPS, synchronises
from foundation_stereo_ros.model import load_model
from foundation_stereo_ros.runtime.fastpath import (EXECUTIONS, PARITY_TOLERANCE_PX, NetworkRunner,
                                                    mode_unavailable_reason)

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
pytestmark = pytest.mark.usefixtures("fp32_without_tf32")  # fp32 parity on a GPU: no TF32
INDUCTOR = os.environ.get("FOUNDATION_STEREO_TEST_INDUCTOR") == "1"
ITERS = 3


@pytest.fixture(scope="module")
def model(vits_checkpoint):
    return load_model(vits_checkpoint, device=DEVICE)


@pytest.fixture(scope="module")
def pair():
    gen = torch.Generator().manual_seed(3)
    left = torch.rand(1, 3, 64, 96, generator=gen) * 255
    # A shifted copy gives the network a real correspondence to find.
    right = torch.roll(left, shifts=-5, dims=-1) + torch.rand(1, 3, 64, 96, generator=gen) * 8
    return left.to(DEVICE), right.clamp(0, 255).to(DEVICE)


@pytest.fixture(scope="module")
def reference(model, pair):
    assert not torch.backends.cudnn.allow_tf32  # made in true fp32 (pytestmark above)
    with torch.no_grad():
        return model(*pair, iters=ITERS).disparity.float()


MODES = [(e, p) for e in EXECUTIONS for p in ("fp32", "fp16", "bf16") if (e, p) != ("eager", "fp32")]


def _backend(execution: str) -> str:
    # compile-cudagraph captures the compiled parts itself: no backend that captures on its own
    return "inductor" if INDUCTOR else "aot_eager"


@pytest.mark.slow
@pytest.mark.parametrize("execution,precision", MODES, ids=[f"{e}-{p}" for e, p in MODES])
def test_mode_matches_eager_fp32(model, pair, reference, execution, precision):
    reason = mode_unavailable_reason(execution, precision, DEVICE)
    if reason is not None:
        pytest.skip(f"{execution}-{precision} on {DEVICE}: {reason}")
    runner = NetworkRunner(model, ITERS, precision, execution, compile_backend=_backend(execution))
    first = runner(*pair)
    second = runner(*pair)  # cached graph / compiled code on the second call
    mean_tol, max_tol = PARITY_TOLERANCE_PX[precision]
    for out in (first, second):
        assert out.shape == reference.shape and out.dtype == torch.float32
        diff = (out - reference).abs()
        print(f"{execution}-{precision} vs eager fp32: mean {diff.mean().item():.4g} px, max {diff.max().item():.4g} px")
        assert torch.isfinite(out).all()
        assert diff.mean().item() <= mean_tol, f"mean |d - d_fp32| = {diff.mean().item():.4g} px"
        assert diff.max().item() <= max_tol, f"max |d - d_fp32| = {diff.max().item():.4g} px"
    if execution == "cudagraph":
        # New input values through the same captured graph must change the output accordingly.
        other = (pair[1], pair[0])
        with torch.no_grad():
            expected = model(*other, iters=ITERS, precision=precision).disparity.float()
        got = runner(*other)
        assert (got - expected).abs().mean().item() <= mean_tol
        assert not torch.allclose(got, first)


def test_gpu_only_modes_report_why_on_the_cpu():
    assert mode_unavailable_reason("eager", "fp32", "cpu") is None
    assert mode_unavailable_reason("compile", "fp32", "cpu") is None
    assert "CUDA" in mode_unavailable_reason("eager", "fp16", "cpu")
    assert "CUDA" in mode_unavailable_reason("cudagraph", "fp32", "cpu")
    with pytest.raises(ValueError, match="execution"):
        mode_unavailable_reason("tensorrt", "fp32", "cpu")
    with pytest.raises(ValueError, match="precision"):
        mode_unavailable_reason("eager", "int8", "cpu")


@pytest.mark.skipif(DEVICE.type == "cuda", reason="checks the refusal on a machine without CUDA")
def test_runner_refuses_a_mode_the_device_lacks(model):
    with pytest.raises(ValueError, match="CUDA"):
        NetworkRunner(model, 2, "fp16", "eager")


def test_runner_rejects_bad_input(model, pair):
    runner = NetworkRunner(model, 1)
    left, right = pair
    with pytest.raises(ValueError, match="multiple of 32"):
        runner(left[..., :60], right[..., :60])
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        runner(left, right[:, :2])
    with pytest.raises(ValueError, match="iters"):
        NetworkRunner(model, 0)
    with pytest.raises(ValueError, match="multiple of 32"):
        runner.warmup(50, 64)


# ------------------------------------------------------------------ host-device synchronisation
class _OpRecorder(TorchDispatchMode):
    """Names of the ops a pass dispatches; a synchronising boolean-mask index is named ``nonzero``
    (its output size depends on the mask's values). What synchronises is the analysis' definition."""

    def __init__(self):
        super().__init__()
        self.ops: List[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if synchronises(func, args) and name not in SYNCHRONISING_OPS:
            name = "nonzero"
        self.ops.append(name)
        return func(*args, **(kwargs or {}))


def _syncing(ops: List[str]) -> List[str]:
    return sorted({op for op in ops if op in SYNCHRONISING_OPS})


def test_recorder_catches_synchronising_ops():
    x = torch.arange(6.0)
    with _OpRecorder() as rec:
        torch.unique(x)
        float(x.sum())
        x[x > 2]
    assert set(_syncing(rec.ops)) >= {"_local_scalar_dense", "nonzero"}
    assert any(op.startswith("unique") or op.startswith("_unique") for op in rec.ops)


def test_forward_has_no_host_device_synchronisation(model, pair):
    """The whole forward pass, GRU loop included, never needs a value back on the host."""
    with torch.no_grad(), _OpRecorder() as rec:
        model(*pair, iters=2)
    assert len(rec.ops) > 500  # the recorder saw the network
    assert _syncing(rec.ops) == []


# ------------------------------------------------------------------ TF32
def test_pytorch_defaults_to_tf32_convolutions_and_the_parity_tests_turn_it_off(fp32_without_tf32):
    """The fp32 reference and every fp32 mode above run with TF32 off (the ``fp32_without_tf32``
    fixture of test/conftest.py): PyTorch's own default would run the GPU's cuDNN convolutions in TF32."""
    cudnn_default, matmul_default = fp32_without_tf32
    assert cudnn_default is True and matmul_default is False
    assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32


# ------------------------------------------------------------------ compile: one GRU step, reused
@pytest.mark.slow
def test_compile_traces_the_gru_step_once_whatever_the_iterations(model, pair):
    """``compile`` compiles each part of the network on its own, so the work of compiling does not
    grow with the iteration count (a whole-pass graph unrolls every iteration: minutes for ViT-L
    at 32 iterations with inductor). Counted as the FX nodes handed to the compiler backend."""
    traced = {}
    for iters in (2, 5):
        nodes = []

        def backend(gm, example_inputs):
            nodes.append(len(gm.graph.nodes))
            return gm.forward

        torch._dynamo.reset()
        runner = NetworkRunner(model, iters, execution="compile", compile_backend=backend)
        with torch.no_grad():
            expected = model(*pair, iters=iters).disparity
        assert torch.allclose(runner(*pair), expected, atol=1e-4)
        traced[iters] = sum(nodes)
    torch._dynamo.reset()
    assert traced[2] == traced[5] > 1000, traced
