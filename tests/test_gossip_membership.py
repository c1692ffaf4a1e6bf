"""Unit tests of the SWIM state machine, driven call by call (no simulator clock)."""

from __future__ import annotations

import random
from collections import deque

import pytest

from protocol.advert import Advertisement
from protocol.errors import DecodeError
from protocol.membership import (Ack, Event, Gossip, Membership, MembershipConfig,
                                 MemberState, Nack, Output, Ping, PingReq, PushPull,
                                 is_gossip_message, push_pull_scale)
from protocol.messages import decode_message, encode_message


def adv(node_id: str, **kw) -> Advertisement:
    return Advertisement(node_id=node_id, name=node_id, addresses=[f"{node_id}:1"], **kw)


def make(node_id: str, now: float = 0.0, seed: int = 1, **cfg) -> Membership:
    return Membership(adv(node_id), MembershipConfig(**cfg), now=now, rng=random.Random(seed))


def mesh(*ids: str, **cfg) -> dict[str, Membership]:
    """Nodes that already know each other (as after a join)."""
    nodes = {i: make(i, seed=k, **cfg) for k, i in enumerate(ids)}
    for i, n in nodes.items():
        n.restore([adv(j) for j in ids if j != i], 0.0)
    return nodes


class Net:
    """Delivers outputs instantly between nodes, dropping whatever is cut; records events."""

    def __init__(self, nodes: dict[str, Membership]) -> None:
        self.nodes = nodes
        self.cut: set[str] = set()  # nodes that neither send nor receive
        self.events: list[tuple[str, Event]] = []
        self.sent: list[tuple[str, str, object]] = []

    def run(self, origin: str, out: Output, now: float) -> None:
        work = deque([(origin, out)])
        for _ in range(10_000):
            if not work:
                return
            src, o = work.popleft()
            self.events += [(src, e) for e in o.events]
            for dest, msg in o.sends:
                self.sent.append((src, dest, msg))
                if dest in self.cut or src in self.cut or dest not in self.nodes:
                    continue
                work.append((dest, self.nodes[dest].handle(src, msg, now)))
        raise AssertionError("message storm")

    def tick_all(self, now: float) -> None:
        for i, n in self.nodes.items():
            if i not in self.cut:
                self.run(i, n.tick(now), now)

    def advance(self, start: float, end: float, step: float = 0.05) -> None:
        for k in range(int(round((end - start) / step)) + 1):
            self.tick_all(start + k * step)

    def kinds(self, observer: str, subject: str) -> list[str]:
        return [e.kind for o, e in self.events if o == observer and e.node_id == subject]


def test_join_by_push_pull_teaches_both_sides():
    a, b = make("a"), make("b", seed=2)
    out = a.seed("b", None, 0.0)
    assert [type(m) for _, m in out.sends] == [PushPull]
    net = Net({"a": a, "b": b})
    net.run("a", out, 0.0)
    assert a.member("b").state is MemberState.ALIVE
    assert b.member("a").state is MemberState.ALIVE
    assert net.kinds("a", "b") == ["joined"] and net.kinds("b", "a") == ["joined"]
    assert sorted(a.alive_ids()) == ["a", "b"]


def test_probe_is_acked_and_nobody_is_suspected():
    nodes = mesh("a", "b")
    net = Net(nodes)
    net.advance(0.0, 5.0)
    pings = [m for s, d, m in net.sent if s == "a" and isinstance(m, Ping)]
    acks = [m for s, d, m in net.sent if s == "b" and isinstance(m, Ack)]
    assert len(pings) >= 4 and {p.seq for p in pings} <= {a.seq for a in acks}
    assert nodes["a"].member("b").state is MemberState.ALIVE
    assert not any(e.kind == "suspect" for _, e in net.events)


def test_indirect_probe_saves_a_target_we_cannot_reach_directly():
    nodes = mesh("a", "b", "c", "d", "e")
    net = Net(nodes)
    real_run = net.run

    def run(origin, out, now):  # drop a's direct pings to b only
        out.sends[:] = [(d, m) for d, m in out.sends
                        if not (origin == "a" and d == "b" and isinstance(m, Ping))]
        real_run(origin, out, now)
    net.run = run
    net.advance(0.0, 12.0)
    assert any(s == "a" and d != "b" and isinstance(m, PingReq) and m.target == "b"
               for s, d, m in net.sent)
    assert nodes["a"].member("b").state is MemberState.ALIVE
    assert "suspect" not in net.kinds("a", "b")


