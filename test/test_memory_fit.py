"""foundation-stereo-memory: the storage-peak tracer, the fit, the size search and the CLI on the CPU.

On a GPU the tool measures ``torch.cuda.max_memory_allocated`` instead of tracing; that path runs
only where CUDA is present (see the GPU check script in the README)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from foundation_stereo_ros.tools import memory_fit


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
    (["--device", "cpu", "--precisions", "bf16"], "need a CUDA device"),
    (["--device", "cpu", "--budgets-gib", "1", "--reserve-gib", "1"], "must exceed"),
    (["--device", "cpu", "--variants", "vitx"], "unknown variant"),
])
def test_cli_rejects_what_it_cannot_do(argv, message, capsys):
    assert memory_fit.main(argv) == 2
    assert message in capsys.readouterr().err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="measures torch.cuda.max_memory_allocated; no GPU here")
def test_cuda_peak_is_measured_and_grows_with_size():
    from foundation_stereo_ros.model import FoundationStereo, FoundationStereoConfig

    model = FoundationStereo(FoundationStereoConfig(vit_size="vits")).eval().cuda()
    small, method = memory_fit.measure_peak_mib(model, 96, 128, "bf16", False, 2)
    large, _ = memory_fit.measure_peak_mib(model, 192, 256, "bf16", False, 2)
    assert method == "cuda max_memory_allocated" and 0 < small < large
