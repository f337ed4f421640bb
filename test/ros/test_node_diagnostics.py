"""The /diagnostics status as a pure function of the node's counters (foundation_stereo_ros.ros.
diagnostics.diagnose), the counters' snapshot and the throttled log: plain data, no rclpy, no DDS."""
from __future__ import annotations

import dataclasses
from typing import List

import pytest

from foundation_stereo_ros.pipeline.config import ProcessorConfig
from foundation_stereo_ros.ros.diagnostics import (OK, WARN, Publication, Stats, StatsSnapshot, ThrottledLog,
                                                   diagnose, resident_memory_mb)

SGBM = ProcessorConfig(backend="sgbm")
NETWORK = ProcessorConfig(backend="foundation_stereo", execution="compile", scale=1.0)


def report(now: StatsSnapshot, previous: StatsSnapshot = StatsSnapshot(taken_at=0.0), config=SGBM, **kw):
    health = diagnose(now, previous, config, **kw)
    return health, dict(health.values)


def test_without_pairs_it_waits_for_input_and_with_pairs_but_no_frames_it_is_idle():
    health, values = report(StatsSnapshot(taken_at=1.0))
    assert (health.level, health.message) == (OK, "waiting for synchronised input")
    assert values["rate_hz"] == "0.000" and values["latency_mean_s"] == "nan" and values["rss_mb"] == "nan"
    health, _ = report(StatsSnapshot(taken_at=1.0, pairs_received=3))
    assert (health.level, health.message) == (OK, "idle")


def test_rate_and_latency_come_from_the_frames_published_since_the_previous_report():
    window = (Publication(0.5, 9.0, 9.0),  # before the previous report: not this period's
              Publication(1.5, 0.1, 0.05), Publication(2.0, 0.3, 0.07))
    now = StatsSnapshot(taken_at=3.0, pairs_received=5, frames_published=3, dropped=1, window=window)
    health, values = report(now, StatsSnapshot(taken_at=1.0), rss_mb=123.45)
    assert (health.level, health.message) == (OK, "publishing at 1.00 Hz")
    assert values["rate_hz"] == "1.000"
    assert (values["latency_mean_s"], values["latency_max_s"], values["processing_mean_s"]) == (
        "0.2000", "0.3000", "0.0600")
    assert (values["pairs_received"], values["frames_published"], values["dropped_pairs"]) == ("5", "3", "1")
    assert values["rss_mb"] == "123.5"
    assert [k for k, _ in health.values][:5] == ["backend", "rate_hz", "latency_mean_s", "latency_max_s",
                                                 "processing_mean_s"]


def test_problems_that_rose_since_the_previous_report_warn_and_are_listed_by_key():
    previous = StatsSnapshot(taken_at=1.0, problems={"unpaired": 2, "size_mismatch": 1})
    now = StatsSnapshot(taken_at=2.0, pairs_received=9, problems={"unpaired": 5, "size_mismatch": 1,
                                                                  "bad_encoding": 1})
    health, values = report(now, previous)
    assert health.level == WARN
    assert health.message == "frames skipped: bad_encoding x1, unpaired x3"
    assert (values["problem.unpaired"], values["problem.size_mismatch"], values["problem.bad_encoding"]) == (
        "5", "1", "1")
    # Counted before and not since: OK again, the totals stay.
    health, values = report(dataclasses.replace(now, taken_at=3.0), now)
    assert (health.level, health.message) == (OK, "idle")
    assert values["problem.unpaired"] == "5"