def test_unanswered_probe_leads_to_suspect_then_dead():
    nodes = mesh("a", "b", "c", "d", "e")
    net = Net(nodes)
    net.cut.add("b")
    net.advance(0.0, 60.0, step=0.1)
    for o in "acde":
        assert nodes[o].member("b").state is MemberState.DEAD
        assert net.kinds(o, "b")[-1] == "dead"
    assert "suspect" in [k for o in "acde" for k in net.kinds(o, "b")]


def test_suspected_node_refutes_with_higher_incarnation():
    nodes = mesh("a", "b")
    a, b = nodes["a"], nodes["b"]
    out = b.handle("a", Gossip(updates=[["s", "b", 0, "a", None]]), 1.0)
    assert b.incarnation == 1
    refutes = [m for d, m in out.sends if d == "a" and isinstance(m, Gossip)]
    assert refutes and refutes[0].updates[0][:3] == ["a", "b", 1]
    # a had suspected b; the refutation brings it back
    a.handle("c", Gossip(updates=[["s", "b", 0, "c", None]]), 1.0)
    assert a.member("b").state is MemberState.SUSPECT
    got = a.handle("b", refutes[0], 1.1)
    assert a.member("b").state is MemberState.ALIVE and a.member("b").incarnation == 1
    assert [e.kind for e in got.events] == ["alive"]


def test_stale_suspicion_is_ignored_after_refutation():
    nodes = mesh("a", "b")
    a = nodes["a"]
    a.handle("b", Gossip(updates=[["a", "b", 3, None, adv("b").to_dict()]]), 0.0)
    out = a.handle("c", Gossip(updates=[["s", "b", 2, "c", None]]), 0.1)
    assert a.member("b").state is MemberState.ALIVE and not out.events


def test_leave_is_reported_as_left_not_dead():
    nodes = mesh("a", "b", "c")
    net = Net(nodes)
    out = nodes["b"].leave(1.0)
    assert {d for d, _ in out.sends} == {"a", "c"}
    net.run("b", out, 1.0)
    net.cut.add("b")
    net.advance(1.0, 90.0, step=0.1)
    for o in "ac":
        kinds = net.kinds(o, "b")
        assert kinds[0] == "left" and "dead" not in kinds and "suspect" not in kinds


def test_left_node_does_not_refute_its_leave():
    b = mesh("a", "b")["b"]
    b.leave(1.0)
    out = b.handle("a", Gossip(updates=[["l", "b", 0, "b", None]]), 1.1)
    assert b.incarnation == 0 and not out.sends


def test_newer_advert_version_wins_and_older_is_ignored():
    a = mesh("a", "b")["a"]
    new = adv("b", load=5.0, version=3).to_dict()
    out = a.handle("b", Gossip(updates=[["a", "b", 0, None, new]]), 1.0)
    assert [e.kind for e in out.events] == ["advert"]
    assert a.member("b").advert.load == 5.0
    old = adv("b", load=1.0, version=2).to_dict()
    out = a.handle("c", Gossip(updates=[["a", "b", 0, None, old]]), 2.0)
    assert not out.events and a.member("b").advert.version == 3


def test_higher_incarnation_carries_its_advert_even_with_lower_version():
    a = mesh("a", "b")["a"]
    a.handle("b", Gossip(updates=[["a", "b", 0, None, adv("b", version=9).to_dict()]]), 1.0)
    a.handle("b", Gossip(updates=[["a", "b", 1, None, adv("b", version=0).to_dict()]]), 2.0)
    assert a.member("b").incarnation == 1 and a.member("b").advert.version == 0


def test_dead_record_expires_after_reclaim_and_the_id_can_rejoin():
    cfg = dict(dead_node_reclaim=60.0)
    a = mesh("a", "b", "c", **cfg)["a"]
    a.handle("c", Gossip(updates=[["d", "b", 0, "c", None]]), 10.0)
    assert a.member("b").state is MemberState.DEAD
    a.tick(69.0)
    assert a.member("b") is not None
    a.tick(70.5)
    assert a.member("b") is None
    out = a.handle("b", Gossip(updates=[["a", "b", 0, None, adv("b").to_dict()]]), 71.0)
    assert [e.kind for e in out.events] == ["joined"]


