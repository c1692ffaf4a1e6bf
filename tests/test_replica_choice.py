"""Replica choice: requests spread across a block's holders by predicted finish time,
measured per request (node/work/latency.py with placement.by_predicted_finish)."""

from __future__ import annotations

import heapq

from node.work.latency import PRUNE_ABOVE, STALE_S, PeakEwma, order_holders
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
              service_s: float | dict[str, float] = 0.001, rtt_s: float = 0.0005,
              clients: int = 1, joins: dict[str, float] | None = None,
              log: list | None = None) -> dict[str, int]:
    """Closed loop: each of ``clients`` per coordinator sends one request at a time to the
    holder the coordinator's choice ranks first; each holder serves FIFO. Returns requests
    served per holder (``log`` gets (time, coordinator, holder) per request).

    ``measured=False`` is the choice as it was before per-request estimates: long-term
    scores that move slowly (equal replicas here, so every coordinator picks the same one);
    ``measured=True`` is :func:`order_holders` over each coordinator's own peak-EWMA
    estimates and requests in flight, as ``JobManager._holder_order`` runs it.
    ``joins``: a holder listed only from that time on (a replica added while serving).
    """
    svc = service_s if isinstance(service_s, dict) else {h: service_s for h in holders}
    scores = {h: 1.0 / (svc[h] + rtt_s) for h in holders}   # long-term: unloaded speed
    ests = [PeakEwma() for _ in range(coordinators)]
    inflight: list[dict[str, int]] = [{} for _ in range(coordinators)]
    free_at = {h: 0.0 for h in holders}
    served = {h: 0 for h in holders}
    # (time, kind, coordinator, holder): kind 0 = a reply arrives, 1 = a request is sent
    events = [(0.0001 * (c * clients + k), 1, c, "") for c in range(coordinators)
              for k in range(clients)]
    heapq.heapify(events)
    sent: dict[tuple[float, int, str], float] = {}
    while events:
        now, kind, c, h = heapq.heappop(events)
        if now > seconds:
            break
        if kind == 0:                             # a reply: learn, then send the next one
            inflight[c][h] -= 1
            ests[c].observe(h, GF, now - sent.pop((now, c, h)), now)
            heapq.heappush(events, (now, 1, c, ""))
            continue
        listed = [x for x in holders if (joins or {}).get(x, 0.0) <= now]
        if measured:
            h = order_holders(listed, ests[c].costs(listed, now), scores, inflight[c], GF)[0]
        else:
            h = by_predicted_finish(listed, scores, {}, GF)[0]
        start = max(now + rtt_s / 2, free_at[h])
        free_at[h] = start + svc[h]
        done = free_at[h] + rtt_s / 2
        served[h] += 1
        inflight[c][h] = inflight[c].get(h, 0) + 1
        sent[(done, c, h)] = now
        if log is not None:
            log.append((now, c, h))
        heapq.heappush(events, (done, 0, c, h))
    return served


def test_coordinators_no_longer_herd_onto_one_replica():
    before = _simulate(3, ["a", "b"], measured=False)
    assert before["b"] == 0                     # what the static scores did: all on a
    after = _simulate(3, ["a", "b"], measured=True)
    total = sum(after.values())
    assert min(after.values()) / total > 0.3, after
    assert total > 1.3 * sum(before.values())   # two servers busy instead of one


def test_two_equal_replicas_share_four_concurrent_requests_about_evenly():
    one = _simulate(1, ["a", "b"], measured=True, clients=4)
    assert min(one.values()) / sum(one.values()) > 0.4, one
    # the skew bench's shape: four coordinators, one request each at a time
    four = _simulate(4, ["a", "b"], measured=True)
    assert min(four.values()) / sum(four.values()) > 0.4, four