def test_out_of_memory_retries_warn_with_the_reduced_network_scale():
    previous = StatsSnapshot(taken_at=1.0, oom_retries=1, reduced_resolution_frames=1)
    now = StatsSnapshot(taken_at=2.0, pairs_received=3, oom_retries=3, reduced_resolution_frames=2,
                        network_scale=0.5, window=(Publication(1.5, 0.1, 0.1),))
    health, values = report(now, previous, config=NETWORK)
    assert (health.level, health.message) == (WARN, "out of GPU memory: 1 frame(s) at reduced network scale 0.5")
    assert (values["oom_retries"], values["reduced_resolution_frames"]) == ("3", "2")
    assert (values["execution"], values["configured_scale"], values["network_scale"]) == ("compile-fp32", "1", "0.5")
    # The same totals in the next report: no new reduced frame, OK.
    health, _ = report(dataclasses.replace(now, taken_at=3.0), now, config=NETWORK)
    assert health.level == OK


def test_eager_fallback_frames_warn_that_the_size_is_not_the_prepared_one():
    now = StatsSnapshot(taken_at=2.0, pairs_received=1, eager_fallback_frames=1)
    health, values = report(now, StatsSnapshot(taken_at=1.0), config=NETWORK)
    assert health.level == WARN
    assert health.message == ("1 frame(s) ran eager, not execution 'compile': their size is not the prepared one "
                              "(warmup_width, warmup_height)")
    assert values["eager_fallback_frames"] == "1" and values["network_scale"] == "nan"


def test_problems_come_before_out_of_memory_and_out_of_memory_before_eager_fallback():
    now = StatsSnapshot(taken_at=2.0, problems={"unpaired": 1}, reduced_resolution_frames=1,
                        eager_fallback_frames=1, network_scale=0.5)
    assert report(now, config=NETWORK)[0].message == "frames skipped: unpaired x1"
    now = dataclasses.replace(now, problems={})
    assert report(now, config=NETWORK)[0].message.startswith("out of GPU memory")


def test_backend_specific_values():
    _, values = report(StatsSnapshot(taken_at=1.0), config=SGBM)
    assert values["backend"] == "sgbm" and "execution" not in values and "onnx_providers" not in values
    onnx = ProcessorConfig(backend="onnx", onnx_model="model.onnx")
    _, values = report(StatsSnapshot(taken_at=1.0), config=onnx, providers=("CUDAExecutionProvider",
                                                                            "CPUExecutionProvider"))
    assert values["onnx_providers"] == "CUDAExecutionProvider,CPUExecutionProvider"


def test_a_snapshot_is_a_frozen_copy_and_each_publication_is_in_one_report_only():
    stats = Stats()
    first = stats.snapshot()
    stats.problem("unpaired")
    stats.published(0.1, 0.05)
    second = stats.snapshot()
    stats.problem("unpaired")
    stats.published(0.2, 0.05)
    third = stats.snapshot()
    assert (first.frames_published, first.problems, first.window) == (0, {}, ())
    assert second.problems == {"unpaired": 1} and third.problems == {"unpaired": 2}
    assert len(second.published_since(first.taken_at)) == 1 and len(third.published_since(second.taken_at)) == 1
    assert [p.latency_s for p in third.published_since(second.taken_at)] == [0.2]
    with pytest.raises(dataclasses.FrozenInstanceError):
        third.frames_published = 0


class Lines:
    def __init__(self) -> None:
        self.warnings: List[str] = []
        self.errors: List[str] = []

    def warning(self, text: str) -> None:
        self.warnings.append(text)

    def error(self, text: str) -> None:
        self.errors.append(text)


def test_throttled_log_reports_each_key_once_per_period_with_the_number_suppressed():
    lines = Lines()
    log = ThrottledLog(lines, period_s=3600.0)
    assert log.warn("unpaired", "first")
    assert not log.warn("unpaired", "second")
    assert log.warn("size_mismatch", "other key")
    assert log.warn("internal_error", "a bug", error=True)
    log.period_s = 0.0
    assert log.warn("unpaired", "third")
    assert lines.warnings == ["[unpaired] first", "[size_mismatch] other key",
                              "[unpaired] third (1 more since the last report)"]
    assert lines.errors == ["[internal_error] a bug"]


def test_resident_memory_is_a_positive_size_where_proc_exists():
    rss = resident_memory_mb()
    assert rss is None or rss > 1.0
