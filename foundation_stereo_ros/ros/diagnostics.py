"""What ``stereo_depth_node`` reports on ``/diagnostics``, and the counters and throttled log behind it.

:class:`Stats` is counted by the executor, the worker and the publisher thread; :meth:`Stats.snapshot`
copies it into a frozen :class:`StatsSnapshot`. :func:`diagnose` is a pure function of two snapshots
(this report's and the previous report's) and the processor configuration; the node builds its
diagnostic_msgs/DiagnosticStatus from the :class:`Health` it returns. No rclpy here.

The level is WARN, with the first matching message, when since the previous report

1. a per-frame problem was counted (``frames skipped: <key> x<n>, ...``),
2. a frame was matched at a reduced network scale because the GPU ran out of memory,
3. a frame ran eager because its size is not the one the execution mode was prepared for;

otherwise OK: ``publishing at <rate> Hz``, ``idle`` or ``waiting for synchronised input``.
"""
from __future__ import annotations

import os
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Deque, Dict, Mapping, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from ..pipeline.config import ProcessorConfig

#: Levels of a :class:`Health`, the byte values of diagnostic_msgs/DiagnosticStatus.
OK, WARN, ERROR = 0, 1, 2

#: Publications kept for the rate and latency figures (far more than one report period holds).
WINDOW_LENGTH = 10_000


class ThrottledLog:
    """One log line per problem key per period, with the number suppressed meanwhile."""

    def __init__(self, logger: Any, period_s: float) -> None:
        self._logger = logger
        self.period_s = period_s
        self._last: Dict[str, float] = {}
        self._suppressed: Dict[str, int] = {}
        self._lock = threading.Lock()

    def warn(self, key: str, text: str, error: bool = False) -> bool:
        now = time.monotonic()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.period_s:
                self._suppressed[key] = self._suppressed.get(key, 0) + 1
                return False
            n = self._suppressed.pop(key, 0)
            self._last[key] = now
        suffix = f" ({n} more since the last report)" if n else ""
        (self._logger.error if error else self._logger.warning)(f"[{key}] {text}{suffix}")
        return True


class Publication(NamedTuple):
    """One published frame."""

    published_at: float  # time.monotonic() when its messages were sent
    latency_s: float  # from the left image's stamp to publication, by the node's clock
    processing_s: float  # from the worker taking the pair to publication


@dataclass(frozen=True)
class StatsSnapshot:
    """The counters of :class:`Stats` at one moment (``taken_at``, time.monotonic())."""

    taken_at: float
    pairs_received: int = 0
    frames_published: int = 0
    dropped: int = 0
    skipped_no_subscribers: int = 0
    oom_retries: int = 0
    reduced_resolution_frames: int = 0
    eager_fallback_frames: int = 0
    network_scale: Optional[float] = None
    problems: Mapping[str, int] = field(default_factory=dict)  # problem key -> count
    window: Tuple[Publication, ...] = ()  # the newest WINDOW_LENGTH publications, oldest first

    def published_since(self, t: float) -> Tuple[Publication, ...]:
        """The publications after monotonic time ``t``."""
        return tuple(p for p in self.window if p.published_at > t)


