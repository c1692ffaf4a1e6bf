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


# -- event-loop saturation (node/work/loopdemand.py) ------------------------------------

def _small(holders=("a",), rate=60.0, share=0.9, want=1):
    """A small block: 60 req/s x ~1 ms of compute = 6 % busy in compute, cool by busy()."""
    return BlockView("m0", 0, 2 << 20, 0.067 * GB, tuple(holders), rate, -1e9, want, share)


def test_a_small_block_whose_holder_loop_stays_saturated_gains_replicas_up_to_the_cap():
    views = [NodeView(n, 60, load=0.3, free_bytes=1 << 30, loop_busy=0.9) for n in "ab"]
    views += [NodeView(n, 60, load=0.1, free_bytes=1 << 30, loop_busy=0.2) for n in "cde"]
    ns = nodes(*views)
    b = _small()
    assert busy(b, ns) < Policy().cool_busy          # compute alone would call it cool
    (d,) = plan_pass([b], ns, now=0)
    assert (d.kind, d.source) == ("replicate", "a") and "event loop" in d.reason
    assert d.target in "cde"                         # never onto a saturated loop ("b")
    # as long as the holders' loops stay saturated it keeps gaining, up to max_replicas
    ns = nodes(*[NodeView(n, 60, load=0.3, free_bytes=1 << 30, loop_busy=0.9)
                 for n in "abc"], *[NodeView(n, 60, free_bytes=1 << 30, loop_busy=0.2)
                                    for n in "de"])
    (d,) = plan_pass([_small(holders=("a", "b", "c"))], ns, now=0)
    assert d.kind == "replicate" and d.target in "de"
    assert plan_pass([_small(holders=("a", "b", "c", "d"))], ns, now=0) == []   # the cap


def test_a_loop_replica_never_goes_to_a_slow_node():
    ns = nodes(NodeView("a", 60, load=0.3, free_bytes=1 << 30, loop_busy=0.9),
               NodeView("slow", 6, free_bytes=1 << 30, loop_busy=0.1))
    assert plan_pass([_small()], ns, now=0) == []


def test_loop_saturation_counts_only_for_the_block_most_reads_are_for():
    ns = nodes(NodeView("a", 60, load=0.3, free_bytes=1 << 30, loop_busy=0.9),
               NodeView("b", 60, free_bytes=1 << 30, loop_busy=0.1))
    assert plan_pass([_small(share=0.1)], ns, now=0) == []


def test_a_replica_is_not_retired_while_its_requests_would_crowd_the_other_loop():
    p = Policy()
    # two holders at 40 % loop: with one, the block's work lands on one loop (80 %)
    ns = nodes(*[NodeView(n, 60, free_bytes=1 << 30, loop_busy=0.4) for n in "ab"])
    b = _small(holders=("a", "b"), rate=5.0)         # cool in compute: retire would fire
    assert busy(b, ns, 1) < p.cool_busy
    assert plan_pass([b], ns, now=0) == []
    ns = nodes(*[NodeView(n, 60, free_bytes=1 << 30, loop_busy=0.15) for n in "ab"])
    (d,) = plan_pass([b], ns, now=0)                 # really cooled: retired
    assert d.kind == "retire"


def test_loop_rules_do_not_flap_replicate_then_retire_at_the_same_load():
    """Replicate at loop >= loop_hot; the replica's holders then share that work, and
    retiring must predict the remaining loops below loop_cool: the same load never does
    both (a simulated sequence of passes, dwell elapsed each time)."""
    p = Policy()
    demand = 1.6        # loop-seconds per second this block's requests need in all
    holders, kinds = ["a"], []
    for step in range(12):
        per = min(demand / len(holders), 1.0)
        ns = nodes(*[NodeView(n, 60, free_bytes=1 << 30,
                              loop_busy=per if n in holders else 0.05) for n in "abcd"])
        ds = plan_pass([_small(holders=tuple(holders), rate=60.0, share=1.0)], ns,
                       now=step * 1000.0, policy=p)
        for d in ds:
            kinds.append(d.kind)
            if d.kind == "replicate":
                holders.append(d.target)
            elif d.kind == "retire":
                holders.remove(d.source)
    assert kinds == ["replicate", "replicate"], kinds   # 1.6 -> 0.8 -> 0.53, then stable


# -- coordinators' end-to-end speeds as evidence (with_e2e_evidence) --------------------

from node.work.rebalance import E2E_SLOW, with_e2e_evidence  # noqa: E402


