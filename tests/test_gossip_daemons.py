"""Gossip with 20 real daemons on loopback: convergence, failure detection, rejoin."""

import pytest

from node.client import Client
from tests.daemons import wait_for

N = 20


def alive_view(node) -> dict[str, str]:
    return {p["id"]: p["state"] for p in node.peers()}


@pytest.mark.slow
def test_twenty_daemons_converge_detect_two_crashes_and_a_restart_rejoins(cluster):
    cluster.start_parallel(N)
    ids = [n.id for n in cluster.nodes]
    cluster.wait_converged(alive=N - 1, timeout=90)
    peers = cluster.nodes[5].peers()
    sample = peers[0]
    assert {"id", "name", "state", "addresses", "link", "rtt_ms", "memory", "load",
            "capacity", "device", "advert_age_s"} <= set(sample)
    assert sample["memory"]["total"] > 0 and sample["capacity"] > 0

    victims = cluster.nodes[-2:]
    victim_ids = {v.id for v in victims}
    incarnation_before = {p["id"]: p["incarnation"] for p in cluster.nodes[0].peers()}
    for v in victims:
        v.kill9()
    survivors = cluster.nodes[:-2]
    for node in survivors:
        wait_for(lambda: all(alive_view(node).get(v) == "dead" for v in victim_ids), 90,
                 f"{node.name} to declare both victims dead")
        # every other survivor alive: a passing suspicion of one of 18 daemons on two
        # cores (0.5 s probe timeout) refutes itself within seconds, so this is awaited
        wait_for(lambda: sum(s == "alive" for s in alive_view(node).values()) == N - 3, 60,
                 f"{node.name} to see every other survivor alive")

    back = victims[0]
    back_id = ids[-2]
    back.start()
    assert back.id == back_id                     # same data dir, same node id
    for node in survivors:
        wait_for(lambda: alive_view(node).get(back_id) == "alive", 60,
                 f"{node.name} to see the restarted node alive again")
    with Client(survivors[0].socket) as c:
        again = {p["id"]: p["incarnation"] for p in c.peers()}
    assert again[back_id] > incarnation_before[back_id]
