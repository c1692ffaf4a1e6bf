"""Migration off a slow node with real daemons: copy-then-switch, results exact throughout.

One node runs with ``--compute-slowdown 10`` (the testing aid); after some requests its
reconfiguration pass (every 2 s here, via the config file) sees that it serves ten times
slower than its peers, moves its blocks away, records why, and releases them after the
grace period. Every request before, during and after the move returns W @ X.
"""

from __future__ import annotations

import contextlib

import time

import numpy as np
import pytest

from node.client import Client
from node.work.holder import RELEASE_GRACE_S
from tests.rebalance_checks import ExactLoad, held, migrated_off
from tests.daemons import run_cli, wait_for


pytestmark = pytest.mark.slow   # about a minute each: real daemons adapting

DWELL_S = 8.0     # the anti-thrash dwell, shortened from 120 s so the test runs in a minute


def rand(shape, seed):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def test_a_slow_nodes_blocks_migrate_away_and_every_answer_stays_exact(cluster, tmp_path):
    conf = tmp_path / "fast-reconfigure.toml"
    conf.write_text(f"reconfigure_every = 2.0\nrebalance_dwell_s = {DWELL_S}\n")
    common = ["--capacity", "10", "--config", str(conf)]
    n1 = cluster.add("n1", extra=common)
    n2 = cluster.add("n2", extra=common)
    slow = cluster.add("slow", extra=common + ["--compute-slowdown", "10"])
    cluster.wait_converged(alive=2)
    w = rand((1536, 512), 1)
    with Client(n1.socket) as c:
        info = c.deploy("w", w, replicas=1)
    moved = [i for i, holders in info["placement"].items() if slow.id in holders]
    assert moved, "the planner gave the slow node nothing to hold"

    def requests(k: int) -> None:
        with Client(n1.socket) as c:
            for i in range(k):
                x = rand((512, 8), i)
                np.testing.assert_allclose(c.infer("w", x), w @ x, rtol=1e-4, atol=1e-3)

    def migrated():
        requests(5)                       # keep the block hot (and check every answer)
        with Client(slow.socket) as c:
            decisions = c.memory()["decisions"]
        return [d for d in decisions if d["kind"] == "migrate" and d["source"] == slow.id]
    done = wait_for(migrated, 90, "the slow node to migrate its blocks away")
    d = done[0]
    assert "slow" in d["reason"] and d["predicted_gain"] > d["cost_s"] > 0
    assert d["measured_before"]["service_s"] > 0

    wait_for(lambda: (requests(2), not slow.status()["blocks"].get("w"))[1],
             RELEASE_GRACE_S + 60, "the slow node to release the moved blocks")
    held = {int(i) for node in (n1, n2) for i in node.status()["blocks"].get("w", [])}
    assert held == {int(i) for i in info["placement"]}      # every block still has a home
    time.sleep(2 * DWELL_S)          # two more dwell periods under load: nothing moves back
    requests(10)
    moves = []
    for node in (n1, n2, slow):
        with Client(node.socket) as c:
            moves += [d for d in c.memory()["decisions"] if d["kind"] == "migrate"]
    assert len(moves) == len(moved), moves
    assert all(d["source"] == slow.id for d in moves)

    text = run_cli("memory", "--socket", str(slow.socket))      # what a person reads
    assert text.returncode == 0, text.stderr
    assert "migrate" in text.stdout and "stays slow" in text.stdout
    assert "n1" in text.stdout and "n2" in text.stdout          # learned vs advertised peers
    with Client(n1.socket) as c:
        mesh = c.status(mesh=True)["mesh"]
    assert mesh["nodes"] == 3 and mesh["throughput_per_s"] > 0
    assert set(mesh["per_node"]) == {n1.id, n2.id, slow.id}


def test_kill9_of_a_holder_during_a_migration_loses_no_request_and_replicas_come_back(
        cluster, tmp_path):
    """Requests run all along; the moment a migration off the slow node is decided (its
    copy is done, the plan switched, the old holder still in its grace period) the slow
    node is killed with SIGKILL. Every request still returns W @ X (the coordinator fails
    over to the other replica), and every block is held by two live nodes again."""
    conf = tmp_path / "fast-reconfigure.toml"
    conf.write_text(f"reconfigure_every = 2.0\nrebalance_dwell_s = {DWELL_S}\n")
    common = ["--capacity", "10", "--config", str(conf)]
    n1 = cluster.add("n1", extra=common)
    cluster.add("n2", extra=common)
    cluster.add("n3", extra=common)
    slow = cluster.add("slow", extra=common + ["--compute-slowdown", "10"])
    cluster.wait_converged(alive=3)
    w = rand((2048, 256), 3)
    with Client(n1.socket) as c:
        info = c.deploy("w", w, replicas=2)
    assert any(slow.id in h for h in info["placement"].values())
    live = cluster.nodes[:3]
    # Load enters through every fast node: an entry node that also holds the slow node's
    # blocks reads them locally, so with a single entry node the placement could leave
    # the slow node without a read to be measured by (a flake seen 2 runs in 5).
    with contextlib.ExitStack() as stack:
        loads = [stack.enter_context(ExactLoad(n, "w", w, rows=256)) for n in live]
        wait_for(lambda: migrated_off(cluster.nodes, slow.id), 90, "a migration off the slow node")
        slow.kill9()
        before = sum(load.served for load in loads)
        wait_for(lambda: all(held(live, "w").get(int(i), 0) >= 2 for i in info["placement"]),
                 90, "every block of w to be held by two live nodes")
        wait_for(lambda: sum(load.served for load in loads) > before + 5, 30,
                 "requests to keep being served")
    assert [f for load in loads for f in load.failures] == []