def test_a_node_starved_between_computations_is_seen_slow_end_to_end():
    # the figures of the quota probe (bench/README): own 75 GFLOP/s at 5 % of a CPU, while
    # the coordinator learned 0.56 for it against 5-6 for the others
    own = {"me": 60.0, "b": 60.0, "c": 55.0, "q": 75.0}
    e2e = {"me": 9.0, "b": 5.5, "c": 5.0, "q": 0.56}
    speeds = with_e2e_evidence(own, e2e, "me")
    assert speeds["q"] < 60.0 / E2E_SLOW and speeds["b"] == 60.0 and speeds["me"] == 60.0
    ns = nodes(NodeView("q", speeds["q"], free_bytes=0),
               *[NodeView(n, speeds[n], free_bytes=1 << 30) for n in ("me", "b", "c")])
    (d,) = plan_pass([blk(holders=("q",), rate=2.0, flops=2 * GB)], ns, now=0)
    assert (d.kind, d.source) == ("migrate", "q")
    # without the evidence the starved node looked the fastest: nothing moved
    ns_own = nodes(*[NodeView(n, own[n], free_bytes=0 if n == "q" else 1 << 30) for n in own])
    assert plan_pass([blk(holders=("q",), rate=2.0, flops=2 * GB)], ns_own, now=0) == []


def test_too_little_end_to_end_evidence_changes_nothing():
    own = {"me": 60.0, "b": 60.0, "q": 75.0}
    assert with_e2e_evidence(own, {"b": 5.0, "q": 0.5}, "me") == own   # 2 remote: no scale


def _moves_over_noisy_passes(evidence, passes: int = 400) -> int:
    """Four equal nodes, a block on two of them. Every pass, the acting holder (the lower
    id) sees each node's own speed and its end-to-end speed with independent noise of up
    to 1.4x each (equal nodes' figures differ ~2x on a busy machine) and a transfer
    overhead on the end-to-end figures (its own reads have none), measured for the
    holders and for about half of the other nodes; the block's holders change wherever a
    decision says. Returns the migrations made."""
    import random
    rng = random.Random(7)
    holders, moves = ["a", "b"], 0
    for step in range(passes):
        actor = min(holders)
        own = {n: 40.0 * rng.uniform(1 / 1.4, 1.4) for n in "abcd"}
        e2e = {n: 40.0 * (1.0 if n == actor else 0.3) * rng.uniform(1 / 1.4, 1.4)
               for n in "abcd" if n in holders or rng.random() < 0.5}   # as it served us
        speeds = evidence(own, e2e, actor)
        ns = nodes(*[NodeView(n, speeds[n], load=rng.uniform(0, 0.5), free_bytes=1 << 30)
                     for n in "abcd"])
        for d in plan_pass([blk(holders=tuple(holders), rate=5.0, flops=2 * GB, want=2)], ns,
                           now=step * 1000.0):
            if d.kind == "migrate":
                holders[holders.index(d.source)] = d.target
                moves += 1
    return moves


def test_end_to_end_noise_of_equal_nodes_never_moves_a_block_back_and_forth():
    assert _moves_over_noisy_passes(with_e2e_evidence) == 0
    # what the guard prevents: an end-to-end figure wherever one was measured, else the
    # node's own; a holder measured end to end looks slower than a spare that was not
    naive = _moves_over_noisy_passes(lambda own, e2e, me: {n: e2e.get(n, own[n])
                                                           if n != me else own[n] for n in own})
    assert naive > 50


def test_loop_demand_is_the_cpu_fraction_of_the_sampling_thread_smoothed():
    from node.work.loopdemand import ALPHA, LoopDemand
    clock, cpu = [0.0], [0.0]
    meter = LoopDemand(clock=lambda: clock[0], cpu=lambda: cpu[0])
    clock[0], cpu[0] = 1.0, 0.8                 # 80 % of the last second on a CPU
    assert meter.sample() == ALPHA * 0.8
    for i in range(2, 30):
        clock[0], cpu[0] = float(i), cpu[0] + 0.8
        meter.sample()
    assert abs(meter.value - 0.8) < 0.01


def test_a_replica_is_not_retired_while_the_rate_it_was_added_at_holds():
    """Compute times swing on a shared machine: 'cool' by busy() at a rate above the one
    the replica was added at must not retire it (it flapped: replicate, retire, ...)."""
    ns = nodes(NodeView("a", 10, free_bytes=1 << 30), NodeView("b", 10, free_bytes=1 << 30))
    b = blk(holders=("a", "b"), rate=0.1, flops=0.01 * GB)     # 0.01 % busy: cool
    grown = BlockView(*[getattr(b, f) for f in ("name", "index", "nbytes", "flops",
                                                "holders", "rate", "changed_at", "want",
                                                "share")], grown_at_rate=0.2)
    assert plan_pass([grown], ns, now=0) == []                # 0.1 > 0.2 / 4: kept
    fell = BlockView(**{**grown.__dict__, "rate": 0.04})
    assert [d.kind for d in plan_pass([fell], ns, now=0)] == ["retire"]
    assert [d.kind for d in plan_pass([b], ns, now=0)] == ["retire"]   # unknown: busy rule


