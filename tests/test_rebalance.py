"""Reconfiguration decisions over snapshots: replicate hot blocks, retire cooled replicas,
migrate off slow holders only when it pays, and never thrash (deterministic simulator)."""

import math

from node.work.placement import by_predicted_finish
from node.work.rebalance import (BlockView, NodeView, Policy, busy, migration_bound,
                                 plan_pass)

GB = 1e9


def nodes(*views):
    return {v.node_id: v for v in views}


def blk(name="w", idx=0, holders=("a",), rate=1.0, flops=1 * GB, changed=-1e9, want=1,
        nbytes=64 << 20):
    return BlockView(name, idx, nbytes, flops, tuple(holders), rate, changed, want)


def test_a_hot_block_gains_a_replica_on_the_fastest_node_with_room():
    ns = nodes(NodeView("a", 10, load=0.9, free_bytes=1 << 30),
               NodeView("b", 10, load=0.1, free_bytes=1 << 30),
               NodeView("c", 20, load=0.1, free_bytes=0),            # fast but full
               NodeView("d", 10, load=0.1, free_bytes=1 << 30, relayed=True))
    hot = blk(rate=8.0)                         # 8 req/s x 0.1 s = 80 % of a
    (d,) = plan_pass([hot], ns, now=0)
    assert (d.kind, d.source, d.target) == ("replicate", "a", "b")
    assert d.predicted_gain > 0.3 and "busy" in d.reason


def test_a_busy_block_on_idle_holders_is_not_replicated():
    ns = nodes(NodeView("a", 10, load=0.1, free_bytes=1 << 30),
               NodeView("b", 10, load=0.1, free_bytes=1 << 30))
    assert plan_pass([blk(rate=8.0)], ns, now=0) == []


def test_cooled_extra_replicas_are_retired_but_never_below_the_deployed_count():
    ns = nodes(NodeView("a", 10, free_bytes=1 << 30), NodeView("b", 5, free_bytes=1 << 30),
               NodeView("c", 10, free_bytes=1 << 30))
    (d,) = plan_pass([blk(holders=("a", "b", "c"), rate=0.1, want=2)], ns, now=0)
    assert (d.kind, d.source) == ("retire", "b")          # the slowest goes
    assert plan_pass([blk(holders=("a", "b"), rate=0.1, want=2)], ns, now=0) == []


def test_hysteresis_gap_a_replicated_block_is_not_retired_at_the_same_rate():
    p = Policy()
    ns = nodes(NodeView("a", 10, load=0.9, free_bytes=1 << 30),
               NodeView("b", 10, load=0.9, free_bytes=1 << 30),
               NodeView("c", 10, load=0.1, free_bytes=1 << 30))
    b = blk(holders=("a", "b"), rate=2 * p.hot_busy * 10 + 1)   # just over hot with 2
    (d,) = plan_pass([b], ns, now=0)
    assert d.kind == "replicate"
    after = blk(holders=("a", "b", "c"), rate=b.rate, want=1)
    assert busy(after, ns, 2) > p.cool_busy
    assert all(x.kind != "retire" for x in plan_pass([after], ns, now=0))


def test_a_slow_holder_loses_its_block_when_the_saving_beats_the_copy_cost():
    ns = nodes(NodeView("slow", 1, free_bytes=1 << 30, link_bps=100e6),
               NodeView("fast", 10, free_bytes=1 << 30, link_bps=100e6))
    (d,) = plan_pass([blk(holders=("slow",), rate=0.5)], ns, now=0)
    assert (d.kind, d.source, d.target) == ("migrate", "slow", "fast")
    assert d.predicted_gain > 2 * d.cost_s and "slow" in d.reason


def test_no_migration_when_the_block_is_too_cold_to_repay_the_copy():
    ns = nodes(NodeView("slow", 1, free_bytes=1 << 40, link_bps=1e6),
               NodeView("fast", 10, free_bytes=1 << 40, link_bps=1e6))
    huge = blk(holders=("slow",), rate=0.001, nbytes=1 << 30)    # 1 GiB over 1 MB/s
    assert plan_pass([huge], ns, now=0) == []


def test_small_speed_differences_and_recent_moves_do_not_trigger_migration():
    ns = nodes(NodeView("a", 7, free_bytes=1 << 30), NodeView("b", 10, free_bytes=1 << 30))
    assert plan_pass([blk(holders=("a",), rate=5)], ns, now=0) == []        # 0.7x: not slow
    ns = nodes(NodeView("a", 1, free_bytes=1 << 30), NodeView("b", 10, free_bytes=1 << 30))
    assert plan_pass([blk(holders=("a",), rate=5, changed=-10)], ns, now=0) == []  # dwell


def test_relayed_holder_moves_to_a_direct_one():
    ns = nodes(NodeView("r", 10, relayed=True, free_bytes=1 << 30),
               NodeView("d", 10, free_bytes=1 << 30))
    (d,) = plan_pass([blk(holders=("r",), rate=1)], ns, now=0)
    assert d.kind == "migrate" and "relay" in d.reason


def test_requests_spread_by_predicted_finish_time():
    speeds = {"a": 10.0, "b": 5.0}
    assert by_predicted_finish(["a", "b"], speeds, {}, GB) == ["a", "b"]
    assert by_predicted_finish(["a", "b"], speeds, {"a": 2}, GB) == ["b", "a"]  # 3x0.1 > 0.2
    assert by_predicted_finish(["a", "b"], speeds, {"a": 1}, GB) == ["a", "b"]  # tie: primary


# -- deterministic simulator -----------------------------------------------------------

