"""Status-only advert figures travel by push-pull, not by broadcast gossip (issue 13).

At 100 idle daemons on one machine the RTT p99 carried in adverts moved with the load and
re-published about one advert a second mesh-wide, each gossiped several times to every
member. These tests drive the SWIM state machine on a fake clock: a wiggling status
figure sends no gossip at all, yet reaches every member by anti-entropy; a change that
placement reads is still broadcast within one advert period.
"""

from __future__ import annotations

import random

from protocol.advert import REPORT_ONLY_STATS, Advertisement
from protocol.membership import Gossip, Membership, MembershipConfig, PushPull
from tests.test_gossip_membership import Net, adv, mesh


def _stats(**kw) -> dict:
    base = {"latency_p50_ms": 1.0, "latency_p99_ms": 3.0, "throughput_per_s": 0.0,
            "resource_utilisation": 0.0, "useful_bytes": 0, "resident_bytes": 45 << 20,
            "served_gflops": 10.0, "loop_busy": 0.0, "rate:w/0": 4.0}
    return base | kw


def test_only_reported_statistics_differing_is_recognised_field_by_field():
    a = adv("a", load=1.0, stats=_stats())
    assert a.only_reported_differ(a.replace(version=9))
    assert a.only_reported_differ(a.replace(stats=_stats(latency_p99_ms=80.0,
                                                         resident_bytes=60 << 20)))
    # a report-only figure appearing or going is quiet too
    assert a.only_reported_differ(a.replace(stats={k: v for k, v in _stats().items()
                                                   if k != "latency_p99_ms"}))
    # anything a decision reads is not
    assert not a.only_reported_differ(a.replace(load=2.0))
    assert not a.only_reported_differ(a.replace(stats=_stats(served_gflops=11.0)))
    assert not a.only_reported_differ(a.replace(stats=_stats(loop_busy=0.5)))
    assert not a.only_reported_differ(a.replace(stats=_stats(**{"rate:w/0": 8.0})))
    assert not a.only_reported_differ(a.replace(stats=_stats(**{"rate:w/1": 1.0})))
    assert not a.only_reported_differ(a.replace(memory_free=5))
    assert "served_gflops" not in REPORT_ONLY_STATS and "loop_busy" not in REPORT_ONLY_STATS


def _gossip_about(net: Net, subject: str) -> list:
    """Gossip messages that carried an alive record of ``subject``."""
    return [m for _, _, m in net.sent if isinstance(m, Gossip)
            and any(r[0] == "a" and r[1] == subject for r in m.updates)]


def _piggybacked(net: Net, subject: str) -> int:
    """Alive records of ``subject`` riding on anything but push-pull (pings, acks...)."""
    return sum(1 for _, _, m in net.sent if not isinstance(m, PushPull)
               for r in getattr(m, "updates", []) if r[0] == "a" and r[1] == subject)


def _settled(nodes: dict, net: Net) -> float:
    """Node a's first full stats (served_gflops, block rates: loud) spread; the record of
    that traffic cleared. Returns the time."""
    net.run("a", nodes["a"].update_advert(0.5, stats=_stats()), 0.5)
    net.advance(0.5, 10.0)
    assert all(n.member("a").advert.stats == _stats() for n in nodes.values())
    net.sent.clear()
    return 10.0


def test_a_wiggling_status_figure_is_never_broadcast_but_reaches_everyone_by_push_pull():
    nodes = mesh("a", "b", "c", "d", push_pull_interval=10.0)
    net = Net(nodes)
    start = _settled(nodes, net)
    t = start
    for k in range(30):                     # the p99 jumps every second for 30 s
        t = start + 1.0 + k
        net.run("a", nodes["a"].update_advert(t, stats=_stats(latency_p99_ms=3.0 + 40 * (k % 2))),
                t)
        net.advance(t, t + 0.95)
    assert nodes["a"].member("a").advert.version > 3   # published and signed, versions move
    assert _gossip_about(net, "a") == [] and _piggybacked(net, "a") == 0
    net.advance(t + 1, t + 60.0)            # several push-pull periods, still no gossip
    assert _gossip_about(net, "a") == [] and _piggybacked(net, "a") == 0
    final = nodes["a"].member("a").advert
    assert final.stats["latency_p99_ms"] == 43.0   # the last figure (k = 29) got out
    for other in "bcd":
        assert nodes[other].member("a").advert == final


def test_a_change_placement_reads_is_broadcast_within_one_advert_period():
    nodes = mesh("a", "b", "c", "d", advert_refresh=5.0, push_pull_interval=1000.0)
    net = Net(nodes)
    t = _settled(nodes, net)
    net.run("a", nodes["a"].update_advert(t + 1, stats=_stats(latency_p99_ms=90.0)), t + 1)
    net.advance(t + 1, t + 7)
    assert _gossip_about(net, "a") == [] and _piggybacked(net, "a") == 0
    assert nodes["b"].member("a").advert.stats["latency_p99_ms"] == 3.0   # not yet
    # a block's read rate is what replication decides on: small, so it waits for the
    # refresh period (5 s), and then goes out by gossip, the status figures riding along
    net.run("a", nodes["a"].update_advert(t + 7, stats=_stats(latency_p99_ms=90.0,
                                                              **{"rate:w/0": 5.0})), t + 7)
    net.advance(t + 7, t + 12.5)
    assert _gossip_about(net, "a") or _piggybacked(net, "a")
    for other in "bcd":
        got = nodes[other].member("a").advert.stats
        assert got["rate:w/0"] == 5.0 and got["latency_p99_ms"] == 90.0


def test_a_receiver_does_not_regossip_quiet_news_but_does_spread_real_news():
    """Whoever learns a quiet version (by push-pull) keeps it out of its gossip queue; a
    version that also changed what placement reads is queued as before."""
    cfg = MembershipConfig()
    b = Membership(adv("b"), cfg, now=0.0, rng=random.Random(2))
    a_adv = adv("a", stats=_stats())
    b.restore([a_adv], 0.0)

    def record(advert: Advertisement) -> list:
        return ["a", "a", 0, None, advert.to_dict()]

    quiet = a_adv.replace(version=1, stats=_stats(latency_p99_ms=77.0))
    out = b.handle("a", PushPull(join=False, reply=True, states=[record(quiet)]), 1.0)
    assert [e.kind for e in out.events] == ["advert"]
    assert b.member("a").advert.stats["latency_p99_ms"] == 77.0
    assert len(b._queue) == 0            # nothing to piggyback or gossip about a
    loud = quiet.replace(version=2, load=3.0)
    b.handle("a", PushPull(join=False, reply=True, states=[record(loud)]), 2.0)
    assert b.member("a").advert.load == 3.0 and len(b._queue) == 1
