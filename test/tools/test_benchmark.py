"""foundation-stereo-benchmark: the staged network path, the statistics and the CLI on the CPU."""
from __future__ import annotations

import json
import mmap
import os
import re
import sys
import time

import numpy as np
import pytest
import torch

from foundation_stereo_ros.analysis.simulated import simulation_problem
from foundation_stereo_ros.analysis.stages import NETWORK_STAGES, StageClock, group_stage_times, staged_forward
from foundation_stereo_ros.model import load_model
from foundation_stereo_ros.pipeline import StereoProcessor
from foundation_stereo_ros.tools import benchmark


@pytest.fixture(scope="module")
def model(vits_checkpoint):
    return load_model(vits_checkpoint, device="cpu")


def _pair(h: int, w: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, h, w, generator=gen) * 255, torch.rand(1, 3, h, w, generator=gen) * 255


def test_staged_forward_gives_the_disparity_of_model_forward(model):
    left, right = _pair(64, 96)
    iters = 3
    with torch.no_grad():
        expected = model(left, right, iters=iters).disparity
        clock = StageClock(torch.device("cpu"))
        clock.start()
        got = staged_forward(model, left, right, iters, clock=clock)
    assert got.shape == expected.shape == (1, 1, 64, 96)
    # Same ops in the same order: the result must be identical, not merely close.
    assert torch.equal(got, expected)
    names = [name for name, _ in clock.durations_ms()]
    expected_names = [s for s in NETWORK_STAGES if s not in ("gru", "upsample")] + \
        [f"gru_{i}" for i in range(iters)] + ["upsample"]
    assert names == expected_names
    assert all(ms >= 0 for _, ms in clock.durations_ms())


def test_staged_forward_rejects_unpadded_input(model):
    left, right = _pair(60, 96)
    with pytest.raises(ValueError, match="multiples of 32"):
        staged_forward(model, left, right, 1)
    with pytest.raises(ValueError, match="iters"):
        staged_forward(model, *_pair(64, 64), 0)


def test_stage_clock_needs_start_and_groups_iterations():
    clock = StageClock(torch.device("cpu"))
    with pytest.raises(ValueError, match="start"):
        clock.mark("x")
    grouped = group_stage_times([("monocular", 2.0), ("gru_0", 1.0), ("gru_1", 3.0), ("upsample", 0.5)])
    assert grouped == {"monocular": 2.0, "gru": 4.0, "upsample": 0.5}


@pytest.mark.parametrize("n", [1, 2, 7, 20, 101])
def test_summary_statistics_match_numpy(n):
    samples = np.random.default_rng(n).gamma(2.0, 10.0, n)
    s = benchmark.summarize(list(samples))
    assert s["median"] == pytest.approx(np.median(samples))
    assert s["p95"] == pytest.approx(np.percentile(samples, 95))
    assert s["mean"] == pytest.approx(samples.mean())
    assert s["min"] == samples.min() and s["max"] == samples.max()


def test_summary_rejects_empty():
    with pytest.raises(ValueError):
        benchmark.summarize([])


@pytest.mark.parametrize("bad", ["64x", "ax96", "16x16", "64*96"])
def test_cli_rejects_bad_sizes(bad, capsys):
    with pytest.raises(SystemExit) as e:
        benchmark.main(["--sizes", bad])
    assert e.value.code == 2
    assert "size" in capsys.readouterr().err


def test_cli_rejects_bad_modes(capsys):
    with pytest.raises(SystemExit):
        benchmark.main(["--modes", "turbo-fp32"])
    assert "mode must be" in capsys.readouterr().err
    assert benchmark.main(["--variants", "vitx", "--no-node"]) == 2


def test_rss_peak_sees_a_freed_allocation():
    with benchmark.RssPeak() as rss:
        # Fresh anonymous pages: malloc could reuse memory the process already holds resident.
        block = mmap.mmap(-1, 64 * 2 ** 20)
        for offset in range(0, len(block), mmap.PAGESIZE):
            block[offset] = 1
        time.sleep(0.05)  # lets the sampling fallback see it too
        block.close()
    assert rss.peak_mib - rss.start_mib > 48
    with benchmark.RssPeak() as quiet:  # a new measurement starts from the current size again
        pass
    assert quiet.peak_mib - quiet.start_mib < 32


