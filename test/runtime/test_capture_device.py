"""CUDA-graph capture and replay on the model's device, and the compile-mode refusals, checked on
a machine without a GPU: ``torch.cuda`` is replaced by a recorder that remembers which device
was current when each stream, graph and replay was made (dispatch-level check, no kernels)."""
from __future__ import annotations

import contextlib
import types
from typing import List

import pytest
import torch

from foundation_stereo_ros.runtime import fastpath
from foundation_stereo_ros.runtime.fastpath import NetworkRunner, compile_unavailable_reason, mode_unavailable_reason


class FakeCuda:
    """Just enough of ``torch.cuda`` for NetworkRunner's capture path, recording the current
    device and stream at each call."""

    def __init__(self, fail_capture: bool = False):
        self.current_device = 0
        self.default = self.Stream(self, device=torch.device("cuda:0"), name="default")
        self.current = self.default
        self.events: List[tuple] = []
        self.fail_capture = fail_capture

    class Stream:
        def __init__(self, cuda=None, device=None, name="side"):
            self.cuda, self.device, self.name = cuda, torch.device(device), name

        def wait_stream(self, other):
            pass

        def synchronize(self):
            pass

    def install(self, monkeypatch):
        cuda = self
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)

        @contextlib.contextmanager
        def device(d):
            previous = cuda.current_device
            cuda.current_device = torch.device(d).index
            try:
                yield
            finally:
                cuda.current_device = previous

        def stream_factory(device=None, **_):
            s = FakeCuda.Stream(cuda, device if device is not None else f"cuda:{cuda.current_device}")
            cuda.events.append(("stream", s.device.index, cuda.current_device))
            return s

        class Graph:
            def replay(self):
                cuda.events.append(("replay", cuda.current_device, cuda.current.name))

        @contextlib.contextmanager
        def graph(g, stream=None, capture_error_mode="global", **_):
            cuda.events.append(("capture", cuda.current_device, stream.device.index, capture_error_mode))
            cuda.current = stream  # as torch.cuda.graph does, and does not undo when capture_end fails
            yield
            if cuda.fail_capture:
                raise RuntimeError("CUDA error: operation not permitted when stream is capturing")
            cuda.current = stream

        monkeypatch.setattr(torch.cuda, "device", device)
        monkeypatch.setattr(torch.cuda, "Stream", stream_factory)
        monkeypatch.setattr(torch.cuda, "CUDAGraph", Graph)
        monkeypatch.setattr(torch.cuda, "graph", graph)
        monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: cuda.current)
        monkeypatch.setattr(torch.cuda, "set_stream", lambda s: setattr(cuda, "current", s))
        monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
        return self


class StubModel(torch.nn.Module):
    """Parameters reported on cuda:1; forward records the device current when it runs."""

    def __init__(self, cuda: FakeCuda):
        super().__init__()
        self.cuda_state = cuda
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def parameters(self, recurse: bool = True):
        yield types.SimpleNamespace(device=torch.device("cuda:1"))

    def forward(self, left, right, iters, precision):
        self.cuda_state.events.append(("forward", self.cuda_state.current_device, self.cuda_state.current.name))
        return types.SimpleNamespace(disparity=left[:, :1] * 0)


def _runner(cuda: FakeCuda) -> NetworkRunner:
    runner = NetworkRunner(StubModel(cuda), 2, "fp32", "cudagraph", graph_warmup=2)
    runner._check = lambda left, right: None  # the inputs are CPU tensors standing in for cuda:1 ones
    return runner


def test_capture_and_replay_run_on_the_models_device(monkeypatch):
    cuda = FakeCuda().install(monkeypatch)
    runner = _runner(cuda)
    x = torch.zeros(1, 3, 32, 32)
    runner(x, x)
    runner(x, x)
    kinds = [e[0] for e in cuda.events]
    assert kinds == ["stream", "forward", "forward", "capture", "forward", "replay", "replay"]
    assert all(e[1] == 1 for e in cuda.events), cuda.events  # cuda:1 current for every step
    assert cuda.events[0] == ("stream", 1, 1)  # the side stream is made on cuda:1
    assert cuda.events[3] == ("capture", 1, 1, "thread_local")
    assert cuda.current is cuda.default and cuda.current_device == 0  # both restored


def test_a_failed_capture_leaves_the_thread_on_its_stream(monkeypatch):
    cuda = FakeCuda(fail_capture=True).install(monkeypatch)
    runner = _runner(cuda)
    x = torch.zeros(1, 3, 32, 32)
    with pytest.raises(RuntimeError, match="capturing"):
        runner(x, x)
    assert cuda.current is cuda.default, cuda.current.name
    assert cuda.current_device == 0
    assert runner._graphs == {}  # the next frame tries again rather than replaying a broken graph


def test_torch_cuda_graph_itself_does_not_restore_the_stream_when_capture_end_fails():
    """Why the runner restores the stream itself: torch.cuda.graph.__exit__ leaves its stream
    context only after capture_end returned."""
    import inspect

    source = inspect.getsource(torch.cuda.graph.__exit__)
    assert source.index("capture_end()") < source.index("stream_ctx.__exit__")
    assert "finally:\n            self.stream_ctx" not in source


def test_compile_is_refused_with_the_reason_where_triton_is_missing(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    real_find_spec = fastpath.importlib.util.find_spec
    monkeypatch.setattr(fastpath.importlib.util, "find_spec",
                        lambda name, *a: None if name == "triton" else real_find_spec(name, *a))
    for execution in ("compile", "compile-cudagraph"):
        reason = mode_unavailable_reason(execution, "fp16", "cuda")
        assert reason is not None and "Triton" in reason and "cudagraph" in reason
    assert mode_unavailable_reason("cudagraph", "fp16", "cuda") is None
    assert mode_unavailable_reason("compile", "fp16", "cuda", compile_backend="aot_eager") is None
    assert compile_unavailable_reason("fp32", "cpu") is None  # inductor's CPU kernels are C++, no Triton
    with pytest.raises(ValueError, match="Triton"):
        NetworkRunner(_cuda_stub(), 2, "fp16", "compile")


def _cuda_stub():
    class Stub(torch.nn.Module):
        def parameters(self, recurse=True):
            yield types.SimpleNamespace(device=torch.device("cuda:0"))
    return Stub()


@pytest.mark.parametrize("version,refused", [("2.5.8", True), ("2.6.3", False), ("2.7.4.post1", False)])
def test_compile_is_refused_with_flash_attn_before_2_6(monkeypatch, version, refused):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(fastpath, "flash_attention_available", lambda: True)
    monkeypatch.setattr(fastpath, "_flash_attn_version", lambda: version)
    monkeypatch.setattr(fastpath.importlib.util, "find_spec", lambda name, *a: object())
    reason = compile_unavailable_reason("fp16", "cuda")
    assert (reason is not None and "flash-attn" in reason and version in reason) == refused
    assert compile_unavailable_reason("fp32", "cuda") is None  # fp32 attention never calls flash-attn