def test_a_replica_never_used_gets_traffic_within_a_few_requests():
    """The failure the skew bench showed: a holder this coordinator never tried had no
    estimate, ranked behind the one in use, and so was never tried."""
    log: list = []
    served = _simulate(4, ["a", "b"], measured=True, seconds=3.0, joins={"b": 1.0}, log=log)
    for c in range(4):                      # every coordinator tries it at once
        after = [h for t, k, h in log if t >= 1.0 and k == c]
        assert "b" in after[:2], (c, after[:10])
    # and, the four keeping a busy, it takes its share from then on
    assert served["b"] > 0.3 * sum(1 for t, _, _ in log if t >= 1.0), served


def test_a_never_tried_holder_is_probed_before_the_known_one():
    est = PeakEwma()
    est.observe("a", GF, 0.002, now=0.0)
    costs = est.costs(["a", "b"], 0.1)
    assert costs["b"] < costs["a"]
    assert order_holders(["a", "b"], costs, {"a": 100.0, "b": 1.0}, {}, GF) == ["b", "a"]
    # ... but not while its probe is still in flight and the known one is idle
    assert order_holders(["a", "b"], costs, {}, {"b": 1}, GF) == ["a", "b"]


def test_a_really_slow_replica_gets_little_and_is_probed_a_bounded_number_of_times():
    seconds = 20.0
    served = _simulate(1, ["a", "b"], measured=True, seconds=seconds,
                       service_s={"a": 0.001, "b": 0.050})
    # probed once, then again only when its estimate went stale (one per STALE_S)
    assert 1 <= served["b"] <= seconds / STALE_S + 1, served
    busy = _simulate(1, ["a", "b"], measured=True, clients=8, seconds=seconds,
                     service_s={"a": 0.001, "b": 0.010})
    # with a queue on a, b takes some, in proportion to what it can do (10x slower)
    assert 0 < busy["b"] / sum(busy.values()) < 0.15, busy


def test_a_slow_estimate_relaxes_toward_the_best_but_never_below_it():
    est = PeakEwma(decay_s=1.0)
    est.observe("a", GF, 0.001, now=0.0)
    est.observe("b", GF, 0.010, now=0.0)
    est.observe("a", GF, 0.001, now=3.0)        # a kept fresh by use
    costs = est.costs(["a", "b"], 3.0)
    assert 0.001 < costs["b"] < 0.0015           # b relaxed, 3 time constants on
    assert order_holders(["a", "b"], costs, {}, {}, GF)[0] == "a"
    assert order_holders(["a", "b"], costs, {}, {"a": 1}, GF)[0] == "b"   # a has a queue


def test_a_failed_holder_ranks_last_until_its_estimate_goes_stale():
    est = PeakEwma(stale_s=5.0)
    est.observe("a", GF, 0.010, now=0.0)
    est.failed("b", now=0.0)
    assert order_holders(["b", "a"], est.costs(["a", "b"], 1.0), {}, {"a": 3}, GF) == ["a", "b"]
    est.observe("a", GF, 0.010, now=6.0)
    assert order_holders(["b", "a"], est.costs(["a", "b"], 6.0), {}, {}, GF)[0] == "b"


def test_no_fresh_estimate_ranks_by_long_term_scores_only():
    est = PeakEwma()
    assert est.costs(["a", "b"], 0.0) == {}
    assert order_holders(["a", "b"], {}, {"a": 1.0, "b": 4.0}, {}, GF) == ["b", "a"]
    # a remote hop counts only in this fallback (the measured cost includes the transfer)
    assert order_holders(["a", "b"], {}, {"a": 1.0, "b": 1.0}, {}, 1e6, {"a": 0.002}) \
        == ["b", "a"]


def test_holders_not_heard_from_are_dropped_so_churn_cannot_grow_the_estimates():
    est = PeakEwma(stale_s=5.0)
    for i in range(10 * PRUNE_ABOVE):          # a long-lived daemon sees members come and go
        est.observe(f"node-{i}", 1e9, 0.01, now=float(i))
    assert len(est._at) <= PRUNE_ABOVE + 1 and len(est._cost) == len(est._at)
    assert "node-639" in est.speeds([f"node-{i}" for i in range(640)], now=639.0)
