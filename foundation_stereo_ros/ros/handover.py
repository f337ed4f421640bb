"""The node's two-stage frame pipeline, in plain threads (no rclpy, so it is tested without DDS).

:meth:`FrameHandover.offer` (the synchroniser's callback, on the executor) only stores the
newest pair: an older pair still waiting is dropped and counted, so the executor never blocks
on inference and stale frames never queue. The *worker* thread takes the pair and matches it;
the *publisher* thread builds and sends the messages of the frame matched before, meanwhile.
One matched frame waits between the two at most: frames are published in the order they were
matched, and the worker waits rather than letting results pile up.

Several cameras (``source``): each has its own waiting pair (the newest wins per camera), and
with ``batch=True`` the worker takes every waiting pair at once and ``match`` gets them as a list,
so pairs that are ready together are matched together. A camera that stalls never holds the
others back: the worker takes what is there, and a camera's pair waits one frame at most.

Everything a frame is processed with is one immutable settings object: :meth:`swap_in` stores
the next one and the worker takes it before its next frame, so no frame sees half of a change.

Publishing a frame holds the GIL for most of its time (rclpy converts and serialises each message
with it held), and so does the worker's host work on the next frame (decode, rectify) before the
network runs, which releases it. Run together, each slows the other down by its own length: the
publisher therefore lets the worker's host work on the next frame go first (:meth:`host_work_done`,
called when the network starts, ends it), for :data:`PUBLISH_WAIT_S` at most, and then publishes
while the network runs.

With a ``stage`` function the host work before the network (decode, rectify) is split from
``match``, and a third thread, the *stager*, does it for the next pair while the network still runs
on the current one: just in time, started when the network is expected to end (the running
estimates of both durations, :data:`STAGE_MARGIN_S` early), so the staged pair is hardly older than
one the worker would take itself. When the network ends before that, or no estimate exists yet,
the worker stages the pair itself. ``ahead(settings)`` says whether frames of those settings may be
staged beside the network at all (not when staging uses the network's device).

An exception in any stage is counted as the problem ``internal_error`` and logged (throttled),
and the thread goes on with the next frame; while stopping it ends the thread quietly instead.
:meth:`stop` waits a bounded time for a frame in flight, whose result is then not published.
"""
from __future__ import annotations

import threading
import time
import traceback
from typing import Any, Callable, Dict, List, Optional, Tuple

from .diagnostics import Stats, ThrottledLog

#: How often a waiting thread looks at the stop flag, seconds.
POLL_S = 0.2
#: Longest the publisher thread lets the worker's host work on the next frame go first, seconds.
PUBLISH_WAIT_S = 0.02
#: How much earlier than the network's expected end the stager has the next pair staged, seconds.
STAGE_MARGIN_S = 0.002
#: Weight of the newest duration in the running estimates of the network's and the staging's time.
_SMOOTHING = 0.2