def test_restarted_node_learns_it_was_dead_and_comes_back():
    nodes = mesh("a", "b", "c")
    a = nodes["a"]
    a.handle("c", Gossip(updates=[["d", "b", 4, "c", None]]), 1.0)
    reborn = make("b", now=2.0, seed=9)  # fresh instance, incarnation 0
    net = Net({"a": a, "b": reborn})
    net.run("b", reborn.seed("a", None, 2.0), 2.0)
    assert reborn.incarnation == 5
    assert a.member("b").state is MemberState.ALIVE and a.member("b").incarnation == 5


def test_dead_member_that_talks_to_us_is_told_and_refutes():
    nodes = mesh("a", "b")
    a, b = nodes["a"], nodes["b"]
    a.handle("c", Gossip(updates=[["d", "b", 0, "c", None]]), 1.0)
    net = Net(nodes)
    net.run("b", Output(sends=[("a", Ping(seq=1, target="a", updates=[]))]), 2.0)
    assert b.incarnation == 1
    assert a.member("b").state is MemberState.ALIVE


@pytest.mark.parametrize("updates", [
    ["not a record"],
    [["x", "b", 0, None, None]],
    [["a", "b", -1, None, {}]],
    [["a", "b", 0, None, None]],
    [["s", "", 0, None, None]],
    [["s", "b", True, None, None]],
    [["a", "zz", 0, None, {"node_id": "zz", "name": "z", "addresses": "nope"}]],
    [["a", "zz", 0, None, adv("yy").to_dict()]],
])
def test_malformed_records_raise_decode_error_and_change_nothing(updates):
    a = mesh("a", "b")["a"]
    good = ["a", "qq", 0, None, adv("qq").to_dict()]
    with pytest.raises(DecodeError):
        a.handle("b", Gossip(updates=[good] + updates), 1.0)
    assert a.member("qq") is None


def test_malformed_wire_messages_raise_decode_error():
    from protocol import codec
    with pytest.raises(DecodeError):
        decode_message(b"".join(codec.encode({"t": "swim.ping", "seq": "1", "target": "a",
                                              "updates": []})))
    with pytest.raises(DecodeError):
        decode_message(b"".join(codec.encode({"t": "swim.ack", "updates": []})))
    with pytest.raises(DecodeError):
        make("a").handle("b", object(), 0.0)


def test_every_message_round_trips_through_the_codec():
    records = [["a", "b", 1, None, adv("b").to_dict()], ["s", "c", 2, "a", None]]
    msgs = [Ping(seq=1, target="b", updates=records), Ack(seq=1, updates=records),
            Nack(seq=2), PingReq(seq=3, target="c", nack=True, updates=[]),
            Gossip(updates=records), PushPull(join=True, reply=False, states=records)]
    for msg in msgs:
        back = decode_message(b"".join(bytes(p) for p in encode_message(msg)))
        assert back == msg and is_gossip_message(back)
    assert not is_gossip_message({"t": "swim.ping"})


def test_unreachable_probe_target_goes_indirect_at_once():
    nodes = mesh("a", "b", "c", "d")
    a = nodes["a"]
    t0 = a.next_deadline()
    out = a.tick(t0)
    (target, ping), = [(d, m) for d, m in out.sends if isinstance(m, Ping)]
    out = a.unreachable(target, t0 + 0.001)
    reqs = [m for _, m in out.sends if isinstance(m, PingReq)]
    assert len(reqs) == 2 and all(r.target == target for r in reqs)
    assert a.member(target).state is MemberState.ALIVE  # SWIM decides, not the dial


def test_relay_nacks_when_it_cannot_reach_the_target():
    b = mesh("a", "b", "c")["b"]
    out = b.handle("a", PingReq(seq=77, target="c", nack=True, updates=[]), 1.0)
    assert [(d, type(m)) for d, m in out.sends] == [("c", Ping)]
    out = b.unreachable("c", 1.01)
    assert [(d, m) for d, m in out.sends] == [("a", Nack(seq=77))]


