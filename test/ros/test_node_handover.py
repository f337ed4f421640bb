"""The node's two-stage frame hand-over (foundation_stereo_ros.ros.handover) with plain threads:
no rclpy, no DDS. Stages are held and released with events; every assertion is about the state
the threads reach, never about how long they take."""
from __future__ import annotations

import threading
import time
from typing import Any, Callable, Dict, List, Optional

import pytest

from foundation_stereo_ros.ros.diagnostics import Stats, ThrottledLog
from foundation_stereo_ros.ros.handover import FrameHandover

WAIT_S = 20.0  # only a bound on a wait for a state that must come; a slow machine never fails a test


def eventually(condition: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.002)
    return True


class Lines:
    """A logger that keeps its lines."""

    def __init__(self) -> None:
        self.lines: List[str] = []

    def warning(self, text: str) -> None:
        self.lines.append(text)

    error = warning


class Stages:
    """A match and a publish function for a FrameHandover; either can be held on a pair's stamp.

    A pair is its stamp; the matched frame is (settings, stamp)."""

    def __init__(self) -> None:
        self.hold_match: Dict[int, threading.Event] = {}
        self.hold_publish: Dict[int, threading.Event] = {}
        self.fail_match: Dict[int, Exception] = {}
        self.fail_publish: Dict[int, Exception] = {}
        self.skip: set = set()
        self.matched: List[Any] = []
        self.published: List[Any] = []

    def hold(self, stage: str, stamp: int) -> threading.Event:
        event = threading.Event()
        (self.hold_match if stage == "match" else self.hold_publish)[stamp] = event
        return event

    def match(self, settings: Any, pair: int) -> Optional[Any]:
        self.matched.append((settings, pair))
        if pair in self.hold_match:
            self.hold_match[pair].wait(WAIT_S)
        if pair in self.fail_match:
            raise self.fail_match[pair]
        return None if pair in self.skip else (settings, pair)

    def publish(self, matched: Any) -> None:
        stamp = matched[1]
        if stamp in self.hold_publish:
            self.hold_publish[stamp].wait(WAIT_S)
        if stamp in self.fail_publish:
            raise self.fail_publish[stamp]
        self.published.append(matched)

    def release_all(self) -> None:
        for event in list(self.hold_match.values()) + list(self.hold_publish.values()):
            event.set()


@pytest.fixture
def pipeline():
    """(handover, stages, stats, log lines) with settings 'A'; stopped after the test."""
    stages, stats, lines = Stages(), Stats(), Lines()
    handover = FrameHandover("A", stages.match, stages.publish, stats, ThrottledLog(lines, 0.0),
                             thread_prefix="test")
    handover.start()
    yield handover, stages, stats, lines
    stages.release_all()
    assert handover.stop(WAIT_S)


def test_frames_are_published_in_order_each_with_the_settings_it_was_matched_with(pipeline):
    handover, stages, stats, _ = pipeline
    handover.offer(1, 1)
    assert eventually(lambda: stages.published == [("A", 1)])
    handover.swap_in("B")
    assert handover.upcoming == "B"
    handover.offer(2, 2)
    assert eventually(lambda: stages.published == [("A", 1), ("B", 2)])
    assert handover.settings == "B"
    assert (stats.pairs_received, stats.dropped) == (2, 0)
    assert eventually(lambda: handover.in_flight is None and handover.publishing is None)


def test_only_the_newest_pair_waits_and_a_replaced_one_is_counted_as_dropped(pipeline):
    handover, stages, stats, _ = pipeline
    release = stages.hold("match", 1)
    handover.offer(1, 1)
    assert eventually(lambda: handover.in_flight == 1)
    handover.offer(2, 2)
    handover.offer(3, 3)
    assert handover.pending == 3
    assert (stats.pairs_received, stats.dropped) == (3, 1)
    release.set()
    assert eventually(lambda: [s for _, s in stages.published] == [1, 3])
    assert [s for _, s in stages.matched] == [1, 3]  # pair 2 was never matched


