"""Replica choice: requests spread across a block's holders by predicted finish time,
measured per request (node/work/latency.py with placement.by_predicted_finish)."""

from __future__ import annotations

import heapq

from node.work.latency import PRUNE_ABOVE, PeakEwma
from node.work.placement import by_predicted_finish

GF = 1e9   # one GFLOP per request: seconds per request = seconds per GFLOP


def test_a_slower_request_counts_at_once_and_a_faster_one_only_gradually():
    est = PeakEwma(decay_s=1.0)
    est.observe("a", GF, 0.001, now=0.0)
    est.observe("a", GF, 0.010, now=0.1)        # a queue built up: counts at once
    assert est.speeds(["a"], 0.1)["a"] == 1 / 0.010
    est.observe("a", GF, 0.001, now=0.2)        # one fast reply does not undo it
    assert 1 / 0.010 < est.speeds(["a"], 0.2)["a"] < 1 / 0.005
    for i in range(30):                         # a few seconds of fast replies do
        est.observe("a", GF, 0.001, now=0.3 + 0.2 * i)
    assert est.speeds(["a"], 6.1)["a"] > 0.9 / 0.001


def test_a_stale_estimate_is_not_used_so_the_holder_is_tried_again():
    est = PeakEwma(stale_s=5.0)
    est.observe("a", GF, 0.5, now=0.0)
    assert "a" in est.speeds(["a"], 4.0)
    assert est.speeds(["a"], 5.5) == {}
    est.observe("a", GF, 0.002, now=6.0)        # after a stale gap the new figure counts
    assert est.speeds(["a"], 6.0)["a"] == 1 / 0.002


def test_the_choice_leaves_a_replica_whose_replies_slowed_down():
    est = PeakEwma()
    est.observe("a", GF, 0.001, now=0.0)
    est.observe("b", GF, 0.001, now=0.0)
    long_term = {"a": 2.0, "b": 1.0}            # the long-term scores prefer a
    assert by_predicted_finish(["a", "b"], long_term | est.speeds(["a", "b"], 0.0),
                               {}, GF)[0] == "a"   # a tie: the plan's first
    est.observe("a", GF, 0.004, now=0.5)        # a's queue grew (others' requests)
    assert by_predicted_finish(["a", "b"], long_term | est.speeds(["a", "b"], 0.5),
                               {}, GF)[0] == "b"


def _simulate(coordinators: int, holders: list[str], measured: bool, seconds: float = 5.0,
              service_s: float = 0.001, rtt_s: float = 0.0005) -> dict[str, int]:
    """Closed loop: each coordinator sends one request at a time to the holder its choice
    ranks first; each holder serves FIFO. Returns requests served per holder.

    ``measured=False`` is the choice as it was: long-term scores that move slowly (equal
    replicas here, so every coordinator picks the same one); ``measured=True`` adds the per-request
    peak-EWMA estimate each coordinator keeps of its own replies.
    """
    scores = {h: 1.0 / (service_s + rtt_s) for h in holders}   # long-term: unloaded speed
    ests = [PeakEwma() for _ in range(coordinators)]
    free_at = {h: 0.0 for h in holders}
    served = {h: 0 for h in holders}
    events = [(0.0001 * c, c) for c in range(coordinators)]   # (send time, coordinator)
    heapq.heapify(events)
    while events:
        now, c = heapq.heappop(events)
        if now > seconds:
            break
        speeds = scores | (ests[c].speeds(holders, now) if measured else {})
        h = by_predicted_finish(holders, speeds, {}, GF)[0]
        start = max(now + rtt_s / 2, free_at[h])
        free_at[h] = start + service_s
        done = free_at[h] + rtt_s / 2
        served[h] += 1
        ests[c].observe(h, GF, done - now, done)
        heapq.heappush(events, (done, c))
    return served


def test_coordinators_no_longer_herd_onto_one_replica():
    before = _simulate(3, ["a", "b"], measured=False)
    assert before["b"] == 0                     # what the static scores did: all on a
    after = _simulate(3, ["a", "b"], measured=True)
    total = sum(after.values())
    assert min(after.values()) / total > 0.3, after
    assert total > 1.3 * sum(before.values())   # two servers busy instead of one


def test_holders_not_heard_from_are_dropped_so_churn_cannot_grow_the_estimates():
    est = PeakEwma(stale_s=5.0)
    for i in range(10 * PRUNE_ABOVE):          # a long-lived daemon sees members come and go
        est.observe(f"node-{i}", 1e9, 0.01, now=float(i))
    assert len(est._at) <= PRUNE_ABOVE + 1 and len(est._cost) == len(est._at)
    assert "node-639" in est.speeds([f"node-{i}" for i in range(640)], now=639.0)
