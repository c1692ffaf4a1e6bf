"""Idle-cost helpers of the daemon (issue 13): the ping rotation is pure and bounded."""

from __future__ import annotations

from node.daemon import PING_PER_ROUND, ping_round


def test_ping_round_visits_every_peer_in_turn_a_few_per_round():
    peers = [f"p{i:03d}" for i in range(10)]
    cursor, seen = "", []
    for _ in range(5):
        chosen, cursor = ping_round(peers, cursor, 4)
        assert len(chosen) == 4
        seen += chosen
    assert seen[:10] == peers                      # in order, none skipped
    assert seen[10:12] == peers[:2]                # then around again


def test_ping_round_survives_peers_coming_and_going():
    chosen, cursor = ping_round(["a", "b", "c"], "", 2)
    assert chosen == ["a", "b"]
    chosen, cursor = ping_round(["a", "c", "d"], cursor, 2)   # b left, d joined
    assert chosen == ["c", "d"]
    assert ping_round([], cursor, 2) == ([], cursor)
    assert ping_round(["x"], "x", 4)[0] == ["x"]             # never more than there are


def test_ping_round_is_bounded_whatever_the_mesh_size():
    assert len(ping_round([f"n{i}" for i in range(1000)], "", PING_PER_ROUND)[0]) == PING_PER_ROUND



def _mapped(pid: int, fragment: str) -> bool:
    """Whether a file whose path contains ``fragment`` is mapped into process ``pid``."""
    with open(f"/proc/{pid}/maps") as f:
        return any(fragment in line for line in f)


def _loaded(pid: int) -> set[str]:
    """Which of the lazily loaded packages' C extensions ``pid`` has mapped."""
    return {name for name in ("aiohttp", "multidict", "yarl") if _mapped(pid, f"/{name}/")}


def test_an_idle_daemon_loads_the_dashboard_only_when_someone_connects(cluster):
    import urllib.request

    node = cluster.add("n1", extra=["--capacity", "10"])   # dashboard on (127.0.0.1:0)
    url = node.status()["dashboard"]
    assert url and url.startswith("http://127.0.0.1:")
    assert _loaded(node.proc.pid) == set()         # bound, but aiohttp not imported
    with urllib.request.urlopen(url + "metrics", timeout=30) as r:   # first connection
        assert r.status == 200 and b"sedma_" in r.read()
    assert _loaded(node.proc.pid) == {"aiohttp", "multidict", "yarl"}
    with urllib.request.urlopen(url, timeout=10) as r:                 # and keeps serving
        assert r.status == 200


def test_the_lag_ticker_slows_down_when_the_loop_is_idle_and_speeds_up_for_work():
    from node.looplag import ACTIVE_CPU, IDLE_MAX_CPU, LagMonitor

    now = [100.0]
    lag = LagMonitor(interval=0.02, idle_interval=1.0, linger=10.0, clock=lambda: now[0])
    assert lag.next_interval(now[0]) == 0.02            # start-up counts as work
    for _ in range(600):                                 # 12 s of quiet fast ticks
        now[0] += 0.02
        lag.tick(0.02, now[0], now[0], cpu=0.0001)
    assert lag.next_interval(now[0]) == 1.0              # idle: one tick a second
    now[0] += 1.0
    lag.tick(1.0, now[0], now[0], cpu=0.003)             # gossip: a small bound, kept
    assert lag.report()["max_cpu_ms"] == 3.0 and lag.next_interval(now[0]) == 1.0
    now[0] += 1.0
    lag.tick(1.0, now[0], now[0], cpu=IDLE_MAX_CPU * 4)  # work started within this second
    r = lag.report()
    assert r["unmeasured"] == 1 and r["max_cpu_ms"] == 3.0   # a sum, not one callback: dropped
    assert lag.next_interval(now[0]) == 0.02             # and fast again at once
    now[0] += 0.02
    lag.tick(0.02, now[0], now[0], cpu=0.08)             # an 80 ms callback while fast
    assert lag.report()["max_cpu_ms"] == 80.0
    now[0] += 9.0
    lag.tick(0.02, now[0], now[0], cpu=ACTIVE_CPU * 2)   # still busy 9 s later
    now[0] += 9.0
    assert lag.next_interval(now[0]) == 0.02             # lingers 10 s after the last work
    now[0] += 1.1
    assert lag.next_interval(now[0]) == 1.0


def test_periodic_loops_share_one_beat():
    from node.beat import next_beat

    # loops of 1, 2 and 10 s started at different moments all wake at whole seconds
    assert next_beat(100.37, 1.0) == 101.0
    assert next_beat(100.37, 2.0) == 102.0
    assert next_beat(103.9, 10.0) == 110.0
    assert next_beat(101.0, 1.0) == 102.0          # on the beat: the next one
    assert next_beat(101.9995, 1.0) == 103.0       # a timer that fired a hair early
    assert next_beat(0.95, 1.0) == 2.0
    assert next_beat(0.0101, 0.02) == 0.04         # short periods: half a period of gap
    wakes = {next_beat(t / 10, p) for t in range(1000, 1010) for p in (1.0, 2.0, 5.0)}
    assert wakes <= {101.0, 102.0, 105.0}          # 30 loops, three instants


def test_advert_stats_keep_their_value_until_they_really_move():
    from node.daemon import settle_stats

    shown = {"resident_bytes": 50_000_000, "resource_utilisation": 8e-6,
             "throughput_per_s": 0.0, "latency_p50_ms": None, "latency_p99_ms": 20.0,
             "served_gflops": 12.0}
    idle = {"resident_bytes": 50_012_288, "resource_utilisation": 9e-6,
            "throughput_per_s": 0.0, "latency_p50_ms": None, "latency_p99_ms": 24.0,
            "served_gflops": 12.3}
    assert settle_stats(shown, idle) == shown           # noise: the advert stays as it is
    busy = dict(idle, resident_bytes=60_000_000, throughput_per_s=40.0, latency_p50_ms=3.0,
                latency_p99_ms=45.0)
    settled = settle_stats(shown, busy)
    assert settled["resident_bytes"] == 60_000_000      # 20 % more: the new value
    assert settled["throughput_per_s"] == 40.0 and settled["latency_p50_ms"] == 3.0
    assert settled["latency_p99_ms"] == 45.0            # RTT more than doubled
    assert settled["served_gflops"] == 12.0             # 2.5 %: still noise
    assert settle_stats({}, busy) == busy               # nothing advertised yet


async def test_an_idle_daemon_does_not_republish_its_advert(tmp_path):
    import asyncio

    from tests.inproc import running_daemon

    async with running_daemon(tmp_path) as d:
        await asyncio.sleep(7)                          # past advert_refresh (5 s)
        version = d.mesh.advert.version
        await asyncio.sleep(7)
        assert d.mesh.advert.version == version         # nothing worth gossiping changed


def test_rtt_percentiles_follow_new_samples():
    import numpy as np

    from node.metrics import Metrics

    m = Metrics()
    assert m.latency() == {"p50_ms": None, "p99_ms": None}
    samples = [float(v) for v in range(1, 101)]
    for v in samples:
        m.rtt(v)
    first = m.latency()
    assert first == {"p50_ms": np.percentile(samples, 50), "p99_ms": np.percentile(samples, 99)}
    first["p50_ms"] = -1.0                      # a caller's copy, not the cache
    assert m.latency()["p50_ms"] == np.percentile(samples, 50)
    for _ in range(100):
        m.rtt(1000.0)                           # new samples move the percentiles
    assert m.latency()["p50_ms"] == np.percentile(samples + [1000.0] * 100, 50)
