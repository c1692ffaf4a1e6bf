"""The building blocks: transmit-limited broadcast queue, suspicion timer, local health."""

import math

import pytest

from protocol.awareness import Awareness
from protocol.broadcast import BroadcastQueue, retransmit_limit
from protocol.suspicion import Suspicion, suspicion_timeout


def test_retransmit_limit_grows_with_log_of_cluster_size():
    assert retransmit_limit(4, 1) == 4
    assert retransmit_limit(4, 10) == 8
    assert retransmit_limit(4, 1000) == 16


def test_each_update_is_sent_exactly_retransmit_limit_times():
    q = BroadcastQueue()
    q.queue("x", "news")
    sent = 0
    for _ in range(100):
        got = q.take(16, 10, 4)
        if not got:
            break
        sent += len(got)
    assert sent == retransmit_limit(4, 10) and len(q) == 0


def test_newer_update_replaces_older_about_same_subject():
    q = BroadcastQueue()
    q.queue("x", "old")
    q.take(16, 10, 4)
    q.queue("x", "new")
    assert q.take(16, 10, 4) == ["new"] and len(q) == 1


def test_least_sent_and_newest_updates_go_first():
    q = BroadcastQueue()
    q.queue("a", "a1")
    q.take(1, 10, 4)  # a sent once
    q.queue("b", "b0")
    q.queue("c", "c0")
    assert q.take(2, 10, 4) == ["c0", "b0"]
    assert q.take(3, 10, 4) == ["c0", "b0", "a1"]  # all sent once: newest first


def test_take_respects_limit():
    q = BroadcastQueue()
    for i in range(50):
        q.queue(str(i), i)
    assert len(q.take(16, 10, 4)) == 16 and len(q) == 50


def test_suspicion_timeout_scales_with_log10_of_cluster():
    assert suspicion_timeout(4, 5, 1.0) == 4.0
    assert suspicion_timeout(4, 1000, 1.0) == pytest.approx(12.0)


def test_confirmations_shrink_suspicion_to_the_minimum():
    s = Suspicion(start=100.0, min_timeout=10.0, max_timeout=60.0, k=3, origin="a")
    deadlines = [s.deadline]
    for peer in ("b", "c", "d"):
        assert s.confirm(peer)
        deadlines.append(s.deadline)
    assert deadlines[0] == 160.0 and deadlines[-1] == 110.0
    assert deadlines == sorted(deadlines, reverse=True)
    expected = 60.0 - math.log(2) / math.log(4) * 50.0
    assert deadlines[1] == pytest.approx(100.0 + expected, abs=1e-3)


def test_repeated_or_originator_confirmations_do_not_count():
    s = Suspicion(start=0.0, min_timeout=10.0, max_timeout=60.0, k=3, origin="a")
    assert not s.confirm("a")
    assert s.confirm("b") and not s.confirm("b")
    assert s.deadline > 10.0


def test_without_expected_confirmations_the_minimum_applies():
    s = Suspicion(start=0.0, min_timeout=5.0, max_timeout=30.0, k=0, origin="a")
    assert s.deadline == 5.0


def test_awareness_scales_timeouts_and_is_clamped():
    a = Awareness(max_multiplier=8)
    assert a.scale(0.5) == 0.5
    a.apply_delta(3)
    assert a.scale(0.5) == 2.0
    a.apply_delta(100)
    assert a.score == 7
    a.apply_delta(-100)
    assert a.score == 0