@pytest.mark.slow
def test_cli_runs_on_the_cpu_and_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = benchmark.main(["--device", "cpu", "--variants", "vits", "--sizes", "60x90", "--iters", "2",
                           "--modes", "eager-fp32,eager-bf16,cudagraph-fp32", "--repeats", "2", "--warmup", "1",
                           "--stage-repeats", "1", "--peak-tflops", "2", "--json", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["machine"]["device"] == "cpu" and result["machine"]["cpu_count"] >= 1
    rows = {r["mode"]: r for r in result["rows"]}
    assert set(rows) == {"eager-fp32", "eager-bf16", "cudagraph-fp32"}
    ok = rows["eager-fp32"]
    assert ok["status"] == "ok" and ok["padded"] == [64, 96]
    lat = ok["latency_ms"]
    assert 0 < lat["min"] <= lat["median"] <= lat["p95"] <= lat["max"]
    assert ok["peak_memory_mib"] > 0 and ok["memory_kind"] == "process RSS peak"
    assert ok["vs_eager_fp32"]["max_abs_px"] == 0.0
    assert set(ok["stages_ms"]) == set(NETWORK_STAGES)
    assert sum(ok["stage_share_pct"].values()) == pytest.approx(100.0)
    assert len(ok["gru_iteration_ms"]) == 2
    # GPU-only modes are reported as skipped with a reason, not silently dropped.
    for mode in ("eager-bf16", "cudagraph-fp32"):
        assert rows[mode]["status"] == "skipped" and "CUDA" in rows[mode]["reason"]
    node = result["node"]["60x90"]
    assert set(node["stages_ms"]) == set(benchmark.NODE_STAGES)
    assert node["total_ms"] == pytest.approx(sum(node["stages_ms"].values()))
    assert node["worker_ms"] == pytest.approx(node["total_ms"] - node["stages_ms"]["message_building"])
    worker_pct = 100.0 * node["worker_ms"] / ok["latency_ms"]["median"]
    # The FLOP count of the padded size, per stage as the stage hook names them, and the floor.
    flops = ok["flops"]
    if simulation_problem() is not None:  # counting needs the simulated device: the row says why
        assert simulation_problem() in flops["error"] and "x_floor" not in ok
        assert re.search(rf"eager-fp32 .* {worker_pct:.1f} +- +-\n", printed + "\n"), printed
    else:
        assert (flops["height"], flops["width"], flops["iters"]) == (64, 96, 2)
        assert set(flops["stages"]) == set(NETWORK_STAGES) and sum(flops["stages"].values()) == flops["total"] > 0
        assert ok["floor_ms"] == pytest.approx(flops["total"] / 2e12 * 1e3)
        assert ok["x_floor"] == pytest.approx(lat["median"] / ok["floor_ms"])
        assert re.search(rf"eager-fp32 .* {worker_pct:.1f} +{flops['total'] / 1e12:.2f} +{ok['x_floor']:.1f}\n",
                         printed + "\n"), printed
        assert "network work per stage" in printed and "peak 2 TFLOP/s" in printed
    assert set(node["by_geometry_device"]) == {"host", "network"} and node["geometry_device"] == "host"
    assert "eager-fp32" in printed and "network stages" in printed and "node stages" in printed


def test_node_stage_timing_runs_the_node_code_on_both_geometry_paths(monkeypatch):
    from foundation_stereo_ros.ros import conversions  # needs the ROS 2 message packages

    calls = []
    real_process = StereoProcessor.match_staged  # every frame's way through the processor
    monkeypatch.setattr(StereoProcessor, "match_staged",
                        lambda self, *a, **k: calls.append("process") or real_process(self, *a, **k))
    real_cloud = conversions.pointcloud2_msg
    monkeypatch.setattr(conversions, "pointcloud2_msg", lambda *a, **k: calls.append("cloud") or real_cloud(*a, **k))
    for geometry, on_device in (("host", False), ("network", True)):
        calls.clear()
        node = benchmark.time_node_stages(48, 64, "cpu", repeats=2, geometry=geometry)
        assert node["on_device"] is on_device and node["geometry_device"] == geometry
        assert set(node["stages_ms"]) == set(benchmark.NODE_STAGES)
        assert all(v >= 0 for v in node["stages_ms"].values())
        assert node["stages_ms"]["rectification"] > 0 and node["stages_ms"]["message_building"] > 0
        assert calls == ["process", "cloud"] * 3  # one dropped warm-up pass, then two timed ones


def test_node_stage_timing_without_ros_times_all_but_the_messages(monkeypatch, capsys):
    """A GPU machine without the ROS 2 packages still gets the pipeline's stages timed."""
    monkeypatch.setitem(sys.modules, "foundation_stereo_ros.ros.conversions", None)  # import fails
    node = benchmark.time_node_stages(48, 64, "cpu", repeats=2, geometry="host")
    stages = node["stages_ms"]
    assert stages["message_building"] is None and "message_building" in node["not_measured"]
    assert stages["rectification"] > 0 and stages["image_conversion"] > 0
    assert node["total_ms"] == pytest.approx(sum(v for v in stages.values() if v is not None))
    table = benchmark.format_tables([], {"48x64": node})
    assert "n/a" in table and "message_building not measured" in table


@pytest.mark.slow
def test_node_rate_runs_the_live_node_and_relates_its_period_to_the_network(tmp_path, capsys):
    """--node-rate: a live node (rclpy, a second process publishing and subscribing) whose network is
    a wait; it can never be faster than that wait, and its rows say what it adds."""
    from foundation_stereo_ros.ros import dds

    out = tmp_path / "rate.json"
    before = dict(os.environ)
    code = benchmark.main(["--device", "cpu", "--variants", "vits", "--sizes", "48x64", "--no-network", "--no-node", "--node-rate", "60", "--node-rate-seconds", "1.5",
                           "--json", str(out)])
    assert code == 0
    rows = json.loads(out.read_text())["node_rate"]
    assert [(r["pipeline"], r["geometry_device"]) for r in rows] == [("pipelined", "host"), ("serial", "host")]
    for r in rows:
        assert r["status"] == "ok" and r["frames"] >= 3, r
        assert r["period_ms"] >= 60.0 * 0.97  # the wait is part of every frame
        assert r["overhead_pct"] == pytest.approx((r["period_ms"] / 60.0 - 1) * 100)
        assert r["rate_hz"] == pytest.approx(1e3 / r["period_ms"])
        assert r["processing_ms"]["median"] >= 60.0 * 0.97
        assert r["pairs_dropped"] > 0  # pairs came faster than the node took them: the node was the limit
        # A pair can lose one image in the DDS queues of an overloaded 2-core machine ('unpaired');
        # nothing else may go wrong.
        assert set(r["problems"]) <= {"unpaired"}, r["problems"]
        # Where the time went: the pairs sent and lost, CPU per thread, the handover's waits.
        assert r["pairs_sent"] > 0 and 0.0 <= r["input_lost_pct"] <= 100.0
        assert set(r["cpu_ms_per_frame"]) == {"worker", "stager", "publisher", "executor", "dds_and_rest",
                                                "robot_side"}
        assert r["cpu_ms_per_frame"]["worker"] > 0 and r["cpu_ms_per_frame"]["robot_side"] > 0
        assert set(r["waits_ms_per_frame"]) == {"worker_for_input", "worker_for_publisher", "publisher_for_worker"}
        assert 0.0 <= r["staged_ahead_pct"] <= 100.0
        assert r["dds_profile"] == os.environ.get("FASTRTPS_DEFAULT_PROFILES_FILE", dds.LARGE_DATA_PROFILE)
    assert not any(os.environ.get(v) != before.get(v) for v in dds.PROFILE_VARIABLES)  # not left behind
    result = json.loads(out.read_text())
    assert result["rows"] == []  # --no-network
    assert "the live node" in capsys.readouterr().out


def test_node_rate_robot_side_rejects_unknown_outputs(capsys):
    from foundation_stereo_ros.tools import node_rate

    with pytest.raises(SystemExit):
        node_rate.main(["--robot-side", "--namespace", "/x", "--height", "8", "--width", "8", "--period-s", "0.1",
                        "--outputs", "depth,points3"])
    assert "points3" in capsys.readouterr().err


@pytest.mark.slow
def test_node_rate_with_a_raw_probe_of_fewer_outputs():
    """The probe's own share of the cores is measured apart: a robot side that takes only depth, as
    serialised bytes; the node then builds depth only and still runs at the wait's pace at most."""
    from foundation_stereo_ros.tools.benchmark.live_node import NodeRateOptions, measure_node_rate

    row = measure_node_rate(NodeRateOptions(48, 64, 50.0, seconds=1.5, probe="raw", outputs=("depth",)))
    assert row["probe"] == "raw" and row["outputs"] == ["depth"]
    assert row["frames"] >= 3 and row["period_ms"] >= 50.0 * 0.97
    assert set(row["problems"]) <= {"unpaired"}, row["problems"]