class FrameHandover:
    """The worker and publisher threads between the synchroniser and the publishers.

    ``match(settings, pair)`` processes a pair with the settings of its frame and returns what
    ``publish`` takes, or None to skip the frame; ``publish(matched)`` sends its messages. With
    ``batch``, ``match(settings, pairs)`` gets the list of pairs waiting (one per source, in the
    order of their sources) and matches them together.
    ``alive()`` is False once the surroundings are shutting down (an exception is then not an
    internal error). Frames are identified by the stamp :meth:`offer` is given with the pair.
    """

    def __init__(self, settings: Any, match: Callable[[Any, Any], Optional[Any]], publish: Callable[[Any], None],
                 stats: Stats, log: ThrottledLog, alive: Callable[[], bool] = lambda: True,
                 thread_prefix: str = "stereo_depth", batch: bool = False,
                 publish_wait_s: float = PUBLISH_WAIT_S, stage: Optional[Callable[[Any, Any], Any]] = None,
                 ahead: Callable[[Any], bool] = lambda settings: True) -> None:
        self._match = match
        self._publish_wait_s = publish_wait_s
        self._stage = stage
        self._ahead = ahead
        # (stamp, settings, staged, the sources' counters, when it was staged) from the stager
        self._staged: Optional[Tuple[int, Any, Any, List[Stats], float]] = None
        self._staging = False  # the stager is staging a pair
        self._ahead_settings: Optional[Any] = None  # settings of the frame staged (or being staged) ahead
        self._network_since: Optional[float] = None  # when the worker's frame left the host
        self._network_s: Optional[float] = None  # running estimates, seconds
        self._stage_s: Optional[float] = None
        #: Frames the stager staged while the network ran (the rest the worker staged itself), and
        #: those of them dropped for a newer pair because they had waited too long.
        self.staged_ahead = 0
        self.staged_stale = 0
        self._batch = batch
        self._publish = publish
        self._stats = stats
        self._log = log
        self._alive = alive
        self._cond = threading.Condition()
        self._settings = settings
        self._next_settings: Optional[Any] = None  # taken by the worker before its next frame
        # source -> (stamp, pair, the source's counters) the worker has not taken yet
        self._pending: Dict[Any, Tuple[int, Any, Stats]] = {}
        self._in_flight: Optional[int] = None  # stamp of the frame the worker is matching
        self._matched: Optional[Tuple[int, Any]] = None  # (stamp, matched) the publisher has not taken yet
        self._publishing: Optional[int] = None  # stamp of the frame the publisher thread is publishing
        self._worker_on_host = False  # the worker's host work on a frame, before its network call
        #: Seconds the worker waited for a pair, and for the publisher to take a matched frame; seconds
        #: the publisher let the worker's host work go first (the benchmark's profile of the node).
        self.waits = {"worker_for_input": 0.0, "worker_for_publisher": 0.0, "publisher_for_worker": 0.0}
        #: True: the worker waits for each frame's publication before it takes the next pair (no
        #: overlap), only to measure what the pipeline saves (foundation-stereo-benchmark).
        self.serial = False
        self._stop = threading.Event()
        self.worker = threading.Thread(target=self._worker_loop, name=f"{thread_prefix}_worker", daemon=True)
        self.publisher = threading.Thread(target=self._publisher_loop, name=f"{thread_prefix}_publisher",
                                          daemon=True)
        self.stager = (threading.Thread(target=self._stager_loop, name=f"{thread_prefix}_stager", daemon=True)
                       if stage is not None else None)

    def start(self) -> None:
        self.worker.start()
        self.publisher.start()
        if self.stager is not None:
            self.stager.start()

    # ------------------------------------------------------------------ state
    @property
    def settings(self) -> Any:
        """The settings of the frame being matched (or the last one)."""
        with self._cond:
            return self._settings

    @property
    def upcoming(self) -> Any:
        """The settings the next frame will be matched with."""
        with self._cond:
            for settings in (self._next_settings, self._ahead_settings):
                if settings is not None:
                    return settings
            return self._settings

    def swap_in(self, settings: Any) -> None:
        """Match the frames after the current one with ``settings``."""
        with self._cond:
            self._next_settings = settings

    @property
    def pending(self) -> Optional[int]:
        """Stamp of the (newest) pair waiting for the worker, None if none."""
        with self._cond:
            return max((entry[0] for entry in self._pending.values()), default=None)

    @property
    def in_flight(self) -> Optional[int]:
        """Stamp of the frame the worker is matching, None if none."""
        with self._cond:
            return self._in_flight

    @property
    def matched(self) -> Optional[int]:
        """Stamp of the matched frame waiting for the publisher thread, None if none."""
        with self._cond:
            return self._matched[0] if self._matched is not None else None

    @property
    def publishing(self) -> Optional[int]:
        """Stamp of the frame the publisher thread is publishing, None if none."""
        with self._cond:
            return self._publishing

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def host_work_done(self) -> None:
        """The worker's frame leaves the host (its network starts and releases the GIL): the
        publisher thread may publish now. ``match`` calls it; a ``match`` that does not lets the
        publisher wait ``publish_wait_s`` (:data:`PUBLISH_WAIT_S`) or until the frame is matched."""
        with self._cond:
            self._network_since = time.perf_counter()
            self._worker_on_host = False
            self._cond.notify_all()  # the publisher may publish, the stager plan the next pair

    # ------------------------------------------------------------------ input
    def offer(self, stamp: int, pair: Any, source: Any = None, stats: Optional[Stats] = None) -> None:
        """Store ``pair`` of ``source`` (a camera) for the worker; a pair of that source still
        waiting is dropped (the newest wins), and counted in ``stats`` (the source's counters;
        default the handover's)."""
        stats = self._stats if stats is None else stats
        with self._cond:
            with stats.lock:
                stats.pairs_received += 1
                if source in self._pending:
                    stats.dropped += 1  # the waiting pair is stale
            self._pending[source] = (stamp, pair, stats)
            self._cond.notify_all()  # the worker, not only whichever thread waits first (the publisher waits too)

    # ------------------------------------------------------------------ threads
    def _wait_until(self, ready: Callable[[], bool]) -> bool:
        """With ``self._cond`` held: wait until ``ready()`` or stop; False when stopping."""
        while not ready() and not self._stop.is_set():
            self._cond.wait(POLL_S)
        return not self._stop.is_set()

    def _internal_error(self, what: str, e: Exception) -> bool:
        """Count and log an exception a frame raised in the worker or the publisher thread; False
        when it came from shutting down (the thread should end quietly)."""
        if self._stop.is_set() or not self._alive():
            return False
        self._stats.problem("internal_error")
        self._log.warn("internal_error", f"{what}: {type(e).__name__}: {e}\n{traceback.format_exc(limit=4)}",
                       error=True)
        return True

    def _take_pending(self) -> Tuple[int, Any, List[Stats]]:
        """With the lock held: (stamp, pair, [its source's counters]) of the pair waiting, or with
        ``batch`` (the first stamp, every source's pair in the sources' order, their counters)."""
        if self._batch:
            taken = [self._pending[source] for source in sorted(self._pending, key=_order)]
            self._pending = {}
            return taken[0][0], [p for _, p, _ in taken], [st for _, _, st in taken]
        stamp, pair, stats = self._pending.pop(next(iter(self._pending)))
        return stamp, pair, [stats]

    def _take_settings(self) -> Any:
        """With the lock held: the settings of the next frame taken (a change swapped in is used up)."""
        if self._next_settings is not None:
            settings, self._next_settings = self._next_settings, None
            return settings
        return self._ahead_settings if self._ahead_settings is not None else self._settings

    def _timed_stage(self, settings: Any, pair: Any) -> Any:
        """``stage(settings, pair)``, its duration added to the running estimate."""
        t = time.perf_counter()
        staged = self._stage(settings, pair)
        self._stage_s = _smoothed(self._stage_s, time.perf_counter() - t)
        return staged

    def _worker_loop(self) -> None:
        while not self._stop.is_set():
            with self._cond:
                t = time.perf_counter()
                # A pair the stager is staging is newer than what it left waiting: wait for it.
                if not self._wait_until(lambda: (self._staged is not None or bool(self._pending))
                                        and not self._staging):
                    return
                self.waits["worker_for_input"] += time.perf_counter() - t
                self._worker_on_host = True
                staged = pair = None
                if self._staged is not None:
                    (stamp, settings, staged, counters, staged_at), self._staged = self._staged, None
                    if self._pending and time.perf_counter() - staged_at > (self._stage_s or 0.0) + STAGE_MARGIN_S:
                        # A newer pair waits, and the staged one has waited longer than planned (the
                        # network ran longer than expected): the newest pair wins, as without a stager.
                        for st in counters:
                            with st.lock:
                                st.dropped += 1
                        self.staged_stale += 1
                        staged = None
                if staged is None:
                    stamp, pair, _ = self._take_pending()
                    settings = self._take_settings()
                self._settings, self._ahead_settings = settings, None
                self._in_flight = stamp
            matched = None
            try:
                if self._stage is None:
                    matched = self._match(settings, pair)
                else:
                    if pair is not None:
                        staged = self._timed_stage(settings, pair)
                    matched = self._match(settings, staged)
            except Exception as e:  # noqa: BLE001 - the worker must survive anything a frame does
                if not self._internal_error("frame failed", e):
                    return
            finally:
                with self._cond:
                    if self._network_since is not None:
                        self._network_s = _smoothed(self._network_s, time.perf_counter() - self._network_since)
                        self._network_since = None
                    self._worker_on_host = False
                    if matched is not None:
                        # One frame waits for the publisher at most: this frame is published after
                        # the one being published, and the worker goes on with the next pair.
                        t = time.perf_counter()
                        if self._wait_until(lambda: self._matched is None):
                            self.waits["worker_for_publisher"] += time.perf_counter() - t
                            entry = self._matched = (stamp, matched)
                            # A pair waiting is taken (and staged) at once: its host work goes before
                            # this publication. A pair staged ahead has none left.
                            self._worker_on_host = (bool(self._pending) and self._staged is None
                                                    and not self._staging and not self.serial)
                            self._cond.notify_all()
                            if self.serial:
                                self._wait_until(lambda: self._matched is not entry and self._publishing is None)
                    self._in_flight = None
                    self._cond.notify_all()

    def _stage_due(self) -> Optional[float]:
        """With the lock held: when the stager should stage the waiting pair (perf_counter), or None
        when it should not (nothing waits, the network is not running, no estimates yet, the
        publisher is behind)."""
        if (self.serial or not self._pending or self._staged is not None or self._staging
                or self._network_since is None or self._network_s is None or self._stage_s is None):
            return None
        if self._matched is not None:
            # The publisher is behind: the worker will wait to hand its frame over, and a pair staged
            # now would age meanwhile. It takes the newest pair itself afterwards.
            return None
        settings = self._next_settings if self._next_settings is not None else self._settings
        if not self._ahead(settings):
            return None
        return self._network_since + max(self._network_s - self._stage_s - STAGE_MARGIN_S, 0.0)

    def _stager_loop(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._stop.is_set():
                        return
                    due = self._stage_due()
                    now = time.perf_counter()
                    if due is not None and now >= due:
                        break
                    self._cond.wait(POLL_S if due is None else due - now)
                stamp, pair, counters = self._take_pending()
                settings = self._ahead_settings = self._take_settings()
                self._staging = True
            staged = failed = None
            try:
                staged = self._timed_stage(settings, pair)
            except Exception as e:  # noqa: BLE001 - the stager must survive anything a frame does
                failed = e
            finally:
                with self._cond:
                    self._staging = False
                    if failed is None and staged is not None:
                        self._staged = (stamp, settings, staged, counters, time.perf_counter())
                        self.staged_ahead += 1
                    self._cond.notify_all()
            if failed is not None and not self._internal_error("frame failed", failed):
                return

    def _publisher_loop(self) -> None:
        while True:
            with self._cond:
                if not self._wait_until(lambda: self._matched is not None):
                    return
                (self._publishing, matched), self._matched = self._matched, None
                self._cond.notify_all()  # the worker may hand over the next frame
                t = time.perf_counter()
                deadline = t + self._publish_wait_s
                while self._worker_on_host and not self._stop.is_set() and time.perf_counter() < deadline:
                    self._cond.wait(max(deadline - time.perf_counter(), 0.0))
                self.waits["publisher_for_worker"] += time.perf_counter() - t
            try:
                self._publish(matched)
            except Exception as e:  # noqa: BLE001 - the publisher must survive anything a frame does
                if not self._internal_error("publishing failed", e):
                    return
            finally:
                with self._cond:
                    self._publishing = None
                    self._cond.notify_all()

    # ------------------------------------------------------------------ lifecycle
    def stop(self, timeout_s: float, on_wait: Optional[Callable[[int], None]] = None) -> bool:
        """Stop both threads, waiting up to ``timeout_s`` for a frame in flight (whose outputs are
        not published); ``on_wait(stamp)`` is called first when there is one. False if a thread
        was still running when the wait ended."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
            in_flight = self._in_flight if self._in_flight is not None else self._publishing
        if in_flight is not None and on_wait is not None:
            on_wait(in_flight)
        deadline = time.monotonic() + timeout_s
        threads = [t for t in (self.worker, self.publisher, self.stager) if t is not None]
        for thread in threads:
            if thread.is_alive() and threading.current_thread() is not thread:
                thread.join(max(deadline - time.monotonic(), 0.0))
        return not any(thread.is_alive() for thread in threads)


def _smoothed(estimate: Optional[float], seconds: float) -> float:
    """A running estimate updated with a new duration."""
    return seconds if estimate is None else (1.0 - _SMOOTHING) * estimate + _SMOOTHING * seconds


def _order(source: Any) -> Tuple[bool, Any]:
    """Sort key of sources: None (the only camera) first, then the sources' own order."""
    return (source is not None, source if source is not None else 0)