def test_one_matched_frame_waits_for_the_publisher_at_most_and_the_order_is_kept(pipeline):
    handover, stages, _, _ = pipeline
    release = stages.hold("publish", 1)
    handover.offer(1, 1)
    assert eventually(lambda: handover.publishing == 1)
    handover.offer(2, 2)
    # The second frame is matched and waits in the hand-over; the worker does not run ahead.
    assert eventually(lambda: handover.matched == 2 and handover.pending is None)
    handover.offer(3, 3)
    assert eventually(lambda: handover.in_flight == 3 and [s for _, s in stages.matched] == [1, 2, 3])
    handover.offer(4, 4)
    # The third frame is matched and waits for the hand-over slot, the fourth pair as the pending
    # one: nothing piles up beyond one frame per stage while the first is being published.
    assert (handover.publishing, handover.matched, handover.in_flight, handover.pending) == (1, 2, 3, 4)
    assert stages.published == []
    release.set()
    assert eventually(lambda: [s for _, s in stages.published] == [1, 2, 3, 4])


def test_publishing_a_frame_overlaps_matching_the_next(pipeline):
    handover, stages, _, _ = pipeline
    release_publish = stages.hold("publish", 1)
    release_match = stages.hold("match", 2)
    handover.offer(1, 1)
    assert eventually(lambda: handover.publishing == 1)
    handover.offer(2, 2)
    assert eventually(lambda: handover.in_flight == 2)  # matching 2 while 1 is being published
    assert handover.publishing == 1
    release_publish.set()
    release_match.set()
    assert eventually(lambda: [s for _, s in stages.published] == [1, 2])


def test_serial_publishing_waits_for_each_publication_before_the_next_pair(pipeline):
    handover, stages, _, _ = pipeline
    handover.serial = True
    release = stages.hold("publish", 1)
    handover.offer(1, 1)
    assert eventually(lambda: handover.publishing == 1)
    handover.offer(2, 2)
    # The worker still holds frame 1 (it waits for its publication) and has not taken pair 2.
    assert (handover.in_flight, handover.pending) == (1, 2)
    assert [s for _, s in stages.matched] == [1]
    release.set()
    assert eventually(lambda: [s for _, s in stages.published] == [1, 2])


def test_a_parameter_change_during_a_frame_applies_from_the_next_frame(pipeline):
    handover, stages, _, _ = pipeline
    release = stages.hold("match", 1)
    handover.offer(1, 1)
    assert eventually(lambda: handover.in_flight == 1)
    handover.swap_in("B")
    assert (handover.settings, handover.upcoming) == ("A", "B")
    handover.swap_in("C")  # the newest change wins
    release.set()
    assert eventually(lambda: stages.published == [("A", 1)])
    handover.offer(2, 2)
    assert eventually(lambda: stages.published == [("A", 1), ("C", 2)])


def test_a_skipped_frame_is_not_published_and_the_next_one_is(pipeline):
    handover, stages, _, _ = pipeline
    stages.skip.add(1)
    handover.offer(1, 1)
    assert eventually(lambda: len(stages.matched) == 1 and handover.in_flight is None)
    handover.offer(2, 2)
    assert eventually(lambda: stages.published == [("A", 2)])


def test_an_exception_in_either_stage_is_an_internal_error_and_the_threads_go_on(pipeline):
    handover, stages, stats, lines = pipeline
    stages.fail_match[1] = RuntimeError("a bug in matching")
    stages.fail_publish[2] = RuntimeError("a bug in publishing")
    for stamp in (1, 2, 3):
        handover.offer(stamp, stamp)
        assert eventually(lambda: handover.in_flight is None and handover.matched is None
                          and handover.publishing is None and handover.pending is None)
    assert stages.published == [("A", 3)]
    assert stats.problems == {"internal_error": 2}
    assert handover.worker.is_alive() and handover.publisher.is_alive()
    text = " ".join(lines.lines)
    assert "[internal_error] frame failed: RuntimeError: a bug in matching" in text
    assert "[internal_error] publishing failed: RuntimeError: a bug in publishing" in text


def test_an_exception_while_shutting_down_is_no_internal_error_and_ends_the_thread():
    stages, stats, lines = Stages(), Stats(), Lines()
    stages.fail_match[1] = RuntimeError("the context is gone")
    handover = FrameHandover("A", stages.match, stages.publish, stats, ThrottledLog(lines, 0.0),
                             alive=lambda: False, thread_prefix="test")
    handover.start()
    try:
        handover.offer(1, 1)
        handover.worker.join(WAIT_S)
        assert not handover.worker.is_alive()
        assert stats.problems == {} and lines.lines == []
    finally:
        assert handover.stop(WAIT_S)


