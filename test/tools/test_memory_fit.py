"""foundation-stereo-memory: the storage-peak tracer, the simulated CUDA device, the fit, the size
search and the CLI on the CPU.

On a GPU the tool measures ``torch.cuda.max_memory_allocated`` instead of tracing; that path, and
the simulation against it, run only where CUDA is present (see the GPU check script in the README)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from foundation_stereo_ros.analysis.simulated import simulated_cuda, simulated_cuda_model, simulation_problem
from foundation_stereo_ros.tools import memory_fit

# The simulated device needs a PyTorch that makes fake CUDA tensors without a driver (the pinned
# one does; 2.3 does not).
needs_simulation = pytest.mark.skipif(simulation_problem() is not None, reason=str(simulation_problem()))


def test_storage_peak_counts_live_storage_only():
    before = torch.empty(10_000)
    tracker = memory_fit.StoragePeak()
    tracker.ignore([before])
    with tracker:
        a = torch.empty(1000)  # 4000 bytes
        b = torch.empty(2000)  # 8000
        v = b.view(2, 1000)  # a view: no new storage
        _ = before.view(-1)  # existing storage: not counted
        del a
        c = torch.empty(500)  # 2000
    assert tracker.peak == 12_000
    assert tracker.current == 10_000
    del b, v, c
    assert tracker.current == 0


@needs_simulation
def test_simulated_cuda_applies_autocast_and_fused_attention_then_restores_torch():
    import torch.nn.functional as F

    sdpa = F.scaled_dot_product_attention
    with simulated_cuda():
        x = torch.empty(1, 3, 16, 16, device="cuda")
        w = torch.empty(4, 3, 3, 3, device="cuda")
        with torch.autocast("cuda", dtype=torch.bfloat16):
            assert F.conv2d(x, w).dtype == torch.bfloat16  # CUDA autocast is live without a GPU
        q = torch.empty(1, 2, 4096, 64, device="cuda")
        tracker = memory_fit.StoragePeak()
        tracker.ignore([q])
        with tracker:
            out = F.scaled_dot_product_attention(q, q, q)
        assert out.shape == q.shape and out.device.type == "cuda"
        # Fused attention keeps O(L) storage; the math fallback would hold 2x4096x4096 floats (128 MiB).
        assert tracker.peak < 8 * 2 ** 20
    assert F.scaled_dot_product_attention is sdpa
    with pytest.raises(RuntimeError), simulated_cuda():
        raise RuntimeError("boom")
    assert F.scaled_dot_product_attention is sdpa
    if torch.cuda.is_available():
        return
    with pytest.warns(UserWarning, match="CUDA is not available"):
        with torch.autocast("cuda", dtype=torch.bfloat16):  # PyTorch's own rule is back
            pass


@needs_simulation
def test_simulated_trace_agrees_with_a_real_cpu_trace():
    """The shape-only CUDA pass traces (almost) the storage of a real pass: fp32 against the CPU
    trace of the same network (the kernels' side outputs differ slightly), and bf16's pass smaller
    (its total adds the bf16 copies of the weights: 118 MiB for ViT-S)."""
    from foundation_stereo_ros.model import FoundationStereo, FoundationStereoConfig

    torch.manual_seed(0)
    real = FoundationStereo(FoundationStereoConfig(vit_size="vits")).eval()
    cpu, cpu_method = memory_fit.measure_peak_mib(real, 64, 96, "fp32", False, 1)
    sim_model = simulated_cuda_model("vits")
    sim, sim_method = memory_fit.measure_peak_mib(sim_model, 64, 96, "fp32", False, 1)
    sim_bf16, _ = memory_fit.measure_peak_mib(sim_model, 64, 96, "bf16", False, 1)
    assert (cpu_method, sim_method) == (memory_fit.METHOD_CPU, memory_fit.METHOD_SIMULATED)
    print(f"64x96 ViT-S peak: cpu trace {cpu:.1f} MiB, simulated cuda fp32 {sim:.1f} / bf16 {sim_bf16:.1f} MiB")
    assert abs(sim - cpu) < 0.03 * cpu
    assert sim_bf16 - sim_model.cast_weights.nbytes() / 2 ** 20 < sim


@needs_simulation
def test_the_cost_volume_is_not_the_peak_at_camera_size():
    """Regression: the correlation volume once made a C x D x H x W copy (1.7 GB at 480x640 for
    ViT-L); now the ViT-S peak at 480x640 stays under 2 GiB in fp32, weights included."""
    model = simulated_cuda_model("vits")
    peak, _ = memory_fit.measure_peak_mib(model, 480, 640, "fp32", False, 1)
    assert peak < 2048


def test_fit_recovers_a_quadratic_and_refits_linear_when_it_curves_down():
    p = np.array([1e5, 3e5, 6e5, 9e5])
    a, b, c = memory_fit.fit_peak(p, 300 + 2e-3 * p + 1e-9 * p * p)
    assert (a, b, c) == pytest.approx((300, 2e-3, 1e-9), rel=1e-6)
    a, b, c = memory_fit.fit_peak(p, 300 + 2e-3 * p - 1e-9 * p * p)
    assert c == 0.0 and b > 0
    with pytest.raises(ValueError, match="two or more"):
        memory_fit.fit_peak([1e5, 1e5], [1.0, 2.0])


@pytest.mark.parametrize("aspect_name", ["4:3", "16:9"])
def test_largest_size_is_the_largest_that_fits(aspect_name):
    aspect = memory_fit.ASPECTS[aspect_name]
    fit = (500.0, 4e-3, 2e-9)
    peak = lambda h, w: fit[0] + fit[1] * h * w + fit[2] * (h * w) ** 2  # noqa: E731
    h, w = memory_fit.largest_size(fit, 7168.0, aspect)
    assert h % 32 == 0 and w % 32 == 0 and abs(w / h - aspect) < 0.1
    assert peak(h, w) <= 7168.0
    w2 = w + 32
    h2 = max(32, int(round(w2 / aspect / 32)) * 32)
    assert peak(h2, w2) > 7168.0
    assert memory_fit.largest_size(fit, 100.0, aspect) is None  # the weights alone do not fit


@pytest.mark.parametrize("guess_width", [256, 1024, 2048, 4096])
def test_search_finds_the_largest_measured_fit_from_any_guess(guess_width):
    aspect = 4.0 / 3.0
    calls = []

    def measure(size):  # a peak that the fit would not know: an extra term in the width
        calls.append(size)
        h, w = size
        return None if w > 3000 else 300.0 + 2e-3 * h * w + 0.5 * w  # None: out of memory

    usable = 4000.0
    brute = max(w for w in range(32, 4097, 32) if measure(memory_fit._size_at(w, aspect)) is not None
                and measure(memory_fit._size_at(w, aspect)) <= usable)
    calls.clear()
    found = memory_fit.search_measured(measure, memory_fit._size_at(guess_width, aspect), usable, aspect,
                                       max_measurements=40)
    assert found["size"] == list(memory_fit._size_at(brute, aspect))
    assert found["verified_within_budget"] and found["verified_peak_mib"] <= usable and found["maximal"]
    assert found["measurements"] == len(set(calls)) <= 40


def test_search_reports_what_it_could_not_fix():
    def too_big(size):
        return 1e9

    assert memory_fit.search_measured(too_big, (32, 32), 100.0, 1.0)["size"] is None
    stuck = memory_fit.search_measured(too_big, (1536, 2048), 100.0, 4.0 / 3.0, max_measurements=1)
    assert stuck["verified_within_budget"] is False and stuck["measurements"] == 1


def test_cli_on_the_cpu_measures_fits_and_writes_json(tmp_path, capsys):
    out = tmp_path / "memory.json"
    code = memory_fit.main(["--device", "cpu", "--variants", "vits", "--samples", "64x96,96x128", "--budgets-gib",
                            "2", "--reserve-gib", "0.5", "--iters", "1", "--no-hierarchical", "--json", str(out)])
    assert code == 0
    result = json.loads(out.read_text())
    (row,) = result["rows"]
    assert row["status"] == "ok" and row["method"] == "cpu tensor storage (traced)"
    peaks = [s["peak_mib"] for s in row["samples"]]
    weights_mib = 237.0  # ViT-S with EdgeNeXt: about 238 MiB of fp32 weights and buffers
    assert weights_mib < peaks[0] < peaks[1]  # activations on top of the weights, growing with size
    size = row["largest"]["2GiB 4:3"]["size"]
    a, b, c = row["fit_mib"].values()
    assert a + b * size[0] * size[1] + c * (size[0] * size[1]) ** 2 <= 1.5 * 1024
    printed = capsys.readouterr().out
    assert "2GiB 4:3" in printed and f"{size[0]}x{size[1]}" in printed


@pytest.mark.parametrize("argv,message", [
    (["--device", "cpu", "--precisions", "bf16"], "need a CUDA device (or --device simulated-cuda)"),
    (["--device", "cpu", "--budgets-gib", "1", "--reserve-gib", "1"], "must exceed"),
    (["--device", "cpu", "--variants", "vitx"], "unknown variant"),
])
def test_cli_rejects_what_it_cannot_do(argv, message, capsys):
    assert memory_fit.main(argv) == 2
    assert message in capsys.readouterr().err


@pytest.mark.gpu  # measures torch.cuda.max_memory_allocated; no GPU here
def test_cuda_peak_is_measured_and_grows_with_size():
    from foundation_stereo_ros.model import FoundationStereo, FoundationStereoConfig

    model = FoundationStereo(FoundationStereoConfig(vit_size="vits")).eval().cuda()
    small, method = memory_fit.measure_peak_mib(model, 96, 128, "bf16", False, 2)
    large, _ = memory_fit.measure_peak_mib(model, 192, 256, "bf16", False, 2)
    assert method == "cuda max_memory_allocated" and 0 < small < large


@pytest.mark.slow
@needs_simulation
def test_cli_simulates_cuda_without_a_gpu(tmp_path, capsys):
    out = tmp_path / "memory.json"
    code = memory_fit.main(["--device", "simulated-cuda", "--variants", "vits", "--precisions", "bf16",
                            "--samples", "96x128,192x256", "--budgets-gib", "2", "--reserve-gib", "0.5",
                            "--iters", "1", "--no-hierarchical", "--json", str(out)])
    assert code == 0
    result = json.loads(out.read_text())
    assert result["device"] == "simulated-cuda" and result["device_total_mib"] is None
    (row,) = result["rows"]
    assert row["method"] == memory_fit.METHOD_SIMULATED and row["precision"] == "bf16"
    entry = row["largest"]["2GiB 4:3"]
    # Each answer is traced again at its own size and stays within the budget.
    assert entry["verified_within_budget"] and entry["verified_peak_mib"] <= 1.5 * 1024
    assert "simulated cuda" in capsys.readouterr().out


@pytest.mark.gpu  # compares the simulation with a real GPU; no GPU here
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_simulation_against_the_gpu(precision):
    """The simulated peak against ``max_memory_allocated`` on the GPU at hand (printed); the
    trace leaves out cuDNN workspaces and allocator rounding, so it may be lower, not far off."""
    from foundation_stereo_ros.model import FoundationStereo, FoundationStereoConfig

    model = FoundationStereo(FoundationStereoConfig(vit_size="vits")).eval().cuda()
    measured, _ = memory_fit.measure_peak_mib(model, 480, 640, precision, False, 2)
    simulated, _ = memory_fit.measure_peak_mib(simulated_cuda_model("vits"), 480, 640, precision,
                                               False, 2)
    print(f"480x640 ViT-S {precision}: measured {measured:.0f} MiB, simulated {simulated:.0f} MiB")
    assert 0.75 * measured <= simulated <= 1.1 * measured
