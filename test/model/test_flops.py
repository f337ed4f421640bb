"""The network's floating-point work, counted on the simulated CUDA device, against the counts
the issue reports for the reference implementation (PyTorch's FLOP counter on
NVlabs/FoundationStereo): a check of the architecture's size at every stage that needs no GPU and
no weights, and the FLOP floor the benchmark relates its latency to."""
from __future__ import annotations

import pytest
import torch

from foundation_stereo_ros.analysis.simulated import count_flops, simulated_cuda_model, simulation_problem

T = 1e12
# Counting needs the simulated device: every PyTorch this project pins has it; PyTorch 2.3 without
# an NVIDIA driver does not (checked, not assumed).
pytestmark = pytest.mark.skipif(simulation_problem() is not None, reason=str(simulation_problem()))


@pytest.fixture(scope="module")
def vitl():
    return simulated_cuda_model("vitl")


@pytest.mark.slow
def test_vitl_480x640_matches_the_reference_counts(vitl):
    totals = {iters: count_flops(vitl, 480, 640, iters) for iters in (8, 16, 32)}
    for iters, reference in ((8, 8.1), (16, 10.8), (32, 16.3)):
        assert totals[iters]["total"] / T == pytest.approx(reference, rel=0.02), iters
    stages = totals[16]["stages"]
    assert stages["monocular"] / T == pytest.approx(3.9, rel=0.05)  # DepthAnything on both views
    assert stages["aggregation"] / T == pytest.approx(1.0, rel=0.05)  # the 3D cost filtering
    assert totals[16]["gru_iteration"] / T == pytest.approx(0.34, rel=0.03)
    # Everything but the GRU is the same at every iteration count; the GRU grows linearly.
    assert totals[32]["total"] - totals[16]["total"] == 16 * totals[16]["gru_iteration"]


@pytest.mark.slow
def test_vitl_736x1280_matches_the_reference_counts(vitl):
    for iters, reference in ((8, 27.0), (16, 36.0), (32, 53.0)):
        assert count_flops(vitl, 736, 1280, iters)["total"] / T == pytest.approx(reference, rel=0.02), iters


def test_vits_saves_in_the_monocular_branch(vitl):
    small = count_flops("vits", 480, 640, 8)["stages"]
    large = count_flops(vitl, 480, 640, 8)["stages"]
    assert small["monocular"] < 0.15 * large["monocular"]
    # The refinement does not see the ViT: its work is the same for both variants.
    for stage in ("gru", "upsample"):
        assert small[stage] == large[stage], stage


def test_count_flops_needs_a_padded_size():
    with pytest.raises(ValueError, match="multiples of 32"):
        count_flops("vits", 480, 630, 8)


def test_counting_leaves_no_trace_on_torch():
    import torch.nn.functional as F

    sdpa = F.scaled_dot_product_attention
    count_flops("vits", 64, 96, 1)
    assert F.scaled_dot_product_attention is sdpa
    assert torch.zeros(2).sum().item() == 0.0  # real tensors again, outside the fake mode


def test_benchmark_counts_only_when_asked(tmp_path, capsys):
    import json

    from foundation_stereo_ros.tools import benchmark

    out = tmp_path / "flops.json"
    assert benchmark.main(["--device", "cpu", "--flops-only", "--variants", "vits", "--sizes", "60x90",
                           "--iters", "1,3", "--peak-tflops", "0.001", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["status"], r["padded"], r["iters"]) for r in rows] == [("counted", [64, 96], 1), ("counted", [64, 96], 3)]
    one, three = (r["flops"] for r in rows)
    assert three["stages"]["gru"] == 3 * one["stages"]["gru"]
    assert three["stages"]["monocular"] == one["stages"]["monocular"] > 0
    assert three["total"] - one["total"] == 2 * one["gru_iteration"]
    printed = capsys.readouterr().out
    assert "floor ms" in printed and f"{three['total'] / 1e6:9.1f}" in printed  # ms at 1 GFLOP/s
    assert "median" not in printed  # nothing was timed


@pytest.mark.slow
def test_device_ops_grow_by_a_fixed_count_per_iteration_and_autocast_adds_casts():
    model = simulated_cuda_model("vits")
    one, three = count_flops(model, 64, 96, 1), count_flops(model, 64, 96, 3)
    assert three["device_ops"] - one["device_ops"] == 2 * one["device_ops_per_gru_iteration"] > 50
    bf16 = count_flops(model, 64, 96, 1, "bf16")
    assert bf16["total"] == one["total"]  # the same work, in other dtypes
    assert bf16["device_ops"] > one["device_ops"]  # autocast's casts are ops of their own