def simulate(loads, speeds, placement, seconds, policy, control=30.0, consolidate=10.0,
             alpha=0.3, adaptive=True, flops=GB, nbytes=64 << 20, link=100e6):
    """Closed-loop requests that read every block; returns (requests served, moves).

    Each second the raw load of each node comes from ``loads(node, t)``; the long-term
    load the policy sees is the dual memory's EWMA, folded every ``consolidate`` seconds.
    A request takes the slowest block's service time; a migration's copy makes its source
    serve at half speed for the copy time (copy-then-switch keeps serving).
    """
    holders = {k: list(v) for k, v in placement.items()}
    changed = {k: -1e9 for k in holders}
    ewma = {n: 0.0 for n in speeds}
    copying: dict[str, float] = {}
    served, moves = 0.0, 0
    for t in range(int(seconds)):
        raw = {n: loads(n, t) for n in speeds}
        if t % consolidate == 0:
            ewma = {n: (1 - alpha) * ewma[n] + alpha * raw[n] for n in speeds}

        def eff(n):
            s = speeds[n] / (1 + raw[n])
            return s / 2 if copying.get(n, -1) > t else s
        latency = max(min(flops / (eff(h) * GB) for h in hs) for hs in holders.values())
        served += 1.0 / latency
        if adaptive and t % control == 0 and t:
            rate = 1.0 / latency
            view = {n: NodeView(n, speeds[n], ewma[n], 1 << 40, False, link) for n in speeds}
            blocks = [BlockView("w", k, nbytes, flops, tuple(holders[k]), rate, changed[k])
                      for k in holders]
            for d in plan_pass(blocks, view, t, policy):
                if d.kind == "migrate":
                    hs = holders[d.index]
                    hs[hs.index(d.source)] = d.target
                    changed[d.index] = t
                    copying[d.source] = t + d.cost_s
                    moves += 1
    return served, moves


def test_oscillating_load_near_the_control_interval_keeps_migrations_bounded():
    """Loads of a and b swap every 15 s (period 30 s = the control interval) for 10 min.

    Bound: with min_dwell_s=120, each of the 4 blocks can change holders at most
    floor(600/120)+1 = 6 times, 24 in all; and throughput must not fall below static.
    """
    policy = Policy()
    speeds = {"a": 10.0, "b": 10.0, "c": 10.0, "d": 10.0}

    def loads(n, t):
        phase = (t // 15) % 2
        return {"a": 3.0 * phase, "b": 3.0 * (1 - phase)}.get(n, 0.0)
    placement = {0: ["a"], 1: ["b"], 2: ["a"], 3: ["b"]}
    static, _ = simulate(loads, speeds, placement, 600, policy, adaptive=False)
    adaptive, moves = simulate(loads, speeds, placement, 600, policy)
    bound = migration_bound(4, 600, policy)
    assert bound == 24
    assert moves <= bound
    assert adaptive >= static


def test_a_node_that_stays_slow_loses_its_blocks_and_throughput_rises():
    speeds = {"a": 10.0, "b": 10.0, "c": 10.0, "slow": 2.0}
    placement = {0: ["a"], 1: ["b"], 2: ["c"], 3: ["slow"]}
    static, _ = simulate(lambda n, t: 0.0, speeds, placement, 600, Policy(), adaptive=False)
    adaptive, moves = simulate(lambda n, t: 0.0, speeds, placement, 600, Policy())
    assert 1 <= moves <= 2
    assert adaptive >= 1.5 * static


def test_bound_formula():
    assert migration_bound(1, 0) == 1
    assert migration_bound(3, 600, Policy(min_dwell_s=60)) == 3 * 11
    assert math.isfinite(busy(blk(holders=()), {}))


def test_a_hot_block_may_gain_replicas_sooner_than_it_may_move():
    p = Policy()
    ns = nodes(NodeView("a", 10, load=0.9, free_bytes=1 << 30),
               NodeView("b", 10, load=0.9, free_bytes=1 << 30),
               NodeView("c", 10, load=0.1, free_bytes=1 << 30),
               NodeView("slow", 1, load=0.1, free_bytes=1 << 30))
    hot = blk(holders=("a", "b"), rate=20, changed=-(p.replicate_dwell_s + 1))
    (d,) = plan_pass([hot], ns, now=0)
    assert d.kind == "replicate"
    young = blk(holders=("a", "b"), rate=20, changed=-(p.replicate_dwell_s - 1))
    assert plan_pass([young], ns, now=0) == []
    slow_young = blk(holders=("slow",), rate=1, changed=-(p.replicate_dwell_s + 1))
    assert plan_pass([slow_young], ns, now=0) == []        # no migration before min_dwell_s


def test_a_busy_small_block_on_an_overloaded_holder_is_replicated_not_moved():
    """A 90 %-of-requests block whose compute is small (20 % busy) on a holder overloaded
    by the per-request work: moving it would move the load with it, a replica splits it.
    A cold block on the same holder may still move away."""
    ns = nodes(NodeView("a", 10, load=2.0, free_bytes=1 << 30),
               NodeView("b", 10, load=0.3, free_bytes=1 << 30),
               NodeView("c", 10, load=0.3, free_bytes=1 << 30))
    hot = blk(rate=2.0)                                  # 2 req/s x 0.1 s = 20 % busy
    (d,) = plan_pass([hot], ns, now=0)
    assert (d.kind, d.source) == ("replicate", "a") and "overloaded" in d.reason
    cold = blk(idx=1, rate=0.1)                          # 1 % busy: not worth a replica
    (d,) = plan_pass([cold], ns, now=0)
    assert (d.kind, d.source) == ("migrate", "a") and "overloaded" in d.reason
