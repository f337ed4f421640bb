"""The in-package time synchroniser (used when message_filters is not installed)."""
from __future__ import annotations

import types

import pytest

from foundation_stereo_ros.ros.sync import TimeSynchronizer, stamp_ns


def m(t_ns: int, tag: str = ""):
    return types.SimpleNamespace(header=types.SimpleNamespace(stamp=types.SimpleNamespace(
        sec=t_ns // 1_000_000_000, nanosec=t_ns % 1_000_000_000)), tag=tag)


MS = 1_000_000


def collect(**kw):
    sets, unpaired = [], []
    sync = TimeSynchronizer(4, lambda *msgs: sets.append([stamp_ns(x) for x in msgs]),
                            on_unpaired=lambda i, msg: unpaired.append((i, stamp_ns(msg))), **kw)
    return sync, sets, unpaired


def test_exact_sync_pairs_equal_stamps_in_any_arrival_order():
    sync, sets, unpaired = collect()
    for i in (2, 0, 3):
        sync.add(i, m(100 * MS))
    assert sets == []
    sync.add(1, m(100 * MS))
    assert sets == [[100 * MS] * 4]
    for i in (3, 1, 0, 2):
        sync.add(i, m(133 * MS))
    assert sets[-1] == [133 * MS] * 4 and unpaired == []


def test_exact_sync_does_not_pair_close_stamps():
    sync, sets, _ = collect()
    for i, t in enumerate((100, 100, 101, 100)):
        sync.add(i, m(t * MS))
    assert sets == []


def test_approximate_sync_pairs_within_tolerance_only():
    sync, sets, _ = collect(approximate=True, tolerance_s=0.005)
    for i, t in enumerate((100, 100, 103, 103)):
        sync.add(i, m(t * MS))
    assert sets == [[100 * MS, 100 * MS, 103 * MS, 103 * MS]]
    for i, t in enumerate((200, 200, 210, 210)):  # 10 ms apart: too far
        sync.add(i, m(t * MS))
    assert len(sets) == 1


def test_approximate_sync_chooses_the_closest_partner():
    sync, sets, _ = collect(approximate=True, tolerance_s=0.02)
    sync.add(0, m(100 * MS))
    sync.add(1, m(100 * MS))
    sync.add(2, m(85 * MS))
    sync.add(2, m(98 * MS))
    sync.add(3, m(99 * MS))
    assert sets == [[100 * MS, 100 * MS, 98 * MS, 99 * MS]]


def test_messages_that_never_pair_are_reported():
    sync, sets, unpaired = collect(queue_size=3)
    for t in range(5):  # left image only: the queue overflows
        sync.add(0, m(t * MS))
    assert [u for u in unpaired if u[0] == 0] == [(0, 0), (0, 1 * MS)]
    assert sync.unpaired[0] == 2


def test_older_messages_are_discarded_once_a_newer_set_forms():
    sync, sets, unpaired = collect()
    sync.add(0, m(1 * MS))  # its partners never come
    for i in range(4):
        sync.add(i, m(2 * MS))
    assert sets == [[2 * MS] * 4]
    assert (0, 1 * MS) in unpaired


def test_reset_forgets_queued_messages():
    sync, sets, _ = collect()
    for i in range(3):
        sync.add(i, m(5 * MS))
    sync.reset()
    sync.add(3, m(5 * MS))
    assert sets == []


def test_bad_arguments():
    with pytest.raises(ValueError):
        TimeSynchronizer(1, print)
    with pytest.raises(ValueError):
        TimeSynchronizer(4, print, queue_size=0)
    with pytest.raises(ValueError):
        TimeSynchronizer(4, print, approximate=True, tolerance_s=-1.0)


def test_discard_newer_than_keeps_the_present():
    sync, sets, _ = collect()
    sync.add(0, m(900 * MS))  # queued before a bag loop
    sync.add(1, m(10 * MS))
    assert sync.discard_newer_than(10 * MS) == 1
    for i in (0, 2, 3):
        sync.add(i, m(10 * MS))
    assert sets == [[10 * MS] * 4]
