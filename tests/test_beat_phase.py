"""One wake-up a period: the SWIM probe on the daemon's beat, at a phase of its own per
daemon (issue 13: idle cost). Pure rules on fake clocks; nothing here sleeps."""

from __future__ import annotations

import asyncio
import math
import random

import pytest

from node.runtime import beat
from node.runtime.beat import next_beat, pick_phase
from protocol.membership import (GRID_SLACK, Ack, Membership, MembershipConfig, MemberState,
                                 Ping)
from tests.gossip_sim import make_advert, node_name


def _membership(phase: float | None, now: float = 1000.0, seed: int = 1,
                peers: int = 1, **cfg) -> Membership:
    m = Membership(make_advert(node_name(0)), MembershipConfig(probe_phase=phase, **cfg),
                   now=now, rng=random.Random(seed))
    m.restore([make_advert(node_name(i)) for i in range(1, peers + 1)], now)
    return m


def _drive(m: Membership, start: float, until: float, late: random.Random,
           lateness: float) -> list[float]:
    """Drive ``m`` like the daemon does: tick each deadline (up to ``lateness`` late,
    as a busy loop fires timers), ack every probe 1 ms later. Returns the deadlines at
    which probes went out."""
    probes: list[float] = []
    now = start
    while True:
        due = m.next_deadline()
        if due > until:
            return probes
        now = max(now, due + lateness * late.random())
        out = m.tick(now)
        for dst, msg in out.sends:
            if isinstance(msg, Ping) and msg.target == dst:
                probes.append(due)
                m.handle(dst, Ack(seq=msg.seq, updates=[]), now + 0.001)


def test_beats_fall_on_the_phase_grid_and_never_drift():
    phase = 0.3721
    t = 5000.0
    beats = []
    for _ in range(10_000):
        t = next_beat(t + 0.004, 1.0, phase)   # every wake-up a few ms late
        beats.append(t)
    ks = [b - phase for b in beats]
    assert all(k == round(k) for k in ks)       # exactly on the grid, the last one too
    assert [round(k) for k in ks] == list(range(5000, 15_000))   # none skipped, none twice
    assert next_beat(100.9, 10.0, 0.25) == 110.25
    assert next_beat(110.2495, 10.0, 0.25) == 120.25   # a hair early: the next one


def test_phases_are_uniform_per_process_and_differ_between_daemons():
    phases = [pick_phase(random.Random(seed)) for seed in range(200)]
    assert all(0.0 <= p < 1.0 for p in phases)
    assert len(set(phases)) == 200
    # spread over the period, not bunched: every tenth of a second holds some
    assert {int(p * 10) for p in phases} == set(range(10))
    assert beat.process_phase() == beat.process_phase()   # drawn once


def test_the_probes_and_the_beat_wake_at_the_same_instants_for_many_periods():
    """The probe schedule is the beat: every probe starts on a beat instant of the
    daemon's phase, one per period, for 2000 periods of timers that fire up to 30 ms
    late, and the last probe is still exactly on the grid (no drift)."""
    phase = 0.6180339
    m = _membership(phase, now=1000.0, peers=3)
    probes = _drive(m, 1000.0, 3000.0, random.Random(7), lateness=0.03)
    beats, t = [], 1000.0
    while (t := next_beat(t, 1.0, phase)) <= 3000.0:
        beats.append(t)
    assert probes == beats                     # the same instants, every one of them
    assert probes[-1] == phase + 2999          # computed afresh: no accumulated error


def test_a_late_tick_keeps_its_next_slot_and_loses_at_most_the_slack_of_its_window():
    m = _membership(0.5, now=100.0)
    first = m.next_deadline()
    assert first == 100.5
    late = first + 0.8 * GRID_SLACK            # a tick late, but within the slack
    out = m.tick(late)
    probe = next(msg for _, msg in out.sends if isinstance(msg, Ping))
    m.handle(node_name(1), Ack(seq=probe.seq, updates=[]), late + 0.001)
    assert m.next_deadline() == 101.5          # the next instant, not 102.5
    m = _membership(0.5, now=100.0)
    very_late = 100.5 + 0.6                    # the loop was stalled 600 ms
    out = m.tick(very_late)
    probe = next(msg for _, msg in out.sends if isinstance(msg, Ping))
    m.handle(node_name(1), Ack(seq=probe.seq, updates=[]), very_late + 0.001)
    # the period is never cut below (1 - GRID_SLACK) of the interval: indirect probes
    # and their nacks need the rest of it
    assert m.next_deadline() == 102.5