def test_stop_waits_a_bounded_time_for_the_frame_in_flight_whose_result_is_not_published(pipeline):
    handover, stages, stats, _ = pipeline
    release = stages.hold("match", 1)
    handover.offer(1, 1)
    assert eventually(lambda: handover.in_flight == 1)
    waited_for: List[int] = []
    assert not handover.stop(0.0, on_wait=waited_for.append)  # the frame is held: still running
    assert waited_for == [1] and handover.stopping
    release.set()
    assert handover.stop(WAIT_S)
    assert not handover.worker.is_alive() and not handover.publisher.is_alive()
    assert stages.published == [] and stats.problems == {}


def test_stop_waits_for_the_publisher_thread_too(pipeline):
    handover, stages, _, _ = pipeline
    release = stages.hold("publish", 1)
    handover.offer(1, 1)
    assert eventually(lambda: handover.publishing == 1)
    waited_for: List[int] = []
    assert not handover.stop(0.0, on_wait=waited_for.append)
    assert waited_for == [1] and handover.publisher.is_alive()
    release.set()
    assert handover.stop(WAIT_S)
    assert not handover.publisher.is_alive()


def test_with_several_sources_the_worker_takes_every_waiting_pair_as_one_batch():
    """batch=True (the node's cameras): one waiting pair per source, the newest of each wins and a
    replaced one is counted in that source's counters; the worker takes them all, in source order."""
    taken, published = [], []
    first = threading.Event()

    def match(settings, pairs):
        taken.append(list(pairs))
        first.wait(WAIT_S)
        return pairs

    stats, rear_stats = Stats(), Stats()
    handover = FrameHandover("A", match, published.append, stats, ThrottledLog(Lines(), 0.0), thread_prefix="test",
                             batch=True)
    handover.start()
    try:
        handover.offer(1, "front1", source=0)
        assert eventually(lambda: taken == [["front1"]])  # the worker does not wait for the other camera
        handover.offer(2, "rear2", source=1, stats=rear_stats)
        handover.offer(3, "front3", source=0)
        handover.offer(4, "rear4", source=1, stats=rear_stats)
        assert handover.pending == 4
        assert (stats.pairs_received, stats.dropped) == (2, 0)
        assert (rear_stats.pairs_received, rear_stats.dropped) == (2, 1)  # rear2 replaced by rear4
        first.set()
        assert eventually(lambda: published == [["front1"], ["front3", "rear4"]])
    finally:
        first.set()
        assert handover.stop(WAIT_S)


def gated_pipeline(publish_wait_s: float, calls_host_work_done: bool = True):
    """A handover whose match of a pair waits on ``host[pair]`` (its host work), then tells the
    handover its host work is done (unless ``calls_host_work_done`` is False), then waits on
    ``network[pair]``: (handover, stages, host, network)."""
    stages = Stages()
    host: Dict[int, threading.Event] = {}
    network: Dict[int, threading.Event] = {}
    handover: Optional[FrameHandover] = None

    def match(settings: Any, pair: int) -> Any:
        host.setdefault(pair, threading.Event()).wait(WAIT_S)
        if calls_host_work_done:
            handover.host_work_done()
        network.setdefault(pair, threading.Event()).wait(WAIT_S)
        return stages.match(settings, pair)

    handover = FrameHandover("A", match, stages.publish, Stats(), ThrottledLog(Lines(), 0.0), thread_prefix="gate",
                             publish_wait_s=publish_wait_s)
    handover.start()
    return handover, stages, host, network


def _release(events: Dict[int, threading.Event], pair: int) -> None:
    events.setdefault(pair, threading.Event()).set()


