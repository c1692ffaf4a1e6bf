"""The transfer-aware one-shot split (issue 13): equal predicted finish times, a peer pays
for moving its operands, co-hosts and peers too slow to pay get nothing, every row once."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from compute.device import get_preset
from compute.partition import NodeSlot, PartitionPlan
from node.work.oneshotsplit import (MAX_CHUNKS, ShareCost, fits_memory, fixed_cost, row_cost,
                                   transfer_split)
from node.work.sharemeter import HOST_ENV, ShareMeter, host_id

N = 2048
FAST = 1e13             # bytes/s: transfer costs next to nothing
LOOPBACK = 350e6        # what the encrypted loopback link carries here


def me(gflops: float = 100.0) -> ShareCost:
    return ShareCost("me", gflops, local=True)


def peer(name: str = "p", gflops: float = 100.0, link: float = FAST, latency: float = 0.0,
         cohost: bool = False) -> ShareCost:
    return ShareCost(name, gflops, link, latency, cohost=cohost)


def rows(split) -> dict[str, int]:
    return dict(split.rows)


def test_equal_nodes_on_a_fast_link_split_near_evenly():
    got = rows(transfer_split(N, N, N, [me(), peer()]))
    assert abs(got["me"] - N // 2) <= N // 100 and sum(got.values()) == N


def test_a_faster_peer_gets_more_rows_on_a_fast_link():
    got = rows(transfer_split(N, N, N, [me(100.0), peer(gflops=300.0)]))
    assert got["p"] == pytest.approx(3 * got["me"], rel=0.01)


def test_a_slow_link_gives_the_peer_a_smaller_share_and_slower_is_smaller():
    shares = [rows(transfer_split(N, N, N, [me(), peer(link=bps)])).get("p", 0)
              for bps in (FAST, 2e9, LOOPBACK, 150e6)]
    assert shares[0] > shares[1] > shares[2] > shares[3] > 0
    assert shares[2] < N // 2


def test_the_shares_finish_together_as_predicted():
    nodes = [me(), peer(link=LOOPBACK, latency=0.001), peer("q", 60.0, 1e9, 0.002)]
    split = transfer_split(N, N, N, nodes)
    times = list(split.predicted_s.values())
    assert len(times) == 3
    one_row = max(row_cost(c, N, N) for c in nodes)
    assert max(times) - min(times) <= 2 * one_row
    for c in nodes:                      # the prediction is the model's, row for row
        r = rows(split)[c.node_id]
        assert split.predicted_s[c.node_id] == pytest.approx(
            fixed_cost(c, N, N) + r * row_cost(c, N, N))


def test_a_peer_too_slow_to_pay_for_moving_b_gets_no_share():
    # all of B (16 MiB) at 50 MB/s takes 0.34 s; this node does all of A @ B in 0.17 s
    split = transfer_split(N, N, N, [me(), peer(link=50e6)])
    assert split.rows == (("me", N),)
    assert split.predicted_s == {"me": pytest.approx(2.0 * N ** 3 / 100e9)}


def test_a_long_round_trip_alone_can_keep_a_small_job_local():
    assert rows(transfer_split(64, 64, 64, [me(), peer(latency=0.01)])) == {"me": 64}
    assert rows(transfer_split(64, 64, 64, [me(), peer(latency=0.0)]))["p"] > 0


def test_a_co_host_gets_no_share_however_fast_it_looks():
    split = transfer_split(N, N, N, [me(), peer(gflops=1000.0, cohost=True),
                                     peer("far", link=LOOPBACK)])
    got = rows(split)
    assert "p" not in got and got["far"] > 0 and sum(got.values()) == N
    # a co-host's figures need not be measured at all
    assert transfer_split(N, N, N, [me(), peer(gflops=0.0, link=0.0, cohost=True)]).rows \
        == (("me", N),)


def test_shares_are_whole_units_but_the_last():
    split = transfer_split(1000, 256, 64, [me(), peer(), peer("q")], unit=64)
    sizes = [r for _, r in split.rows]
    assert sum(sizes) == 1000
    assert all(r % 64 == 0 for r in sizes[:-1]) and 0 < sizes[-1]


def test_the_split_is_a_valid_plan_in_row_order():
    split = transfer_split(N, N, N, [me(), peer(link=LOOPBACK)])
    plan = split.plan((N, N), None)
    again = PartitionPlan.from_dict(plan.to_dict())          # checks the cover
    assert again.rows_by_node() == rows(split)
    assert [b.nodes[0] for b in plan.blocks] == [n for n, _ in split.rows]


@pytest.mark.parametrize("nodes, match", [
    ([peer()], "exactly one local"),
    ([me(), me()], "exactly one local"),
    ([me(), peer(), peer()], "duplicate"),
    ([me(0.0)], "speed"),
    ([me(), peer(gflops=float("nan"))], "speed"),
    ([me(), peer(link=0.0)], "link"),
    ([me(), peer(latency=-1.0)], "link"),
])
def test_a_snapshot_that_makes_no_sense_is_refused(nodes, match):
    with pytest.raises(ValueError, match=match):
        transfer_split(N, N, N, nodes)


speeds = st.floats(0.01, 1e4)
links = st.floats(1e5, 1e13)


@given(m=st.integers(1, 5000), k=st.integers(1, 3000), n=st.integers(1, 3000),
       unit=st.sampled_from([1, 8, 64, 128]),
       local=speeds,
       peers=st.lists(st.tuples(speeds, links, st.floats(0, 0.05), st.booleans(),
                                st.one_of(st.just(0.0), links), st.integers(1, 8)),
                      max_size=5), delay=st.sampled_from([1.0, 0.5]))
def test_every_row_is_computed_exactly_once(m, k, n, unit, local, peers, delay):
    nodes = [me(local)] + [ShareCost(f"p{i}", g, b, lat, cohost=co, handover_bps=h, chunks=c)
                           for i, (g, b, lat, co, h, c) in enumerate(peers)]
    split = transfer_split(m, k, n, nodes, unit=unit, handover_delay=delay)
    sizes = [r for _, r in split.rows]
    assert sum(sizes) == m and all(r > 0 for r in sizes)
    assert all(r % unit == 0 for r in sizes[:-1])
    assert len({nid for nid, _ in split.rows}) == len(sizes)
    cohosts = {c.node_id for c in nodes if c.cohost}
    assert not cohosts & set(rows(split))
    PartitionPlan.from_dict(split.plan((m, k), None).to_dict())


# the meter -------------------------------------------------------------------------------

def test_the_meter_smooths_and_forgets_old_and_departed_nodes():
    meter = ShareMeter(max_age_s=60)
    assert meter.speed("a", "", now=0) is None
    meter.record("a", "", 10e9, 1.0, now=0)                 # 10 GFLOP/s
    assert meter.speed("a", "", now=1) == pytest.approx(10.0)
    meter.record("a", "", 30e9, 1.0, now=2)                 # 30: smoothed halfway
    assert meter.speed("a", "", now=3) == pytest.approx(20.0)
    assert meter.speed("a", "rram", now=3) is None          # per device
    assert meter.speed("a", "", now=100) is None            # too old: measure again
    meter.record("a", "", 40e9, 1.0, now=100)               # a fresh start, not smoothed
    assert meter.speed("a", "", now=100) == pytest.approx(40.0)
    meter.record("b", "", 1e9, 0.0, now=100)                # no time: not a measurement
    assert meter.speed("b", "", now=100) is None
    meter.record("b", "", 1e9, 1.0, now=100)
    meter.forget({"b"})
    assert meter.speed("a", "", now=100) is None and meter.speed("b", "", now=100) == 1.0


def test_a_daemon_claims_no_host_unless_told_and_boot_names_the_kernel(monkeypatch):
    monkeypatch.delenv(HOST_ENV, raising=False)
    assert host_id() == ""                       # default: a local mesh spreads its work
    monkeypatch.setenv(HOST_ENV, "boot")
    first = host_id()
    assert first and first != "boot" and first == host_id()   # one kernel, one id
    monkeypatch.setenv(HOST_ENV, "pinned-cpus-0-3")
    assert host_id() == "pinned-cpus-0-3"
    monkeypatch.setenv(HOST_ENV, "none")
    assert host_id() == ""                       # never anyone's co-host


# the snapshot the job manager builds ------------------------------------------------------

class _Advert:
    def __init__(self, host):
        self.extra = {"host": host} if host is not None else {}


class _Member:
    def __init__(self, node_id, host):
        self.node_id, self.advert = node_id, _Advert(host)


class _Mesh:
    def __init__(self, members):
        self._members, self.sessions = members, {}

    def members(self):
        return self._members


def snapshot(hosts: dict[str, str | None], speeds: dict[str, float], links: dict[str, float]):
    """``JobManager._share_costs`` on fakes: this node "me" on host "h"."""
    from compute.device import get_preset
    from compute.partition import NodeSlot
    from node.work.jobs import JobManager

    class Fake:
        node_id, host = "me", "h"
        mesh = _Mesh([_Member(n, h) for n, h in hosts.items()])
        share_meter = ShareMeter()
        _rtt_s = staticmethod(lambda node: 0.001)
    for nid, gflops in speeds.items():
        Fake.share_meter.record(nid, "", gflops * 1e9, 1.0)
    for nid, bps in links.items():
        Fake.share_meter.record_link(nid, int(bps), 1.0)
    slots = [NodeSlot(n, 1.0, 1 << 30, get_preset("ideal")) for n in ["me", *hosts]]
    return JobManager._share_costs(Fake(), slots, None)


def test_the_snapshot_needs_every_non_co_host_measured():
    both = snapshot({"p": "other"}, {"me": 50.0, "p": 60.0}, {"p": 3e8})
    assert both == [ShareCost("me", 50.0, local=True),
                    ShareCost("p", 60.0, 3e8, 0.001, chunks=MAX_CHUNKS)]   # sent in chunks
    assert snapshot({"p": "other"}, {"me": 50.0}, {"p": 3e8}) is None        # p's speed
    assert snapshot({"p": "other"}, {"me": 50.0, "p": 60.0}, {}) is None     # p's link
    assert snapshot({"p": "other"}, {"p": 60.0}, {"p": 3e8}) is None          # this node


def test_the_snapshot_marks_co_hosts_from_their_adverts_measured_or_not():
    costs = snapshot({"p": "h", "q": None, "r": "other"}, {"me": 50.0, "q": 1.0, "r": 2.0},
                     {"q": 1e8, "r": 1e8})
    assert [(c.node_id, c.cohost) for c in costs] == [("me", False), ("p", True),
                                                      ("q", False), ("r", False)]


def test_a_split_for_time_alone_is_checked_against_each_nodes_free_memory():
    ideal = get_preset("ideal")                   # 4 bytes a weight
    row = N * 4
    slots = [NodeSlot("me", 1.0, 2048 * row, ideal), NodeSlot("p", 1.0, 100 * row, ideal)]
    assert fits_memory([("me", 1948), ("p", 100)], slots, N)
    assert not fits_memory([("me", 1947), ("p", 101)], slots, N)   # one row too many for p
    assert fits_memory([("me", 2048), ("p", 0)], slots, N)         # no share: nothing held


def test_operand_rates_are_kept_apart_from_the_migration_link_figure_and_age_out():
    meter = ShareMeter(max_age_s=600.0)
    meter.record_link("p", 100 << 20, 1.0, now=0.0)
    meter.record_link("p", 300 << 20, 1.0, now=1.0)            # smoothed, not replaced
    assert (100 << 20) < meter.link_bps("p", now=1.0) < (300 << 20)
    assert meter.link_bps("p", now=700.0) is None                # too old to use
    meter.forget({"q"})
    assert meter.link_bps("p", now=1.0) is None                  # departed: dropped


# this node's speed beside peers' shares (oneshot5) -----------------------------------------

#: The bench's two daemons on one 2-core machine (bench/README.md, oneshot5): this node
#: does 2048 rows alone in ~150 ms (~115 GFLOP/s on 2 threads) but only ~50-77 beside a
#: peer whose opening of B and compute take the same cores; the peer ~60 GFLOP/s, its path
#: 1-2.6 GB/s, this node's hand-over ~300 MB/s (the coordinator's log, main, 03:23 UTC).
BENCH_PEER = ShareCost("p", 60.0, 1.5e9, 0.0005, handover_bps=300e6, chunks=MAX_CHUNKS)


def test_a_node_measured_slower_beside_peers_keeps_the_job_whole():
    unmeasured = ShareCost("me", 115.0, local=True)
    slower = ShareCost("me", 115.0, local=True, alongside_gflops=60.0)
    # priced at its speed alone, this node gives the peer rows (what main did, job after job)
    assert rows(transfer_split(N, N, N, [unmeasured, BENCH_PEER], handover_delay=0.5))["p"] > 0
    # priced at what it measured beside the peer, the split cannot beat the job kept whole
    split = transfer_split(N, N, N, [slower, BENCH_PEER], handover_delay=0.5)
    assert split.rows == (("me", N),)
    assert split.predicted_s == {"me": pytest.approx(2.0 * N ** 3 / 115e9)}


def test_between_hosts_the_same_speed_beside_peers_changes_nothing():
    for link in (FAST, 2e9, LOOPBACK):
        far = ShareCost("p", 100.0, link, 0.001, handover_bps=1e9, chunks=MAX_CHUNKS)
        before = transfer_split(N, N, N, [me(), far], handover_delay=0.5)
        same = transfer_split(N, N, N, [ShareCost("me", 100.0, local=True,
                                                  alongside_gflops=100.0), far],
                              handover_delay=0.5)
        assert same == before and rows(same)["p"] > 0


def test_a_split_beside_peers_is_predicted_at_the_speed_measured_beside_them():
    local = ShareCost("me", 100.0, local=True, alongside_gflops=80.0)
    far = peer(link=FAST)
    split = transfer_split(N, N, N, [local, far])
    r = rows(split)
    assert 0 < r["p"] and r["p"] > r["me"]                   # the slower side gets fewer
    assert split.predicted_s["me"] == pytest.approx(r["me"] * 2.0 * N * N / 80e9)
    times = list(split.predicted_s.values())
    assert max(times) - min(times) <= 2 * row_cost(far, N, N)


def test_a_speed_beside_peers_that_makes_no_sense_is_refused():
    for bad in (float("nan"), -1.0, float("inf")):
        with pytest.raises(ValueError, match="alongside"):
            transfer_split(N, N, N, [ShareCost("me", 100.0, local=True,
                                               alongside_gflops=bad), peer()])


def test_the_meter_keeps_this_nodes_speed_beside_peers_apart_and_ages_it_out():
    meter = ShareMeter(max_age_s=60)
    meter.record("me", "", 100e9, 1.0, now=0)                     # a whole job
    meter.record("me", "", 40e9, 1.0, now=1, alongside=True)      # beside a peer's share
    assert meter.speed("me", "", now=2) == pytest.approx(100.0)   # not mixed into it
    assert meter.speed_alongside("me", "", now=2) == pytest.approx(40.0)
    meter.record("me", "", 60e9, 1.0, now=3, alongside=True)      # smoothed like the rest
    assert meter.speed_alongside("me", "", now=3) == pytest.approx(50.0)
    assert meter.speed_alongside("me", "rram", now=3) is None     # per device
    assert meter.speed_alongside("me", "", now=100) is None       # aged: one split re-measures
    meter.forget({"other"})
    assert meter.speed_alongside("me", "", now=3) is None


def test_the_snapshot_carries_this_nodes_speed_beside_peers_and_either_figure_will_do():
    from compute.device import get_preset
    from compute.partition import NodeSlot
    from node.work.jobs import JobManager

    def costs(alone: float | None, beside: float | None):
        class Fake:
            node_id, host = "me", ""
            mesh = _Mesh([_Member("p", None)])
            share_meter = ShareMeter()
            _rtt_s = staticmethod(lambda node: 0.001)
        if alone:
            Fake.share_meter.record("me", "", alone * 1e9, 1.0)
        if beside:
            Fake.share_meter.record("me", "", beside * 1e9, 1.0, alongside=True)
        Fake.share_meter.record("p", "", 60e9, 1.0)
        Fake.share_meter.record_link("p", int(3e8), 1.0)
        slots = [NodeSlot(n, 1.0, 1 << 30, get_preset("ideal")) for n in ("me", "p")]
        got = JobManager._share_costs(Fake(), slots, None)
        return None if got is None else got[0]

    assert costs(100.0, 40.0) == ShareCost("me", 100.0, local=True, alongside_gflops=40.0)
    assert costs(100.0, None) == ShareCost("me", 100.0, local=True)
    # only split jobs so far (the first, by capacity): that figure stands for both
    assert costs(None, 40.0) == ShareCost("me", 40.0, local=True, alongside_gflops=40.0)
    assert costs(None, None) is None


def _planner(alone: float | None, beside: float | None, peer_host: str | None = None,
             peer_gflops: float = 60.0, handover_bps: float = 3e8, jobs: int = 1,
             my_free: int = 1 << 30):
    """``JobManager._oneshot_plan`` on fakes: this node "me" (``my_free`` bytes free) and
    one measured peer "p"; the split and rows of the last of ``jobs`` jobs planned one
    after another without a result in between (as concurrent jobs are)."""
    from compute.device import get_preset
    from compute.partition import NodeSlot
    from node.work.jobs import Job, JobManager

    class Fake:
        node_id, host = "me", "h"
        mesh = _Mesh([_Member("p", peer_host)])
        share_meter = ShareMeter()
        executor = type("E", (), {"workers": 2})()
        _rtt_s = staticmethod(lambda node: 0.0005)
        _share_costs = JobManager._share_costs
        _handover_delay = JobManager._handover_delay
        _alone_unmeasured = JobManager._alone_unmeasured
        _measure_alone = JobManager._measure_alone
        _should_measure_alone = JobManager._should_measure_alone
        _measure_planned_at = -math.inf
    if alone:
        Fake.share_meter.record("me", "", alone * 1e9, 1.0)
    if beside:
        Fake.share_meter.record("me", "", beside * 1e9, 1.0, alongside=True)
    Fake.share_meter.record("p", "", peer_gflops * 1e9, 1.0)
    Fake.share_meter.record_link("p", int(1e9), 1.0)
    Fake.share_meter.record_handover("p", int(handover_bps), 1.0)
    slots = [NodeSlot(n, 1.0, free, get_preset("ideal"))
             for n, free in (("me", my_free), ("p", 1 << 30))]
    planner = Fake()
    for i in range(jobs):
        job = Job(f"j{i}", "matmul")
        plan = JobManager._oneshot_plan(planner, job, (N, N), N, slots, None)
    return job.detail["split"], plan.rows_by_node()


def test_a_job_is_kept_whole_once_to_measure_this_nodes_speed_alone():
    # only split jobs so far (the first by capacity): this one measures the whole job
    split, placed = _planner(None, 50.0)
    assert split["by"] == "measure" and placed == {"me": N}
    # both figures known: the model decides; slower beside the peer, whole pays here
    split, placed = _planner(115.0, 50.0)
    assert split["by"] == "transfer" and placed == {"me": N}
    # between hosts (the same speed beside peers) the peer gets its rows as before
    split, placed = _planner(115.0, 115.0)
    assert split["by"] == "transfer" and placed["p"] > 0
    # a co-host could get no rows anyway: no job is kept whole only to measure
    split, placed = _planner(None, 50.0, peer_host="h")
    assert split["by"] == "transfer" and split["cohosts"] == ["p"]


def test_only_one_of_two_concurrent_jobs_is_kept_whole_to_measure():
    # the second job is planned before the first one's figure is in: it splits as usual
    split, placed = _planner(None, 50.0, jobs=2)
    assert split["by"] == "transfer" and placed["p"] > 0


def test_a_whole_job_this_node_cannot_hold_is_not_kept_to_measure_it():
    # all of A's rows do not fit here (the limit the capacity split enforces), the
    # transfer split's share does: the split is priced as usual instead of falling to the
    # capacity split (which would measure this node beside the peer again and bring every
    # later job back here)
    from compute.device import get_preset
    whole_bytes = get_preset("ideal").resident_bytes((N, N))
    split, placed = _planner(None, 50.0, my_free=int(whole_bytes * 0.8))
    assert split["by"] == "transfer" and 0 < placed["me"] < N and placed["p"] > 0


def test_a_split_predicted_to_save_less_than_the_minimum_gain_keeps_the_job_whole():
    from node.work.oneshotsplit import MIN_SPLIT_GAIN
    whole = N * row_cost(me(), N, N)                          # 172 ms at 100 GFLOP/s
    # moving B takes 150 ms: the peer can take only a few rows before the whole job's end
    slow = peer(link=N * N * 4 / 0.150)
    exact = transfer_split(N, N, N, [me(), slow], min_gain=0.0)
    assert rows(exact)["p"] > 0                               # the bare model splits...
    saved = 1 - max(exact.predicted_s.values()) / whole
    assert 0 < saved < MIN_SPLIT_GAIN                         # ...for a few per cent
    assert transfer_split(N, N, N, [me(), slow]).rows == (("me", N),)
    # a split that clearly pays is kept: the even split of a fast link saves ~half
    assert rows(transfer_split(N, N, N, [me(), peer()]))["p"] > 0
    with pytest.raises(ValueError, match="min_gain"):
        transfer_split(N, N, N, [me(), peer()], min_gain=1.0)


def test_measuring_this_node_alone_is_skipped_when_the_whole_job_would_cost_too_much():
    from node.work.oneshotsplit import MEASURE_ALONE_COST, measuring_alone_affordable
    local = me(100.0)
    even = transfer_split(N, N, N, [local, peer(link=FAST)])        # ~half the whole time
    assert measuring_alone_affordable(even, local, N, N, N)
    many = [local] + [peer(f"p{i}", 100.0, FAST) for i in range(4)]   # ~a fifth of it
    fifth = transfer_split(N, N, N, many)
    whole = N * row_cost(local, N, N)
    assert whole > MEASURE_ALONE_COST * max(fifth.predicted_s.values())
    assert not measuring_alone_affordable(fifth, local, N, N, N)
    # the job manager then splits as the model says instead of keeping the job to measure
    split, placed = _planner(None, 50.0, peer_gflops=1000.0, handover_bps=1e9)
    assert split["by"] == "transfer" and placed["p"] > 0