def test_a_kept_replica_says_which_rule_keeps_it():
    from node.work.rebalance import retire_withheld
    ns = nodes(*[NodeView(n, 10, free_bytes=1 << 30) for n in "ab"])
    assert retire_withheld(blk(holders=("a", "b"), rate=0.1, flops=0.01 * GB), ns) == ""
    assert retire_withheld(blk(holders=("a",), rate=0.1), ns) == ""       # nothing extra
    assert "repair first" in retire_withheld(blk(holders=("a", "gone"), rate=0.1), ns)
    assert "busy in compute" in retire_withheld(blk(holders=("a", "b"), rate=5.0), ns)
    loops = nodes(*[NodeView(n, 60, free_bytes=1 << 30, loop_busy=0.4) for n in "ab"])
    assert "event loops" in retire_withheld(_small(holders=("a", "b"), rate=5.0), loops)
    grown = BlockView("w", 0, 1 << 20, 0.01 * GB, ("a", "b"), 0.1, -1e9, 1, 0.0, 0.2)
    assert "has not fallen" in retire_withheld(grown, ns)


# -- the rate a replica was added at, kept with the decision (grown_rates) --------------

from node.work.rebalance import Decision, grown_rates  # noqa: E402


def _decided(kind, name="w", index=0, rate=8.0, at=100.0):
    return Decision(kind, name, index, "a", "b", "why", 0.5, 0.1, at, rate).to_dict()


def test_a_replicate_decision_carries_the_rate_it_was_made_at():
    ns = nodes(NodeView("a", 10, load=0.9, free_bytes=1 << 30),
               NodeView("b", 10, load=0.1, free_bytes=1 << 30))
    (d,) = plan_pass([blk(rate=8.0)], ns, now=0)
    assert d.kind == "replicate" and d.rate == 8.0 and d.to_dict()["rate"] == 8.0


def test_the_growth_rate_is_the_last_replicate_of_each_block_of_the_current_deployment():
    log = [_decided("replicate", rate=20.0, at=10.0),        # an earlier deployment of w
           _decided("replicate", rate=8.0, at=110.0),
           _decided("replicate", rate=12.0, at=120.0),       # the last replica: this one
           _decided("retire", rate=1.0, at=130.0),           # retiring changes nothing
           _decided("migrate", index=1, rate=5.0, at=140.0),
           _decided("replicate", name="v", rate=3.0, at=150.0),
           _decided("replicate", name="v", index=2, rate=float("nan")),   # damaged
           {"kind": "replicate", "name": "v", "index": 3, "at": 1.0}]     # before rates
    assert grown_rates(log, {"w": 100.0}) == {("w", 0): 12.0, ("v", 0): 3.0}


def test_the_growth_rate_survives_a_restart_in_the_persisted_decision_log(tmp_path):
    """The daemon's feed: the reconfigurer reads the rate back from its dual memory's
    decision log, which is saved in the state database (a restart keeps it)."""
    from types import SimpleNamespace

    from compute.partition import Block, PartitionPlan
    from node.memory.dualmemory import DualMemory
    from node.work.plans import VersionedPlan, new_deploy_id
    from node.work.reconfigure import Reconfigurer, deployed_at
    from tests.restarted_memory import restarted as reloaded

    deploy = new_deploy_id("n1", now_ns=50 * 10**9)
    assert deployed_at(deploy) == 50.0 and deployed_at("") == -math.inf
    mem = DualMemory()
    mem.record_decision(_decided("replicate", rate=9.5, at=60.0) | {"measured_after": None})
    restarted = reloaded(mem, tmp_path / "state.db")
    plan = VersionedPlan(PartitionPlan((128, 4), None, [Block(0, 0, 128, ["a", "b"])]),
                         deploy)
    plans = SimpleNamespace(names=lambda: ["w"], versioned=lambda name: plan)
    jobs = SimpleNamespace(plans=plans, memory=restarted)
    assert Reconfigurer(jobs)._grown_rates() == {("w", 0): 9.5}
    later = VersionedPlan(plan.plan, new_deploy_id("n1", now_ns=70 * 10**9))
    plans.versioned = lambda name: later                    # w deployed again since
    assert Reconfigurer(jobs)._grown_rates() == {}