def test_the_publisher_lets_the_next_frames_host_work_go_first_then_publishes_during_its_network():
    """Publishing and the worker's host work both hold the GIL: a frame is published once the next
    frame's host work is done (its network runs), not beside it."""
    handover, stages, host, network = gated_pipeline(publish_wait_s=WAIT_S)
    try:
        _release(host, 1)
        handover.offer(1, 1)
        assert eventually(lambda: handover.in_flight == 1)
        handover.offer(2, 2)  # waiting when frame 1 is handed over: the worker takes it at once
        _release(network, 1)
        assert eventually(lambda: handover.in_flight == 2 and handover.publishing == 1)
        time.sleep(0.3)
        assert stages.published == []  # frame 2's host work is still running
        _release(host, 2)  # its network starts: frame 1 is published meanwhile
        assert eventually(lambda: [s for _, s in stages.published] == [1])
        assert handover.in_flight == 2
        _release(network, 2)
        assert eventually(lambda: [s for _, s in stages.published] == [1, 2])
        assert handover.waits["publisher_for_worker"] >= 0.3
    finally:
        for pair in (1, 2):
            _release(host, pair)
            _release(network, pair)
        assert handover.stop(WAIT_S)


def test_the_publisher_waits_for_the_next_frame_a_bounded_time_and_not_at_all_without_one():
    handover, stages, host, network = gated_pipeline(publish_wait_s=WAIT_S)
    try:
        for pair in (1, 2):
            _release(host, pair)
            _release(network, pair)
        t = time.monotonic()
        handover.offer(1, 1)  # nothing waits behind it: published at once, not after publish_wait_s
        assert eventually(lambda: [s for _, s in stages.published] == [1])
        assert time.monotonic() - t < WAIT_S / 2
        assert handover.waits["publisher_for_worker"] < WAIT_S / 2
    finally:
        assert handover.stop(WAIT_S)
    # A match that never says its host work is done holds the publication publish_wait_s at most.
    handover, stages, host, network = gated_pipeline(publish_wait_s=0.2, calls_host_work_done=False)
    try:
        _release(host, 1)
        handover.offer(1, 1)
        assert eventually(lambda: handover.in_flight == 1)
        handover.offer(2, 2)
        _release(network, 1)
        assert eventually(lambda: [s for _, s in stages.published] == [1])
        assert handover.in_flight == 2  # published while frame 2's host work was still held
        assert 0.15 <= handover.waits["publisher_for_worker"] < WAIT_S / 2
        assert handover.waits["worker_for_input"] >= 0.0 and handover.waits["worker_for_publisher"] >= 0.0
    finally:
        for pair in (1, 2):
            _release(host, pair)
            _release(network, pair)
        assert handover.stop(WAIT_S)


def test_an_offered_pair_wakes_the_worker_even_when_the_publisher_waits_too(monkeypatch):
    """Both threads wait on one condition: an offer must reach the worker, not only whichever thread
    waits first (a lost wake-up left a pair waiting a whole poll period). With the poll period made
    longer than the test's bound, a lost wake-up fails the test."""
    import foundation_stereo_ros.ros.handover as handover_module

    monkeypatch.setattr(handover_module, "POLL_S", 3 * WAIT_S)
    stages = Stages()
    handover = FrameHandover("A", stages.match, stages.publish, Stats(), ThrottledLog(Lines(), 0.0),
                             thread_prefix="wake")
    handover.start()
    try:
        for stamp in range(1, 31):
            handover.offer(stamp, stamp)
            assert eventually(lambda: len(stages.published) == stamp), stamp
            time.sleep(0.005)  # both threads back to waiting
    finally:
        handover._stop.set()
        with handover._cond:
            handover._cond.notify_all()
        assert handover.stop(WAIT_S)


class NetworkStages:
    """Stage and match functions like the node's: ``stage`` takes ``stage_s``, ``match`` says its
    frame left the host and then 'runs the network' for ``network_s``. Records who staged what when."""

    def __init__(self, network_s: float = 0.2, stage_s: float = 0.02, fail_call: Optional[int] = None,
                 slow_network: Optional[int] = None) -> None:
        self.network_s, self.stage_s, self.fail_call = network_s, stage_s, fail_call
        self.slow_network = slow_network  # this network call takes five times as long
        self.failed: Optional[int] = None  # the pair whose staging failed
        self.handover: Optional[FrameHandover] = None
        self.staged: List[Any] = []  # (pair, thread name, start)
        self.networks: List[Any] = []  # (pair, start, end)
        self.published: List[int] = []

    def stage(self, settings: Any, pair: int) -> Any:
        self.staged.append((pair, threading.current_thread().name, time.perf_counter()))
        time.sleep(self.stage_s)
        if len(self.staged) == self.fail_call:
            self.failed = pair
            raise RuntimeError("a bug in staging")
        return ("staged", pair)

    def match(self, settings: Any, staged: Any) -> Any:
        assert staged[0] == "staged"
        self.handover.host_work_done()
        start = time.perf_counter()
        time.sleep(self.network_s * (5 if len(self.networks) + 1 == self.slow_network else 1))
        self.networks.append((staged[1], start, time.perf_counter()))
        return staged[1]

    def publish(self, pair: int) -> None:
        self.published.append(pair)


