"""Whole-cluster behaviour in the deterministic simulator (virtual time, default config).

Measured numbers are printed to the terminal (``capsys.disabled``) so a plain
``pytest -q`` run shows them; assertions use bounds derived from the protocol parameters.
"""

from __future__ import annotations

import math

import pytest

from protocol.membership import MembershipConfig, MemberState
from tests.gossip_sim import NetConfig, Simulator, node_name

CFG = MembershipConfig()
DEAD_OR_GONE = (MemberState.DEAD, None)  # None: the dead record was already reclaimed


def report(capsys, text: str) -> None:
    with capsys.disabled():
        print(f"\n[gossip-sim] {text}")


def min_suspicion(n: int) -> float:
    return CFG.suspicion_mult * max(1.0, math.log10(n)) * CFG.probe_interval


@pytest.mark.parametrize("n", [10, 100, 1000])
def test_advert_change_reaches_every_node_in_log_n_periods(n, capsys):
    sim = Simulator(n, seed=n, net=NetConfig(loss=0.01))
    sim.run_for(5.0)
    subject = node_name(n // 2)
    informed: set[str] = set()

    def hook(now, observer, ev):
        if ev.node_id == subject and ev.kind == "advert" and ev.member.advert.load == 42.0:
            informed.add(observer)
    sim.hooks.append(hook)
    start = sim.now
    sim.route(subject, sim.nodes[subject].update_advert(start, load=42.0))
    done = sim.run_until_true(lambda: len(informed) == n - 1, timeout=60.0, step=0.05)
    assert done is not None, f"only {len(informed)}/{n - 1} nodes got the advert"
    periods = (done - start) / CFG.probe_interval
    report(capsys, f"advert convergence N={n}: {periods:.2f} protocol periods "
                   f"(bound log2(N) = {math.log2(n):.1f})")
    assert periods <= math.log2(n)
    assert all(sim.nodes[o].member(subject).advert.load == 42.0 for o in sim.up)


def _crash_detection(sim: "Simulator", n: int, capsys, label: str) -> None:
    """Crash a node after 5 s: every live node declares it dead within SWIM's bound, none
    before the least suspicion time, and nobody else dies."""
    sim.run_for(5.0)
    victim = node_name(3)
    sim.crash(victim)
    start = sim.now
    bound = CFG.suspicion_max_timeout_mult * min_suspicion(n) + 5 * CFG.probe_interval
    done = sim.run_until_true(lambda: sim.all_see(victim, DEAD_OR_GONE), timeout=bound,
                              step=0.25)
    assert done is not None, "some live node never declared the crashed node dead"
    report(capsys, f"crash detection{label}, N={n}: dead everywhere after "
                   f"{done - start:.1f} s (min suspicion {min_suspicion(n):.1f} s, "
                   f"bound {bound:.0f} s)")
    assert done - start >= min_suspicion(n)  # nobody jumped the gun
    assert sim.false_deaths == []


@pytest.mark.parametrize("n", [10, 100, 1000])
def test_crashed_node_is_declared_dead_by_every_live_node(n, capsys):
    _crash_detection(Simulator(n, seed=100 + n, net=NetConfig(loss=0.01)), n, capsys, "")


def test_ten_percent_loss_for_ten_minutes_kills_nobody(capsys):
    sim = Simulator(50, seed=7, net=NetConfig(loss=0.10))
    suspicions: list[tuple[str, int]] = []  # (subject, incarnation) per observer
    sim.hooks.append(lambda now, o, ev: suspicions.append((ev.node_id, ev.member.incarnation))
                     if ev.kind == "suspect" else None)
    sim.run_for(600.0)
    report(capsys, f"10% loss, N=50, 600 s: {len(set(suspicions))} suspicions "
                   f"({len(suspicions)} suspect events), none ended in death; "
                   f"{sim.stats.messages} messages")
    assert sim.false_deaths == []
    assert suspicions, "with 10% loss some probes must fail; the test would prove nothing"
    # at any instant a few suspicions are pending, but everyone is still a live member
    live = (MemberState.ALIVE, MemberState.SUSPECT)
    assert all(sim.all_see(x, live) for x in sim.up)


def test_partition_for_a_minute_then_heal_reconverges(capsys):
    n = 40
    sim = Simulator(n, seed=11, net=NetConfig(loss=0.01))
    sim.run_for(5.0)
    ids = sim.ids()
    left, right = ids[: n // 2], ids[n // 2:]
    sim.partition([left, right])
    sim.run_for(60.0)
    # the halves really did give up on each other
    assert all(sim.state_of(a, b) in DEAD_OR_GONE for a in left for b in right)
    assert all(sim.state_of(b, a) in DEAD_OR_GONE for a in left for b in right)
    sim.false_deaths.clear()  # deaths across the cut were correct verdicts
    sim.heal()
    start = sim.now
    done = sim.run_until_true(sim.converged, timeout=120.0, step=0.5)
    assert done is not None, "membership did not reconverge after the partition healed"
    report(capsys, f"partition N={n} healed: all alive everywhere after {done - start:.1f} s")
    sim.run_for(30.0)
    assert sim.converged() and sim.false_deaths == []


@pytest.mark.parametrize("downtime", [3.0, 40.0])
def test_mass_restart_leaves_nobody_dead(downtime, capsys):
    n = 30
    sim = Simulator(n, seed=int(downtime), net=NetConfig(loss=0.01))
    sim.run_for(5.0)
    ids = sim.ids()
    restarted = ids[: 2 * n // 3]
    for node_id in restarted:
        sim.crash(node_id)
    sim.run_for(downtime)
    if downtime > 30:
        survivors = ids[2 * n // 3:]
        assert all(sim.state_of(s, r) in DEAD_OR_GONE for s in survivors for r in restarted)
    # the first rejoins through a survivor, every other one through a fresh restarted node
    # that knows nothing of the old incarnations: the case memberlist gets stuck on
    survivor = ids[-1]
    for k, node_id in enumerate(restarted):
        sim.add_node(node_id, restarted[k - 1] if k else survivor)
        sim.run_for(0.05)
    start = sim.now
    sim.false_deaths.clear()
    done = sim.run_until_true(sim.converged, timeout=120.0, step=0.5)
    assert done is not None, "some restarted member stayed dead somewhere"
    report(capsys, f"mass restart of {len(restarted)}/{n} after {downtime:.0f} s down: "
                   f"all alive everywhere after {done - start:.1f} s")
    sim.run_for(60.0)
    assert sim.converged()


def test_cold_join_through_one_seed_converges(capsys):
    n = 50
    sim = Simulator(1, seed=5, warm=False)
    for i in range(1, n):
        sim.add_node(node_name(i), node_name(0))
        sim.run_for(0.1)
    start = sim.now
    done = sim.run_until_true(sim.converged, timeout=60.0)
    assert done is not None
    report(capsys, f"cold join N={n} via one seed: converged {done - start:.1f} s after the last join")


def test_chain_join_converges_by_gossip_and_push_pull():
    n = 20
    sim = Simulator(1, seed=6, warm=False)
    for i in range(1, n):
        sim.add_node(node_name(i), node_name(i - 1))
        sim.run_for(0.5)
    assert sim.run_until_true(sim.converged, timeout=60.0) is not None


def test_graceful_leave_is_left_everywhere_never_dead():
    sim = Simulator(30, seed=8, net=NetConfig(loss=0.01))
    sim.run_for(5.0)
    leaver = node_name(4)
    seen: dict[str, list[str]] = {}
    sim.hooks.append(lambda now, o, ev: seen.setdefault(o, []).append(ev.kind)
                     if ev.node_id == leaver else None)
    sim.route(leaver, sim.nodes[leaver].leave(sim.now))
    sim.run_for(0.5)
    sim.crash(leaver)  # the daemon shuts down right after leaving
    sim.run_for(60.0)
    assert set(seen) == set(sim.up)
    assert all(kinds == ["left"] for kinds in seen.values())


def test_messages_survive_the_wire_codec():
    sim = Simulator(1, seed=9, wire=True, net=NetConfig(loss=0.02))
    for i in range(1, 12):
        sim.add_node(node_name(i), node_name(0))
    assert sim.run_until_true(sim.converged, timeout=30.0) is not None
    sim.route(node_name(2), sim.nodes[node_name(2)].update_advert(sim.now, load=9.0))
    sim.crash(node_name(5))
    sim.run_for(60.0)
    assert sim.all_see(node_name(5), DEAD_OR_GONE)
    assert all(sim.nodes[o].member(node_name(2)).advert.load == 9.0 for o in sim.up)
    assert {"swim.ping", "swim.ack", "swim.gossip", "swim.push_pull"} <= set(sim.stats.by_type)


def _false_suspicions_by_slow_node(awareness_max: int) -> int:
    cfg = MembershipConfig(awareness_max_multiplier=awareness_max)
    sim = Simulator(20, seed=12, config=cfg)
    slow = node_name(0)
    sim.slow[slow] = 0.6  # 1.2 s extra round trip: acks come after the 1 s probe period
    count = [0]

    def hook(now, observer, ev):
        if observer == slow and ev.kind == "suspect":
            count[0] += 1
    sim.hooks.append(hook)
    sim.run_for(120.0)
    return count[0]


def test_lifeguard_slow_node_raises_fewer_false_suspicions(capsys):
    without = _false_suspicions_by_slow_node(awareness_max=1)  # score pinned at 0
    with_lg = _false_suspicions_by_slow_node(awareness_max=8)
    report(capsys, f"slow node (1.2 s extra RTT), 120 s: {without} false suspicions without "
                   f"Lifeguard, {with_lg} with")
    assert without > 10
    assert with_lg < without / 2


def test_simulation_is_deterministic():
    def run():
        sim = Simulator(30, seed=4, net=NetConfig(loss=0.05))
        sim.crash(node_name(1))
        sim.run_for(30.0)
        return sim.stats.messages, sorted(sim.false_deaths), [
            (o, sim.state_of(o, node_name(1))) for o in sorted(sim.up)]
    assert run() == run()


# ------------------------------------------- probes on each daemon's beat (issue 13)
# The daemons put their probes on their beat: instants phase + k * probe_interval, the
# phase drawn per daemon, and their timers fire late when the loop is busy. Failure
# detection must be what it was: crash detection within the same bounds, no false deaths
# under loss, Lifeguard still damping a slow node, one probe per period.

BUSY = NetConfig(loss=0.01, tick_lateness=0.03)


@pytest.mark.parametrize("n", [10, 100])
def test_phased_probes_declare_a_crashed_node_dead_within_the_same_bounds(n, capsys):
    _crash_detection(Simulator(n, seed=300 + n, net=BUSY, phased=True), n, capsys,
                     ", phased probes")


def test_phased_probes_under_ten_percent_loss_kill_nobody_and_keep_the_probe_rate(capsys):
    n = 50
    sim = Simulator(n, seed=17, net=NetConfig(loss=0.10, tick_lateness=0.03), phased=True)
    sim.run_for(300.0)
    pings = sim.stats.by_type["swim.ping"]
    report(capsys, f"10% loss, phased probes, N={n}, 300 s: {pings / n / 300:.2f} pings "
                   f"per node a second, no false deaths")
    assert sim.false_deaths == []
    live = (MemberState.ALIVE, MemberState.SUSPECT)
    assert all(sim.all_see(x, live) for x in sim.up)
    # one probe a period each (plus last-chance pings and relayed ones), none skipped
    assert 0.95 <= pings / n / 300 <= 1.6


def test_phased_probes_keep_lifeguard_working_for_a_slow_node():
    def suspicions(awareness_max: int) -> int:
        cfg = MembershipConfig(awareness_max_multiplier=awareness_max)
        sim = Simulator(20, seed=12, config=cfg, phased=True,
                        net=NetConfig(tick_lateness=0.03))
        slow = node_name(0)
        sim.slow[slow] = 0.6
        count = [0]
        sim.hooks.append(lambda now, o, ev: count.__setitem__(0, count[0] + 1)
                         if o == slow and ev.kind == "suspect" else None)
        sim.run_for(120.0)
        return count[0]
    without, with_lg = suspicions(1), suspicions(8)
    assert without > 10 and with_lg < without / 2