def test_two_daemons_on_one_clock_probe_at_their_own_phases():
    """The reverted trial put everyone on the same instants (a shared monotonic clock):
    100 daemons probed at once on 2 cores and acks missed their timeout. With phases
    drawn per daemon, their probes stay apart by the phase difference, period after
    period."""
    a = _drive(_membership(0.12, now=50.0), 50.0, 150.0, random.Random(1), 0.01)
    b = _drive(_membership(0.71, now=50.0), 50.0, 150.0, random.Random(2), 0.01)
    assert len(a) == len(b) == 100
    assert all(math.isclose(y - x, 0.59, abs_tol=1e-9) for x, y in zip(a, b))


def test_the_other_periodic_timers_ride_the_same_instants():
    """Push-pull (every 30 s), reconnect (every 10 s) and a pending advert's publication
    wake at probe instants too, not at instants of their own."""
    phase = 0.42
    m = _membership(phase, now=0.0, peers=2)
    seen: dict[str, list[float]] = {}
    now = 0.0
    while now < 200.0:
        due = m.next_deadline()
        kinds = {kind for when, token, kind, key in m._heap
                 if when == due and m._tokens.get((kind, key)) == token}
        now = due + 0.002
        for kind in kinds:
            seen.setdefault(kind, []).append(due)
        if int(due) == 118:                     # load moved: published at once
            m.update_advert(now, load=0.9)
        if int(due) == 120:                     # a small change: a refresh later
            m.update_advert(now, memory_free=(8 << 30) - 4096)
        for dst, msg in m.tick(now).sends:
            if isinstance(msg, Ping) and msg.target == dst:
                m.handle(dst, Ack(seq=msg.seq, updates=[]), now + 0.001)
    assert {"probe_end", "push_pull", "reconnect", "advert"} <= set(seen)
    for kind, instants in seen.items():
        if kind in ("gossip", "probe_timeout"):
            continue   # news being spread (every 0.2 s) and an unacked probe: not idle
        assert all(abs((t - phase) - round(t - phase)) < 1e-9 for t in instants), kind


def test_without_a_phase_probes_run_as_before():
    m = _membership(None, now=10.0, seed=3)
    first = m.next_deadline()
    assert 10.0 <= first <= 11.0 and (first - 10.0) % 1.0 != 0.0
    out = m.tick(first + 0.013)
    probe = next(msg for _, msg in out.sends if isinstance(msg, Ping))
    m.handle(node_name(1), Ack(seq=probe.seq, updates=[]), first + 0.014)
    assert m.next_deadline() == first + 0.013 + 1.0    # a period from the tick, as before


# ----------------------------------------------------------------- the daemon's side


async def test_the_beat_loops_sleep_to_this_process_phase(monkeypatch):
    """``sleep_to_beat`` and the idle lag ticker wake at ``process_phase() + k``, the
    instants the membership's probes are due at (the daemon passes the same phase)."""
    from node.runtime import looplag

    monkeypatch.setattr(beat, "_phase", 0.25)
    loop = asyncio.get_running_loop()
    monkeypatch.setattr(loop, "time", lambda: 100.9)
    delays: list[float] = []

    async def fake_sleep(delay: float) -> None:
        delays.append(delay)
        if len(delays) >= 2:
            raise asyncio.CancelledError
    monkeypatch.setattr(beat.asyncio, "sleep", fake_sleep)
    await beat.sleep_to_beat(1.0)
    assert math.isclose(100.9 + delays[0], 101.25)
    monkeypatch.setattr(looplag.asyncio, "sleep", fake_sleep)
    monitor = looplag.LagMonitor(linger=0.0)    # idle at once: the slow, beat-bound tick
    with pytest.raises(asyncio.CancelledError):
        await monitor.run()
    assert math.isclose(100.9 + delays[1], 101.25)


async def test_a_daemon_probes_on_its_beat(tmp_path):
    """The wiring: a daemon's membership gets this process's beat phase, so its probe
    and push-pull timers are due on the instants its beat loops sleep to."""
    from tests.inproc import running_daemon

    phase = beat.process_phase()
    async with running_daemon(tmp_path, "a") as d:
        membership = d.mesh.membership
        assert membership.config.probe_phase == phase
        due = {kind: when for when, token, kind, key in membership._heap
               if membership._tokens.get((kind, key)) == token}
        assert {"push_pull", "reconnect"} <= set(due)
        assert "probe" in due or "probe_end" in due
        now = asyncio.get_running_loop().time()
        for kind in ("probe", "probe_end", "push_pull", "reconnect"):
            if kind in due:
                assert due[kind] == next_beat(due[kind] - 0.5, 1.0, phase), kind
                assert due[kind] > now - 1.0