class Stats:
    """Counters for /diagnostics; written by the executor and the worker, read by the timer.
    Write them with :attr:`lock` held; read them through :meth:`snapshot`."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pairs_received = 0
        self.frames_published = 0
        self.dropped = 0  # pairs replaced by a newer one before the worker took them
        self.skipped_no_subscribers = 0
        self.oom_retries = 0  # out-of-memory retries at a lower network resolution
        self.reduced_resolution_frames = 0  # frames published below the configured network scale
        self.eager_fallback_frames = 0  # frames of another size than the prepared execution mode's
        self.network_scale: Optional[float] = None  # scale the network used for the last frame
        self.problems: Dict[str, int] = {}
        self.window: Deque[Publication] = deque(maxlen=WINDOW_LENGTH)

    def problem(self, key: str) -> None:
        with self.lock:
            self.problems[key] = self.problems.get(key, 0) + 1

    def published(self, latency_s: float, processing_s: float) -> None:
        """Count a published frame."""
        with self.lock:
            self.frames_published += 1
            self.window.append(Publication(time.monotonic(), latency_s, processing_s))

    def snapshot(self) -> StatsSnapshot:
        with self.lock:
            # taken_at under the lock: a publication is in exactly one report's published_since()
            return StatsSnapshot(
                taken_at=time.monotonic(), pairs_received=self.pairs_received,
                frames_published=self.frames_published, dropped=self.dropped,
                skipped_no_subscribers=self.skipped_no_subscribers, oom_retries=self.oom_retries,
                reduced_resolution_frames=self.reduced_resolution_frames,
                eager_fallback_frames=self.eager_fallback_frames, network_scale=self.network_scale,
                problems=dict(self.problems), window=tuple(self.window))


@dataclass(frozen=True)
class Health:
    """One diagnostic status: level (:data:`OK`, :data:`WARN`), message and key/values."""

    level: int
    message: str
    values: Tuple[Tuple[str, str], ...]


def diagnose(now: StatsSnapshot, previous: StatsSnapshot, config: ProcessorConfig, providers: Sequence[str] = (),
             rss_mb: Optional[float] = None) -> Health:
    """The status for the period from ``previous`` to ``now`` (see the module docstring).

    ``config`` is the processor configuration of the frames being matched, ``providers`` the ONNX
    execution providers (onnx backend), ``rss_mb`` the resident memory of the process.
    """
    elapsed = max(now.taken_at - previous.taken_at, 1e-6)
    window = now.published_since(previous.taken_at)
    rate = len(window) / elapsed
    lat = [p.latency_s for p in window]
    proc = [p.processing_s for p in window]
    kv = [("backend", config.backend), ("rate_hz", f"{rate:.3f}"),
          ("latency_mean_s", f"{np.mean(lat):.4f}" if lat else "nan"),
          ("latency_max_s", f"{np.max(lat):.4f}" if lat else "nan"),
          ("processing_mean_s", f"{np.mean(proc):.4f}" if proc else "nan"),
          ("pairs_received", str(now.pairs_received)), ("frames_published", str(now.frames_published)),
          ("dropped_pairs", str(now.dropped)), ("skipped_no_subscribers", str(now.skipped_no_subscribers)),
          ("oom_retries", str(now.oom_retries)), ("reduced_resolution_frames", str(now.reduced_resolution_frames)),
          ("eager_fallback_frames", str(now.eager_fallback_frames))]
    if config.backend == "onnx":
        kv += [("onnx_providers", ",".join(providers))]
    if config.backend == "foundation_stereo":
        kv += [("execution", f"{config.execution}-{config.precision}"), ("configured_scale", f"{config.scale:g}"),
               ("network_scale", f"{now.network_scale:g}" if now.network_scale is not None else "nan")]
    kv += [("rss_mb", f"{rss_mb:.1f}" if rss_mb is not None else "nan")]
    kv += [(f"problem.{k}", str(v)) for k, v in sorted(now.problems.items())]

    new_problems = {k: v - previous.problems.get(k, 0) for k, v in now.problems.items()
                    if v > previous.problems.get(k, 0)}
    reduced = now.reduced_resolution_frames - previous.reduced_resolution_frames
    slow = now.eager_fallback_frames - previous.eager_fallback_frames
    if new_problems:
        level, message = WARN, "frames skipped: " + ", ".join(f"{k} x{v}" for k, v in sorted(new_problems.items()))
    elif reduced > 0:
        scale = now.network_scale if now.network_scale is not None else float("nan")
        level, message = WARN, f"out of GPU memory: {reduced} frame(s) at reduced network scale {scale:g}"
    elif slow > 0:
        level, message = WARN, (f"{slow} frame(s) ran eager, not execution {config.execution!r}: their size is not "
                                f"the prepared one (warmup_width, warmup_height)")
    elif window:
        level, message = OK, f"publishing at {rate:.2f} Hz"
    else:
        level, message = OK, "waiting for synchronised input" if not now.pairs_received else "idle"
    return Health(level, message, tuple(kv))


def resident_memory_mb() -> Optional[float]:
    """Resident set size of this process in MiB (Linux /proc), None where unavailable."""
    try:
        with open("/proc/self/statm") as fh:
            pages = int(fh.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2 ** 20
    except (OSError, ValueError, IndexError):
        return None