def run_with_stager(stages: NetworkStages, seconds: float, ahead=lambda settings: True, serial: bool = False):
    """Pairs offered every 30 ms for ``seconds`` to a handover with a stager; (handover, stats, log lines)."""
    stats, lines = Stats(), Lines()
    handover = FrameHandover("A", stages.match, stages.publish, stats, ThrottledLog(lines, 0.0),
                             thread_prefix="staging", stage=stages.stage, ahead=ahead)
    stages.handover = handover
    handover.serial = serial
    handover.start()
    try:
        end, stamp = time.monotonic() + seconds, 0
        while time.monotonic() < end:
            stamp += 1
            handover.offer(stamp, stamp)
            time.sleep(0.03)
        time.sleep(0.05)  # the last pair: taken by the worker or the stager
        assert eventually(lambda: handover.in_flight is None and handover.matched is None
                          and handover.publishing is None and len(stages.published) == len(stages.networks))
    finally:
        assert handover.stop(WAIT_S)
    return handover, stats, lines


def test_the_stager_stages_the_next_pair_just_before_the_network_ends():
    stages = NetworkStages()
    handover, stats, _ = run_with_stager(stages, 2.5)
    ahead = [(pair, start) for pair, thread, start in stages.staged if thread == "staging_stager"]
    assert handover.staged_ahead == len(ahead) >= 5
    assert all(thread in ("staging_stager", "staging_worker") for _, thread, _ in stages.staged)
    for pair, start in ahead:
        # The network it overlapped: staged in its last part (just in time), not as it started.
        net = next((p, s, e) for p, s, e in stages.networks if s <= start <= e)
        assert start - net[1] >= 0.5 * stages.network_s, (pair, start - net[1])
    # Every frame matched is the one staged from its own pair, published in order, none twice.
    assert stages.published == sorted(stages.published) == [p for p, _, _ in stages.networks]
    assert len(set(stages.published)) == len(stages.published)
    assert set(stages.published) <= {pair for pair, _, _ in stages.staged}
    assert stats.problems == {}


def test_the_worker_stages_itself_when_frames_may_not_be_staged_ahead_or_publishing_is_serial():
    for ahead, serial in ((lambda settings: False, False), (lambda settings: True, True)):
        stages = NetworkStages(network_s=0.1)
        handover, _, _ = run_with_stager(stages, 1.0, ahead=ahead, serial=serial)
        assert handover.staged_ahead == 0
        assert {thread for _, thread, _ in stages.staged} == {"staging_worker"}
        assert len(stages.published) >= 3


def test_a_failed_staging_is_an_internal_error_and_the_next_pairs_go_on():
    stages = NetworkStages(fail_call=5)  # by then the stager stages ahead
    handover, stats, lines = run_with_stager(stages, 2.0)
    assert stats.problems.get("internal_error") == 1 and any("a bug in staging" in line for line in lines.lines)
    assert stages.failed not in stages.published and any(p > stages.failed for p in stages.published)


def test_a_staged_pair_that_waited_longer_than_planned_gives_way_to_the_newest():
    """The network ran five times longer than expected: the pair staged for after it is older than
    the pairs that came meanwhile, so the worker drops it (counted) and takes the newest."""
    stages = NetworkStages(network_s=0.1, slow_network=8)
    handover, stats, _ = run_with_stager(stages, 2.5)
    assert handover.staged_stale >= 1 and stats.dropped >= handover.staged_stale
    slow_end = stages.networks[7][2]
    after = stages.networks[8]  # the frame matched after the slow network: a pair offered just before it ended
    staged_then = [start for pair, thread, start in stages.staged if pair == after[0]]
    assert staged_then and staged_then[0] >= slow_end - 0.06, (staged_then, slow_end)
    assert stages.published == sorted(stages.published)