def test_a_timer_that_fires_a_hair_before_its_deadline_runs_its_work_then():
    """uvloop's clock has millisecond ticks: the tick loop's timer can fire with the
    clock a fraction of a millisecond before the deadline. That tick must run the due
    timer, not re-arm for it (a second wake-up 5 ms later)."""
    from nat.connector import ConnectorConfig
    from node.net.mesh import TIMER_GRAIN, Mesh
    from protocol.identity import Identity

    class OneTimer:
        def __init__(self, deadline: float) -> None:
            self.deadline = deadline

        def next_deadline(self) -> float:
            return self.deadline

    mesh = Mesh(Identity.generate(), "a", [], "127.0.0.1:0", [], None, ConnectorConfig())
    mesh.membership = OneTimer(100.5)
    mesh.clock = lambda: 100.5 - TIMER_GRAIN / 3
    assert mesh._tick_time() == 100.5
    mesh.clock = lambda: 100.5 - 2 * TIMER_GRAIN        # genuinely early: now
    assert mesh._tick_time() == 100.5 - 2 * TIMER_GRAIN
    mesh.clock = lambda: 100.7                          # late: now
    assert mesh._tick_time() == 100.7


# ----------------------------------------------------------------- a first RTT sample


def test_an_extra_ping_goes_to_live_members_only_and_decides_nothing():
    m = _membership(0.5, now=10.0, peers=2)
    out = m.ping(node_name(1), 10.0)
    assert len(out.sends) == 1
    dst, msg = out.sends[0]
    assert dst == node_name(1) and isinstance(msg, Ping) and msg.target == dst
    assert m.ping(node_name(0), 10.0).sends == []       # ourselves
    assert m.ping("ffffffff", 10.0).sends == []         # unknown
    health = m.health
    # never acked: no suspicion, no health penalty, at the next probe's end or after
    for _ in range(3):
        out = m.tick(m.next_deadline())
        for d, p in out.sends:
            if isinstance(p, Ping) and p.target == d and p.seq != msg.seq:
                m.handle(d, Ack(seq=p.seq, updates=[]), m.next_deadline())
    assert m.member(node_name(1)).state is MemberState.ALIVE and m.health == health
    m.leave(20.0)
    assert m.ping(node_name(2), 20.0).sends == []       # after leaving: nothing


async def test_a_new_link_gets_an_rtt_sample_before_any_probe_reaches_its_peer():
    """``sedma peers`` showed "-" as a linked peer's RTT until the probes' round robin
    reached it. Two meshes whose probes are ~30 minutes away: once joined, each side's
    link has an RTT from one extra ping each, and no probe was sent."""
    from nat.connector import ConnectorConfig
    from node.net.mesh import Mesh
    from protocol.advert import Advertisement
    from protocol.identity import Identity

    loop = asyncio.get_running_loop()
    far = MembershipConfig(probe_interval=3600.0, probe_timeout=1800.0,
                           probe_phase=(loop.time() + 1800.0) % 3600.0)

    def mesh(name: str, bootstrap: list[str]) -> Mesh:
        ident = Identity.generate()

        async def no_work(_session, _msg) -> None:
            return None
        m = Mesh(ident, name, [], "127.0.0.1:0", bootstrap, no_work, ConnectorConfig(), far)
        m.make = lambda bound: Advertisement(node_id=ident.node_id, name=name,   # noqa
                                             addresses=[f"{bound[0]}:{bound[1]}"])
        return m
    a = mesh("a", [])
    await a.start(a.make)
    b = mesh("b", [f"127.0.0.1:{a.bound[1]}"])
    await b.start(b.make)
    try:
        for _ in range(200):
            links = [m.sessions.get(p) for m, p in ((a, b.node_id), (b, a.node_id))]
            if all(s is not None and s.link.rtt_ms is not None for s in links):
                break
            await asyncio.sleep(0.05)
        assert a.sessions[b.node_id].link.rtt_ms is not None
        assert b.sessions[a.node_id].link.rtt_ms is not None
        for m in (a, b):
            probe = min(when for when, token, kind, key in m.membership._heap
                        if kind in ("probe", "probe_end")
                        and m.membership._tokens.get((kind, key)) == token)
            assert probe - loop.time() > 600                          # no probe yet
            assert m.traffic()["sent"].get("swim.ping") == 1          # the one extra ping
            m._first_rtt(next(iter(m.sessions)))                      # asked again: no
            m.update_advert(load=0.0)
        await asyncio.sleep(0.2)
        assert all(m.traffic()["sent"].get("swim.ping") == 1 for m in (a, b))
    finally:
        await b.stop()
        await a.stop()
