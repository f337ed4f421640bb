"""Time synchronisation of the four stereo inputs (left/right image and CameraInfo).

:func:`subscribe_synchronized` uses ``message_filters`` (TimeSynchronizer /
ApproximateTimeSynchronizer) when it is importable, as on a ROS install, and otherwise the
in-package :class:`TimeSynchronizer`, which also counts the messages that never found partners.

:class:`TimeSynchronizer` is plain Python (no rclpy), so it is unit-tested directly:

* exact: a set is emitted when every input has a message with the same stamp;
* approximate: when every input has a message within ``tolerance_s`` of the newest arrival and
  all chosen stamps lie within ``tolerance_s`` of each other, the closest ones are emitted.

After a set is emitted, older queued messages can no longer form a newer set and are discarded
as unpaired; a queue longer than ``queue_size`` drops its oldest message as unpaired.

:class:`TimeJumpGuard` (plain Python too) handles stamps that jump backwards, e.g. a looped bag,
for both the node and the offline bag reader.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Sequence, Tuple

from .messages import stamp_to_ns

try:  # the real library on a ROS install; not on PyPI
    import message_filters  # type: ignore
except ImportError:  # pragma: no cover - depends on the installation
    message_filters = None


def stamp_ns(msg: Any) -> int:
    """Header stamp of a message in integer nanoseconds."""
    return stamp_to_ns(msg.header.stamp)


class TimeSynchronizer:
    """Groups one message per input by header stamp (exact or approximate), see module doc."""

    def __init__(self, n_inputs: int, callback: Callable[..., None], queue_size: int = 5,
                 approximate: bool = False, tolerance_s: float = 0.0,
                 on_unpaired: Optional[Callable[[int, Any], None]] = None) -> None:
        if n_inputs < 2:
            raise ValueError(f"need at least two inputs, got {n_inputs}")
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size}")
        if tolerance_s < 0:
            raise ValueError(f"tolerance_s must be >= 0, got {tolerance_s}")
        self._n = n_inputs
        self._callback = callback
        self._queue_size = queue_size
        self._tolerance_ns = int(round(tolerance_s * 1e9)) if approximate else 0
        self._on_unpaired = on_unpaired
        self._queues: List[List[Tuple[int, Any]]] = [[] for _ in range(n_inputs)]
        self._lock = threading.Lock()
        self.unpaired = [0] * n_inputs  # per input: messages discarded without a partner
        self.sets = 0  # sets emitted

    def reset(self) -> None:
        """Forget every queued message (e.g. after time jumped backwards)."""
        with self._lock:
            self._queues = [[] for _ in range(self._n)]

    def discard_newer_than(self, t_ns: int) -> int:
        """Forget queued messages stamped after ``t_ns`` (stale after time jumped back); their count."""
        with self._lock:
            n = 0
            for j, q in enumerate(self._queues):
                keep = [(t, m) for t, m in q if t <= t_ns]
                n += len(q) - len(keep)
                self._queues[j] = keep
            return n

    def add(self, index: int, msg: Any) -> None:
        """Queue ``msg`` for input ``index``; calls the callback (outside the lock) on a match."""
        t = stamp_ns(msg)
        dropped: List[Tuple[int, Any]] = []
        with self._lock:
            q = self._queues[index]
            q.append((t, msg))
            if len(q) > self._queue_size:
                dropped.append((index, q.pop(0)[1]))
            chosen = self._match(index, t)
            if chosen is not None:
                out = []
                for j, pos in enumerate(chosen):
                    qj = self._queues[j]
                    t_sel, m_sel = qj[pos]
                    out.append(m_sel)
                    # Older messages cannot form a newer set any more.
                    keep = []
                    for k, (tk, mk) in enumerate(qj):
                        if k == pos:
                            continue
                        if tk <= t_sel:
                            dropped.append((j, mk))
                        else:
                            keep.append((tk, mk))
                    self._queues[j] = keep
                self.sets += 1
            for j, _ in dropped:
                self.unpaired[j] += 1
        if self._on_unpaired is not None:
            for j, m in dropped:
                self._on_unpaired(j, m)
        if chosen is not None:
            self._callback(*out)

    def _match(self, index: int, t: int) -> Optional[List[int]]:
        chosen: List[int] = []
        stamps = []
        for j, q in enumerate(self._queues):
            if j == index:
                chosen.append(len(q) - 1)
                stamps.append(t)
                continue
            best, best_err = -1, None
            for k, (tk, _) in enumerate(q):
                err = abs(tk - t)
                if err <= self._tolerance_ns and (best_err is None or err < best_err):
                    best, best_err = k, err
            if best < 0:
                return None
            chosen.append(best)
            stamps.append(q[best][0])
        if max(stamps) - min(stamps) > self._tolerance_ns:
            return None
        return chosen


#: Stamps going back by more than this count as a time jump (a bag loop, a restarted driver);
#: smaller reorderings are normal between unsynchronised inputs.
TIME_JUMP_NS = 1_000_000_000


class TimeJumpGuard:
    """The handling of input stamps that jump backwards, shared by the node and the offline bag
    reader so that both treat a looped bag alike.

    Feed every arriving stamp to :meth:`observe` before the synchroniser sees the message. A stamp
    more than ``threshold_ns`` older than the newest seen is a jump: the caller then discards the
    synchroniser's queued newer messages (:meth:`TimeSynchronizer.discard_newer_than`), which would
    otherwise block the pairing of the new ones until they age out. Ask :meth:`accept_pair` about
    every synchronised pair: the pair at the jump (the first pair after it, when stamped within the
    sync tolerance of the jump) is rejected, so consumers see a clean break rather than a frame from
    before their reset. Not locked: call both methods from one thread (the executor's).
    """

    def __init__(self, approximate: bool = False, tolerance_s: float = 0.0,
                 threshold_ns: int = TIME_JUMP_NS) -> None:
        if tolerance_s < 0:
            raise ValueError(f"tolerance_s must be >= 0, got {tolerance_s}")
        if threshold_ns < 0:
            raise ValueError(f"threshold_ns must be >= 0, got {threshold_ns}")
        # The synchroniser's own tolerance: an approximate pair at the jump may carry a left stamp
        # up to this much after the stamp that jumped.
        self.tolerance_ns = int(round(tolerance_s * 1e9)) if approximate else 0
        self.threshold_ns = int(threshold_ns)
        self._newest: Optional[int] = None
        self._jump: Optional[int] = None  # stamp that jumped back, until the next pair is judged
        self.jumps = 0  # backward jumps seen

    def observe(self, t_ns: int) -> Optional[int]:
        """Note an arriving stamp. On a backward jump, how far back it went in nanoseconds (and the
        newest stamp restarts from ``t_ns``); otherwise None."""
        newest = self._newest
        if newest is not None and t_ns < newest - self.threshold_ns:
            self._newest = self._jump = t_ns
            self.jumps += 1
            return newest - t_ns
        if newest is None or t_ns > newest:
            self._newest = t_ns
        return None

    def accept_pair(self, t_ns: int) -> bool:
        """Whether to keep a synchronised pair whose left image is stamped ``t_ns``: False only for
        the first pair after a jump when it is the pair at the jump."""
        jump, self._jump = self._jump, None
        return jump is None or t_ns > jump + self.tolerance_ns


class SynchronizedSubscriptions:
    """The subscriptions of one synchronised input set; keeps them alive and exposes counters."""

    def __init__(self, subscriptions: Sequence[Any], synchronizer: Any, uses_message_filters: bool) -> None:
        self.subscriptions = list(subscriptions)
        self.synchronizer = synchronizer
        self.uses_message_filters = uses_message_filters

    @property
    def unpaired(self) -> Optional[List[int]]:
        """Per input, messages discarded without partners (None with message_filters: not exposed)."""
        return None if self.uses_message_filters else list(self.synchronizer.unpaired)

    def reset(self) -> None:
        if not self.uses_message_filters:
            self.synchronizer.reset()

    def discard_newer_than(self, t_ns: int) -> None:
        """See :meth:`TimeSynchronizer.discard_newer_than` (message_filters: its queues age out)."""
        if not self.uses_message_filters:
            self.synchronizer.discard_newer_than(t_ns)

    def topic_names(self) -> List[str]:
        names = []
        for s in self.subscriptions:
            sub = getattr(s, "sub", s)  # message_filters.Subscriber wraps the rclpy subscription
            names.append(sub.topic_name)
        return names


@dataclass(frozen=True)
class SyncOptions:
    """How :func:`subscribe_synchronized` pairs its inputs."""

    queue_size: int = 5  # messages per input kept waiting for partners
    approximate: bool = False  # pair by approximate instead of exact stamps
    tolerance_s: float = 0.0  # largest stamp difference within a set, with ``approximate``
    prefer_message_filters: bool = True  # use message_filters where it is importable


def subscribe_synchronized(node: Any, inputs: Sequence[Tuple[type, str]], qos: Any, callback: Callable[..., None],
                           options: SyncOptions = SyncOptions(),
                           on_message: Optional[Callable[[int, Any], None]] = None,
                           on_unpaired: Optional[Callable[[int, Any], None]] = None) -> SynchronizedSubscriptions:
    """Subscribe to ``inputs`` ((msg type, topic) pairs) and call ``callback(*msgs)`` per matched set.

    ``on_message(index, msg)`` sees every arrival (for rate / time-jump bookkeeping) before it is
    synchronised; ``on_unpaired`` is called for discarded messages (in-package synchroniser only).
    """
    if message_filters is not None and options.prefer_message_filters:
        subs = [message_filters.Subscriber(node, t, name, qos_profile=qos) for t, name in inputs]
        if on_message is not None:
            for i, s in enumerate(subs):
                s.registerCallback(lambda m, i=i: on_message(i, m))
        if options.approximate:
            sync = message_filters.ApproximateTimeSynchronizer(subs, options.queue_size, options.tolerance_s)
        else:
            sync = message_filters.TimeSynchronizer(subs, options.queue_size)
        sync.registerCallback(callback)
        return SynchronizedSubscriptions(subs, sync, True)

    sync = TimeSynchronizer(len(inputs), callback, options.queue_size, options.approximate, options.tolerance_s,
                            on_unpaired)

    def make_cb(i: int) -> Callable[[Any], None]:
        def cb(msg: Any) -> None:
            if on_message is not None:
                on_message(i, msg)
            sync.add(i, msg)
        return cb

    subs = [node.create_subscription(t, name, make_cb(i), qos) for i, (t, name) in enumerate(inputs)]
    return SynchronizedSubscriptions(subs, sync, False)
