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

