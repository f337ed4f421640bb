"""TimeJumpGuard: stamps that jump backwards (a looped bag, a restarted driver), shared by the node
and the offline bag reader."""
from __future__ import annotations

import types

import pytest

from foundation_stereo_ros.evaluation.bag_io import BagRecord, StereoPairer, StereoTopics
from foundation_stereo_ros.ros.sync import TIME_JUMP_NS, TimeJumpGuard

S = 1_000_000_000
MS = 1_000_000


def test_threshold_constant_is_one_second():
    # The node's documented behaviour ("stamps went back by more than 1 s").
    assert TIME_JUMP_NS == S


def test_a_jump_is_more_than_the_threshold_back_from_the_newest_stamp():
    guard = TimeJumpGuard()
    assert guard.observe(10 * S) is None  # the first stamp is never a jump
    assert guard.observe(9 * S) is None  # exactly the threshold back: a normal reordering
    assert guard.jumps == 0
    assert guard.observe(9 * S - 1) == S + 1  # one nanosecond more: a jump, and how far back
    assert guard.jumps == 1


def test_small_reorderings_do_not_lower_the_newest_stamp():
    guard = TimeJumpGuard()
    guard.observe(10 * S)
    assert guard.observe(10 * S - 500 * MS) is None
    # 1.1 s behind the newest (10 s), though only 0.6 s behind the previous message.
    assert guard.observe(10 * S - 1100 * MS) == 1100 * MS
    assert guard.jumps == 1


def test_after_a_jump_the_newest_stamp_restarts_from_it():
    guard = TimeJumpGuard()
    guard.observe(10 * S)
    assert guard.observe(2 * S) == 8 * S
    assert guard.observe(1500 * MS) is None  # 0.5 s behind the new newest
    assert guard.observe(2 * S + 33 * MS) is None
    assert guard.observe(S) == S + 33 * MS  # a second loop, measured from the new newest
    assert guard.jumps == 2


def test_the_pair_at_the_jump_is_discarded_and_later_pairs_accepted():
    guard = TimeJumpGuard()
    for t in (10 * S, 10 * S + 33 * MS):
        guard.observe(t)
        assert guard.accept_pair(t)
    guard.observe(2 * S)
    assert not guard.accept_pair(2 * S)
    for t in (2 * S + 33 * MS, 2 * S + 66 * MS):
        guard.observe(t)
        assert guard.accept_pair(t)


def test_a_newer_first_pair_after_a_jump_is_kept():
    # When the pair at the jump never forms (e.g. a partner was lost), the next one is not punished.
    guard = TimeJumpGuard()
    guard.observe(10 * S)
    guard.observe(2 * S)
    assert guard.accept_pair(2 * S + 1)  # exact sync: anything after the jump stamp is a new pair
    assert guard.accept_pair(2 * S)  # only the first pair after a jump is judged


def test_approximate_sync_discards_a_pair_within_tolerance_of_the_jump():
    guard = TimeJumpGuard(approximate=True, tolerance_s=0.005)
    guard.observe(10 * S)
    guard.observe(2 * S)
    assert not guard.accept_pair(2 * S + 5 * MS)  # left stamp within 5 ms of the jump: that pair
    guard.observe(10 * S)
    guard.observe(2 * S)
    assert guard.accept_pair(2 * S + 6 * MS)
    # The tolerance applies only with approximate sync, as in the synchroniser.
    exact = TimeJumpGuard(approximate=False, tolerance_s=0.005)
    exact.observe(10 * S)
    exact.observe(2 * S)
    assert exact.accept_pair(2 * S + 1 * MS)


def test_forward_jumps_are_not_counted():
    guard = TimeJumpGuard()
    for t in (S, 100 * S, 5000 * S):
        assert guard.observe(t) is None
        assert guard.accept_pair(t)
    assert guard.jumps == 0
    # The forward jump moved the newest stamp: going back 1.5 s from it is a jump.
    assert guard.observe(5000 * S - 1500 * MS) == 1500 * MS


def test_custom_threshold_and_bad_arguments():
    guard = TimeJumpGuard(threshold_ns=100 * MS)
    guard.observe(S)
    assert guard.observe(S - 101 * MS) == 101 * MS
    with pytest.raises(ValueError, match="tolerance_s"):
        TimeJumpGuard(approximate=True, tolerance_s=-0.1)
    with pytest.raises(ValueError, match="threshold_ns"):
        TimeJumpGuard(threshold_ns=-1)


def _record(topic: str, t_ns: int) -> BagRecord:
    stamp = types.SimpleNamespace(sec=t_ns // S, nanosec=t_ns % S)
    return BagRecord(topic, t_ns, types.SimpleNamespace(header=types.SimpleNamespace(stamp=stamp)))


def test_bag_pairer_uses_the_guard_on_a_looped_recording():
    topics = StereoTopics.under("/stereo", gt=False)
    order = (topics.left_image, topics.left_info, topics.right_image, topics.right_info)
    stamps = [10 * S + k * 100 * MS for k in range(3)] + [2 * S + k * 100 * MS for k in range(3)]
    pairer = StereoPairer(topics)
    pairs = [p for t in stamps for topic in order for p in [pairer.add(_record(topic, t))] if p is not None]
    assert pairer.time_jumps == 1
    # The pair at the jump (2.0 s) is dropped; everything else pairs.
    assert [p.stamp_ns for p in pairs] == stamps[:3] + stamps[4:]
