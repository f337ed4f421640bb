"""What OnnxRunner asks of ONNX Runtime's providers, by the device's memory (8 and 16 GB Jetson
boards, a desktop GPU), checked against a stand-in ``onnxruntime`` that records the session's
options: no GPU and no onnxruntime-gpu needed."""
from __future__ import annotations

import sys
import types

import pytest

from foundation_stereo_ros.runtime import onnx_runner
from foundation_stereo_ros.runtime.onnx_runner import GIB, OnnxRunner, memory_plan

PROVIDERS = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


class FakeOrt(types.ModuleType):
    def __init__(self):
        super().__init__("onnxruntime")
        self.sessions = []
        ort = self

        class SessionOptions:
            pass

        class InferenceSession:
            def __init__(self, path, sess_options=None, providers=(), provider_options=()):
                ort.sessions.append(dict(options=sess_options, providers=list(providers),
                                         provider_options=list(provider_options)))
                self._providers = list(providers)

            def get_inputs(self):
                return [types.SimpleNamespace(name=n, shape=[1, 3, 64, 96]) for n in ("left", "right")]

            def get_providers(self):
                return self._providers

        self.SessionOptions = SessionOptions
        self.InferenceSession = InferenceSession
        self.GraphOptimizationLevel = types.SimpleNamespace(ORT_ENABLE_ALL=99)

    def get_available_providers(self):
        return list(PROVIDERS)


@pytest.fixture
def fake_ort(monkeypatch, tmp_path):
    ort = FakeOrt()
    monkeypatch.setitem(sys.modules, "onnxruntime", ort)
    monkeypatch.setattr(onnx_runner, "read_export_metadata", lambda path: {})
    model = tmp_path / "m.onnx"
    model.write_bytes(b"stand-in")
    return ort, model


@pytest.mark.parametrize("gib,workspace,limit", [(7.4, 1, 7.4 - 2.5), (15.3, 2, 15.3 - 3), (139.8, 4, None)],
                         ids=["orin-8gb", "orin-16gb", "desktop"])
def test_options_suit_the_device_memory(fake_ort, monkeypatch, gib, workspace, limit):
    ort, model = fake_ort
    total = int(gib * GIB)  # what an 8 GB Orin NX reports is less than 8 GiB
    monkeypatch.setattr(onnx_runner, "device_memory_bytes", lambda device_id=0: total)
    runner = OnnxRunner(model, PROVIDERS, trt_cache_dir="/cache", trt_fp16=True)
    trt, cuda, cpu = ort.sessions[-1]["provider_options"]
    assert trt["trt_max_workspace_size"] == workspace * GIB
    assert trt["trt_engine_cache_path"] == "/cache" and trt["trt_timing_cache_enable"] is True
    assert trt["trt_timing_cache_path"] == "/cache"
    assert trt["trt_layer_norm_fp32_fallback"] is True and trt["trt_fp16_enable"] is True
    board = limit is not None
    if board:
        assert cuda["gpu_mem_limit"] == int(total - (gib - limit) * GIB)
    else:
        assert "gpu_mem_limit" not in cuda
    assert cuda["arena_extend_strategy"] == ("kSameAsRequested" if board else "kNextPowerOfTwo")
    assert cuda["cudnn_conv_algo_search"] == ("HEURISTIC" if board else "EXHAUSTIVE")
    assert cuda["cudnn_conv_use_max_workspace"] == ("0" if board else "1")
    assert cuda["use_tf32"] == "1"
    assert cpu == {}
    assert ort.sessions[-1]["options"].enable_cpu_mem_arena is (not board)
    assert runner.memory == memory_plan(total)


def test_the_cpu_provider_alone_asks_nothing_of_the_gpu(fake_ort, monkeypatch):
    ort, model = fake_ort
    monkeypatch.setattr(onnx_runner, "device_memory_bytes", lambda device_id=0: pytest.fail("GPU queried"))
    OnnxRunner(model, ["CPUExecutionProvider"])
    assert ort.sessions[-1]["provider_options"] == [{}]
    assert ort.sessions[-1]["options"].enable_cpu_mem_arena is True


def test_fp32_parity_turns_tf32_off_and_an_explicit_plan_wins(fake_ort):
    ort, model = fake_ort
    plan = memory_plan(8 * GIB)
    OnnxRunner(model, PROVIDERS, trt_fp16=False, cuda_tf32=False, memory=plan)
    trt, cuda, _ = ort.sessions[-1]["provider_options"]
    assert cuda["use_tf32"] == "0"
    assert trt["trt_fp16_enable"] is False and trt["trt_layer_norm_fp32_fallback"] is False
    assert trt["trt_max_workspace_size"] == GIB and "trt_engine_cache_enable" not in trt


def test_memory_plan_never_caps_below_one_gib():
    assert memory_plan(3 * GIB).gpu_mem_limit_bytes == GIB
    assert memory_plan(None).gpu_mem_limit_bytes is None


def test_the_node_says_what_tensorrt_fp16_does_to_the_positions(fake_ort, monkeypatch, tmp_path):
    from foundation_stereo_ros.pipeline import ProcessorConfig
    from foundation_stereo_ros.pipeline.backends import OnnxBackend

    _, model = fake_ort
    monkeypatch.setattr(onnx_runner, "device_memory_bytes", lambda device_id=0: 8 * GIB)
    config = ProcessorConfig(backend="onnx", onnx_model=str(model), device="cuda", onnx_trt_cache_dir=str(tmp_path))
    fp16 = OnnxBackend(config.replace(precision="fp16"))
    assert any("positions" in n and "precision fp32" in n for n in fp16.notes), fp16.notes
    fp32 = OnnxBackend(config.replace(precision="fp32"))
    assert not any("positions" in n for n in fp32.notes)
