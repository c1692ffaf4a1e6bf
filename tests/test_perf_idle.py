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
