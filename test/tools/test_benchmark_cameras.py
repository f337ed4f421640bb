"""foundation-stereo-benchmark --cameras: batched vs one-at-a-time throughput and the memory of one
multi-camera process against one process per camera, on the CPU with ViT-S at a small size."""
from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

from foundation_stereo_ros.pipeline import FoundationStereoBackend
from foundation_stereo_ros.tools import benchmark
from foundation_stereo_ros.tools.benchmark import cameras as C


def test_max_difference_counts_validity_changes():
    a = np.array([[1.0, np.nan], [3.0, 4.0]], np.float32)
    assert C._max_difference([a], [a.copy()]) == 0.0
    b = a.copy()
    b[1, 1] += 0.5
    assert C._max_difference([a, a], [a, b]) == pytest.approx(0.5)
    c = a.copy()
    c[0, 1] = 2.0  # valid where the other is not
    assert math.isinf(C._max_difference([a], [c]))


def test_camera_items_are_distinct_cameras_of_one_size():
    items = C.camera_items(3, 40, 56)
    assert len(items) == 3
    assert all(it.pair.left.shape == (40, 56, 3) and it.pair.right.shape == (40, 56, 3) for it in items)
    assert not np.array_equal(items[0].pair.left, items[1].pair.left)
    # the right view is the left one shifted: a pair the network can match
    np.testing.assert_array_equal(items[0].pair.right[:, :-4], items[0].pair.left[:, 4:])


def test_proc_memory_of_this_process():
    m = C._proc_memory_mib(os.getpid())
    assert 0 < m["private_mib"] <= m["rss_mib"] and 0 < m["pss_mib"] <= m["rss_mib"]


def test_cli_parses_camera_counts(capsys):
    assert benchmark.build_parser().parse_args(["--cameras", "1,2,4"]).cameras == [1, 2, 4]
    with pytest.raises(SystemExit):
        benchmark.build_parser().parse_args(["--cameras", "0,2"])
    assert ">= 1" in capsys.readouterr().err


def test_tables_show_every_count_and_the_saving():
    row = dict(cameras=2, batched_pairs_per_s=3.0, single_pairs_per_s=2.0, speedup=1.5,
               batched_round_ms=dict(median=666.7), max_abs_diff_px=2e-6)
    totals = lambda pss, rss: dict(totals=dict(pss_mib=pss, rss_mib=rss, private_mib=pss / 2))  # noqa: E731
    result = dict(settings=dict(variant="vits", height=96, width=128, iters=8, device="cpu", repeats=3),
                  throughput=[row], memory=[dict(cameras=2, one_process=totals(800.0, 1100.0),
                                                 separate=totals(1500.0, 2100.0))])
    text = C.format_camera_tables(result)
    line = next(l for l in text.splitlines() if l.split()[:1] == ["2"] and "666.7" in l)
    assert line.split() == ["2", "3.00", "2.00", "1.50", "666.7", "2.00e-06"]
    mem = [l.split() for l in text.splitlines() if l.split()[:2] == ["2", "800"]]
    assert mem == [["2", "800", "1500", "700", "1100", "2100"]]


@pytest.mark.slow
def test_cli_measures_throughput_and_process_memory(tmp_path, monkeypatch, capsys):
    calls = []
    original = FoundationStereoBackend.compute_batch

    def spy(self, pairs):
        calls.append(len(pairs))
        return original(self, pairs)

    monkeypatch.setattr(FoundationStereoBackend, "compute_batch", spy)
    out = tmp_path / "cameras.json"
    rc = benchmark.main(["--cameras", "2", "--sizes", "64x96", "--iters", "1", "--repeats", "1", "--warmup", "1",
                         "--device", "cpu", "--variants", "vits", "--json", str(out)])
    printed = capsys.readouterr().out
    assert rc == 0
    # per round (warm-up, then one timed): the two cameras in one call, then each alone
    assert calls == [2, 1, 1] * 2
    result = json.loads(out.read_text())["cameras"][0]
    (row,) = result["throughput"]
    assert row["cameras"] == 2 and row["batched_pairs_per_s"] > 0 and row["single_pairs_per_s"] > 0
    assert row["speedup"] == pytest.approx(row["batched_pairs_per_s"] / row["single_pairs_per_s"])
    assert row["max_abs_diff_px"] <= 1e-4  # batched = one at a time, fp32 on the CPU
    (two,) = result["memory"]
    assert two["cameras"] == 2
    assert two["one_process"]["processes"] == 1 and two["separate"]["processes"] == 2
    for side in ("one_process", "separate"):
        rows = two[side]["per_process"]
        assert all(0 < r["pss_mib"] <= r["rss_mib"] and r["peak_rss_mib"] >= r["private_mib"] for r in rows)
        # real stereo_depth_node processes: every camera's frames were published (2 frames each)
        assert [r["frames_published"] for r in rows] == [2 * r["cameras"] for r in rows]
        assert two[side]["totals"]["pss_mib"] == pytest.approx(sum(r["pss_mib"] for r in rows))
    # a second process holds a second network and runtime: two processes take more than one with two
    # cameras, by at least half of what a one-camera process holds privately
    one_pss, sep_pss = two["one_process"]["totals"]["pss_mib"], two["separate"]["totals"]["pss_mib"]
    single_private = two["separate"]["per_process"][0]["private_mib"]
    assert sep_pss - one_pss > 0.5 * single_private
    assert "several cameras on one network" in printed and "N processes PSS" in printed
