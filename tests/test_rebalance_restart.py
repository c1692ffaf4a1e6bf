"""Retiring hot replicas survives a restart: the deployed replica count is the plan's own.

Hot replication adds holders to a block's list in the plan; retiring gives them back down
to the count *as deployed*. That count used to be read off the first plan a node saw, so
after a restart (the persisted plan already lists the extras) a node took the extras for
the deployed count and never retired them. The count now travels with the versioned plan.
"""

from __future__ import annotations

import threading
import time

import msgpack
import numpy as np
import pytest

from compute.partition import Block, PartitionPlan
from node.client import Client
from node.work.holder import RELEASE_GRACE_S
from node.work.plans import VersionedPlan, merge
from tests.daemons import wait_for


def _plan(*holders: list[str]) -> PartitionPlan:
    blocks = [Block(i, i * 128, (i + 1) * 128, list(h)) for i, h in enumerate(holders)]
    return PartitionPlan((128 * len(holders), 64), None, blocks)


def test_a_fresh_plan_records_its_replica_count_and_keeps_it_through_changes():
    v = VersionedPlan(_plan(["a", "b"], ["b", "c"]), "d1")
    assert v.replicas == 2
    hot = v.with_block(0, ["a", "b", "c"], "a")          # a hot replica added
    assert hot.replicas == 2
    back = VersionedPlan.from_wire(msgpack.unpackb(msgpack.packb(hot.to_wire())))
    assert back.replicas == 2 and back.plan.blocks[0].nodes == ["a", "b", "c"]


def test_a_peer_without_the_count_merges_to_the_known_count_either_way():
    v = VersionedPlan(_plan(["a"], ["b"]), "d1")
    old_peer = VersionedPlan.from_wire({k: x for k, x in v.with_block(1, ["b", "c"], "b")
                                        .to_wire().items() if k != "replicas"})
    assert old_peer.replicas == 0                        # unknown, not guessed from extras
    assert merge(v, old_peer).replicas == merge(old_peer, v).replicas == 1


@pytest.mark.parametrize("bad", [-1, True, "2", 10**6])
def test_a_bad_replica_count_from_a_peer_is_refused(bad):
    wire = VersionedPlan(_plan(["a"]), "d1").to_wire() | {"replicas": bad}
    with pytest.raises(ValueError, match="replica count"):
        VersionedPlan.from_wire(wire)


DWELL_S = 6.0


@pytest.mark.slow   # about two minutes: real daemons replicate, restart, retire
def test_hot_replicas_are_retired_after_every_node_restarted(cluster, tmp_path):
    """Four clients make a one-block matrix hot until it has extra replicas; every daemon
    is then restarted while the block is still hot (so nothing was retired before), the
    load drops to a trickle, and the block goes back to the one replica it was deployed
    with. Every answer is W @ X throughout."""
    conf = tmp_path / "fast.toml"
    conf.write_text(f"reconfigure_every = 2.0\nrebalance_dwell_s = {DWELL_S}\n"
                    "rate_half_life_s = 10.0\n")
    # the same slowdown everywhere: compute dominates each request (so a holder is really
    # kept busy) while the nodes stay equally fast (so nothing migrates)
    common = ["--capacity", "10", "--config", str(conf), "--compute-slowdown", "12"]
    nodes = [cluster.add(f"n{i}", extra=common) for i in (1, 2, 3)]
    cluster.wait_converged(alive=2)
    rng = np.random.default_rng(5)
    w = rng.standard_normal((128, 2048), dtype=np.float32)
    x = rng.standard_normal((2048, 64), dtype=np.float32)
    want = w @ x
    with Client(nodes[0].socket) as c:
        info = c.deploy("w", w, replicas=1)
    assert len(info["placement"]) == 1 and len(info["placement"]["0"]) == 1

    def holders() -> int:
        return sum(0 in n.status()["blocks"].get("w", []) for n in nodes)

    def listed(node) -> int:
        with Client(node.socket) as c:
            (dep,) = [d for d in c.deployments() if d["name"] == "w"]
        return len(dep["layers"][0]["blocks"]["0"]["holders"])

    def kinds() -> list[tuple[str, float]]:
        out = []
        for n in nodes:
            with Client(n.socket) as c:
                out += [(d["kind"], d["at"]) for d in c.memory()["decisions"]]
        return out

    stop = threading.Event()
    failures: list[str] = []

    def load(k: int, pause: float) -> None:
        with Client(nodes[k % 3].socket) as c:
            while not stop.is_set():
                try:
                    np.testing.assert_allclose(c.infer("w", x), want, rtol=1e-4, atol=1e-3)
                except Exception as exc:  # every failure is reported by the assert below
                    failures.append(repr(exc))
                time.sleep(pause)

    clients = [threading.Thread(target=load, args=(k, 0.0)) for k in range(4)]
    for t in clients:
        t.start()
    try:
        # the copy is on disk before the plan lists it: restart only once every node's
        # plan lists the extra holder (an unlisted copy is no replica to retire)
        wait_for(lambda: holders() >= 2 and min(listed(n) for n in nodes) >= 2, 120,
                 "the hot block to gain a replica listed in every node's plan")
        # the holders the plan lists (what retiring gives back): a migration's source
        # still serving out its grace period holds a copy too, and is released, not
        # retired. Read under load: stopped, the block cools and may rightly retire.
        wait_for(lambda: len({listed(n) for n in nodes}) == 1, 30, "every plan to agree")
        hot = listed(nodes[0])
        assert [k for k, _ in kinds() if k == "retire"] == []   # still hot: none retired
    finally:
        stop.set()
        for t in clients:
            t.join(30)
    assert failures == []
    for n in nodes:
        n.stop()
    restarted_at = time.time()
    nodes[0].start()
    for n in nodes[1:]:
        n.bootstrap = [nodes[0].address]
        n.start()
    cluster.wait_converged(alive=2, timeout=60)

    stop.clear()
    # a request every 2 s: little enough that the block counts as cooled (under cool_busy)
    # even when a loaded machine stretches each slowed compute several-fold
    trickle = threading.Thread(target=load, args=(0, 2.0))
    trickle.start()
    try:
        wait_for(lambda: [a for k, a in kinds() if k == "retire" and a >= restarted_at]
                 and holders() == 1, hot * DWELL_S + RELEASE_GRACE_S + 90,
                 f"the block's {hot} holders to be retired back to 1 after the restart",
                 interval=1.0)
    finally:
        stop.set()
        trickle.join(30)
    assert failures == []
    assert len([k for k, a in kinds() if k == "retire" and a >= restarted_at]) == hot - 1
    # the rate the block last gained a replica at is kept with the plan's block entry
    # (persisted, carried to peers), so every retire after the restart cites it, whichever
    # node decided the replica and whichever node acts for the block now
    grown = []
    retires = []
    for n in nodes:
        with Client(n.socket) as c:
            mine = c.memory()["decisions"]
        grown += [d for d in mine if d["kind"] == "replicate" and d["at"] < restarted_at]
        retires += [d for d in mine if d["kind"] == "retire" and d["at"] >= restarted_at]
    last = max(grown, key=lambda d: d["at"])
    assert retires and all(f"from the {last['rate']:.2f} req/s its last replica was added at"
                           in d["reason"] for d in retires), (retires, last)