def test_relay_forwards_the_targets_ack_under_the_origin_seq():
    b = mesh("a", "b", "c")["b"]
    out = b.handle("a", PingReq(seq=77, target="c", nack=True, updates=[]), 1.0)
    ping = out.sends[0][1]
    out = b.handle("c", Ack(seq=ping.seq, updates=[]), 1.01)
    assert [(d, m.seq) for d, m in out.sends] == [("a", 77)]
    assert not [m for _, m in b.tick(2.0).sends if isinstance(m, Nack)]  # no nack now


def test_lifeguard_missed_acks_slow_down_our_own_probing():
    nodes = mesh("a", "b", "c", "d")
    a = nodes["a"]
    net = Net(nodes)
    net.cut.update({"b", "c", "d"})  # a hears nothing: it is the unhealthy one
    net.cut.discard("a")
    t = 0.0
    probe_starts = []
    for _ in range(40):
        t = a.next_deadline()
        out = a.tick(t)
        if any(isinstance(m, Ping) for _, m in out.sends):
            probe_starts.append(t)
    assert a.health > 0
    gaps = [y - x for x, y in zip(probe_starts, probe_starts[1:])]
    assert gaps[0] == pytest.approx(1.0) and max(gaps) > 2.0


def test_lifeguard_successful_probes_restore_health():
    nodes = mesh("a", "b")
    a = nodes["a"]
    a._awareness.apply_delta(3)
    net = Net(nodes)
    net.advance(0.0, 20.0)
    assert a.health == 0


def test_small_advert_changes_wait_for_refresh_big_ones_go_at_once():
    a = make("a", advert_refresh=5.0)  # published its advert at t=0
    a.update_advert(1.0, load=0.05)
    assert a.member("a").advert.version == 0
    a.tick(4.9)
    assert a.member("a").advert.version == 0
    a.tick(5.0)
    assert a.member("a").advert.version == 1 and a.member("a").advert.load == 0.05
    a.update_advert(20.0, load=9.0)
    assert a.member("a").advert.version == 2


def test_advert_bursts_are_rate_limited():
    a = make("a")
    for k in range(10):
        a.update_advert(1.0 + k * 0.01, load=float(10 * k))
    assert a.member("a").advert.version == 1  # published at t=1.01
    a.tick(2.0)
    assert a.member("a").advert.version == 1
    a.tick(2.01)
    assert a.member("a").advert.version == 2 and a.member("a").advert.load == 90.0


def test_unchanged_advert_is_not_republished():
    a = make("a")
    a.update_advert(10.0, load=0.0)
    for t in range(11, 40):
        a.tick(float(t))
    assert a.member("a").advert.version == 0


def test_advert_change_reaches_peers_by_gossip():
    nodes = mesh("a", "b", "c")
    net = Net(nodes)
    net.run("a", nodes["a"].update_advert(1.0, load=7.0), 1.0)
    net.advance(1.0, 2.0)
    assert nodes["b"].member("a").advert.load == 7.0
    assert nodes["c"].member("a").advert.load == 7.0


def test_push_pull_interval_scales_like_memberlist():
    assert push_pull_scale(30.0, 32) == 30.0
    assert push_pull_scale(30.0, 33) == 60.0
    assert push_pull_scale(30.0, 64) == 60.0
    assert push_pull_scale(30.0, 1000) == 180.0


def test_same_seed_same_behaviour():
    def trace(seed):
        nodes = mesh("a", "b", "c", "d")
        nodes["a"] = make("a", seed=seed)
        nodes["a"].restore([adv(x) for x in "bcd"], 0.0)
        net = Net(nodes)
        net.advance(0.0, 5.0)
        return [(s, d, type(m).__name__) for s, d, m in net.sent]
    assert trace(5) == trace(5)
    assert trace(5) != trace(6)


def test_stale_bad_news_is_corrected_straight_back_to_its_sender():
    a = mesh("a", "b", "c")["a"]
    a.handle("b", Gossip(updates=[["a", "b", 2, None, adv("b").to_dict()]]), 1.0)
    out = a.handle("c", Gossip(updates=[["s", "b", 1, "c", None]]), 2.0)
    fixes = [m for d, m in out.sends if d == "c" and isinstance(m, Gossip)]
    assert fixes and fixes[0].updates[0][:3] == ["a", "b", 2]
    assert a.member("b").state is MemberState.ALIVE


