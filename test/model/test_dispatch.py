"""The whole forward pass, op by op on the simulated CUDA device: no copy between host and
device, no synchronisation, no tensor made on the host; for both variants at every precision.
A CPU run cannot see the first and last kinds (there every tensor is on the host): this is
the check that a CUDA graph can capture the pass."""
from __future__ import annotations

import pytest
import torch
from timm.models.edgenext import PositionalEncodingFourier

from foundation_stereo_ros.analysis.host_traffic import HostTrafficRecorder, forward_host_traffic
from foundation_stereo_ros.analysis.simulated import simulated_cuda, simulated_cuda_model, simulation_problem
from foundation_stereo_ros.model import FoundationStereo, FoundationStereoConfig
from foundation_stereo_ros.model.features import FourierPositionalEncoding

PRECISIONS = ("fp32", "fp16", "bf16")
needs_simulation = pytest.mark.skipif(simulation_problem() is not None, reason=str(simulation_problem()))


@pytest.fixture(scope="module")
def vits():
    return simulated_cuda_model("vits")


@pytest.fixture(scope="module")
def vitl():
    return simulated_cuda_model("vitl")


def _kinds(findings):
    return sorted({f.kind for f in findings})


@needs_simulation
def test_recorder_sees_every_kind_of_host_traffic():
    recorder = HostTrafficRecorder()
    with simulated_cuda():
        x = torch.ones(4, device="cuda")
        with recorder:
            x + 1  # device work only
            assert recorder.findings == []
            host = torch.zeros(4)  # made on the host
            host.to("cuda")  # and copied over
            x.cpu()
            for synchronising in (lambda: x.sum().item(), lambda: x.nonzero(), lambda: x[x > 0],
                                  lambda: torch.unique(x)):
                try:  # shape-only tensors hold no value to give back
                    synchronising()
                except Exception:  # noqa: BLE001
                    pass
    kinds = [f.kind for f in recorder.findings]
    assert kinds[:3] == ["host tensor", "host-to-device copy", "device-to-host copy"]
    assert kinds[3:] == ["synchronisation"] * 4, [str(f) for f in recorder.findings]
    assert "test_dispatch.py" in recorder.findings[0].where  # the line that made the tensor


@needs_simulation
@pytest.mark.parametrize("precision", PRECISIONS)
def test_vits_forward_has_no_host_traffic(vits, precision):
    assert [str(f) for f in forward_host_traffic(vits, 64, 96, iters=2, precision=precision)] == []


@needs_simulation
@pytest.mark.parametrize("precision", PRECISIONS)
def test_vitl_forward_has_no_host_traffic(vitl, precision):
    assert [str(f) for f in forward_host_traffic(vitl, 64, 96, iters=2, precision=precision)] == []


@needs_simulation
@pytest.mark.slow
def test_hierarchical_inference_and_an_initial_disparity_have_no_host_traffic(vits):
    assert forward_host_traffic(vits, 64, 96, iters=1, precision="bf16", hierarchical=True) == []
    assert forward_host_traffic(vits, 64, 96, iters=1, precision="fp16", init_disp=True) == []


@needs_simulation
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_timm_positional_encoding_fails_the_check(vits, monkeypatch, precision):
    """timm's EdgeNeXt builds its mask with ``torch.zeros(shape)`` on the host and copies it to the
    device in every pass: put back, it is the check's only finding."""
    monkeypatch.setattr(FourierPositionalEncoding, "forward", PositionalEncodingFourier.forward)
    findings = forward_host_traffic(vits, 64, 96, iters=1, precision=precision)
    assert _kinds(findings) == ["host tensor", "host-to-device copy"]
    assert all("edgenext.py" in f.where and f.after == "monocular" for f in findings), [str(f) for f in findings]


@pytest.mark.parametrize("shape", [(2, 8, 12), (1, 15, 20), (2, 60, 80), (1, 1, 1)])
def test_positional_encoding_gives_timms_numbers(shape):
    torch.manual_seed(0)
    timm_module = PositionalEncodingFourier(dim=96)
    ours = FourierPositionalEncoding.from_timm(timm_module)
    with torch.no_grad():
        assert torch.equal(ours(shape), timm_module(shape))  # bit for bit, float32 on the CPU
    assert ours.token_projection is timm_module.token_projection  # the same published weights


def test_the_model_uses_it_under_the_published_key():
    with torch.device("meta"):
        model = FoundationStereo(FoundationStereoConfig(vit_size="vits"))
    found = {name: type(m) for name, m in model.named_modules() if name.endswith("pos_embd")}
    assert set(found.values()) == {FourierPositionalEncoding}, found
    keys = [k for k in model.state_dict() if ".pos_embd." in k]
    assert keys and all(k.split(".pos_embd.")[1] in ("token_projection.weight", "token_projection.bias")
                        for k in keys)