def test_refutation_rides_in_the_ack_of_a_buddy_ping():
    b = mesh("a", "b")["b"]
    out = b.handle("a", Ping(seq=5, target="b", updates=[["s", "b", 0, "a", None]]), 1.0)
    (dest, ack), = out.sends
    assert dest == "a" and isinstance(ack, Ack) and ack.updates[0][:3] == ["a", "b", 1]


def test_suspect_gets_a_last_chance_ping_before_being_declared_dead():
    a = mesh("a", "b", "c", "d", "e")["a"]
    a.handle("c", Gossip(updates=[["s", "b", 0, "c", None]]), 0.0)
    deadline = a._suspicions["b"].deadline
    out = a.tick(deadline)
    last = [m for d, m in out.sends if d == "b" and isinstance(m, Ping)
            and m.updates and m.updates[0][:2] == ["s", "b"]]
    assert last and a.member("b").state is MemberState.SUSPECT
    out = a.tick(deadline + a.config.probe_interval)
    assert a.member("b").state is MemberState.DEAD
    assert any(e.kind == "dead" and e.node_id == "b" for e in out.events)


def test_a_live_suspect_survives_its_last_chance_ping():
    nodes = mesh("a", "b", "c")
    a = nodes["a"]
    a.handle("c", Gossip(updates=[["s", "b", 0, "c", None]]), 0.0)
    deadline = a._suspicions["b"].deadline
    net = Net(nodes)
    net.run("a", a.tick(deadline), deadline)
    assert a.member("b").state is MemberState.ALIVE and a.member("b").incarnation == 1


def test_a_stranger_is_greeted_with_a_push_pull_at_most_once_per_interval():
    a = mesh("a", "b")["a"]
    out = a.handle("z", Ping(seq=1, target="a", updates=[]), 1.0)
    assert any(d == "z" and isinstance(m, PushPull) and m.join for d, m in out.sends)
    out = a.handle("y", Ping(seq=2, target="a", updates=[]), 1.2)
    assert not any(isinstance(m, PushPull) for _, m in out.sends)


def test_oversized_update_list_is_rejected():
    a = make("a")
    flood = [["s", f"n{i}", 0, None, None] for i in range(5000)]
    with pytest.raises(DecodeError):
        a.handle("b", Gossip(updates=flood), 1.0)


def test_tick_always_moves_the_deadline_forward():
    nodes = mesh("a", "b", "c")
    a = nodes["a"]
    a.handle("c", Gossip(updates=[["s", "b", 0, "c", None]]), 0.0)
    a.update_advert(0.0, load=5.0)
    t = 0.0
    for _ in range(500):
        nxt = a.next_deadline()
        assert nxt > t or t == 0.0
        t = nxt
        a.tick(t)
    assert t > 60.0  # 500 timer firings cover simulated minutes, not a busy loop


def test_leaving_node_stops_probing_and_issues_no_verdicts():
    nodes = mesh("a", "b", "c")
    b = nodes["b"]
    b.handle("c", Gossip(updates=[["s", "a", 0, "c", None]]), 0.0)
    b.leave(1.0)
    sends, events = [], []
    t = 1.0
    for _ in range(200):
        t = b.next_deadline()
        if t == float("inf") or t > 120.0:
            break
        out = b.tick(t)
        sends += out.sends
        events += out.events
    assert not any(isinstance(m, (Ping, PingReq, PushPull)) for _, m in sends)
    assert not any(e.kind == "dead" for e in events)


def test_update_advert_cannot_change_the_node_id_and_ignores_version():
    a = make("a")
    with pytest.raises(ValueError):
        a.update_advert(1.0, node_id="b")
    a.update_advert(2.0, version=99, load=50.0)
    assert a.member("a").advert.version == 1


def test_joiner_gets_current_adverts_from_its_seed():
    nodes = mesh("a", "b")
    c = make("c", seed=5)
    net = Net({**nodes, "c": c})
    net.run("b", nodes["b"].update_advert(10.0, load=3.0), 10.0)
    net.run("b", nodes["b"].tick(10.2), 10.2)  # gossip reaches a
    assert nodes["a"].member("b").advert.load == 3.0
    net.run("c", c.seed("a", None, 11.0), 11.0)
    assert c.member("b").advert.version == 1 and c.member("b").advert.load == 3.0
