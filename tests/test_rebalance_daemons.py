"""Migration off a slow node with real daemons: copy-then-switch, results exact throughout.

One node runs with ``--compute-slowdown 10`` (the testing aid); after some requests its
reconfiguration pass (every 2 s here, via the config file) sees that it serves ten times
slower than its peers, moves its blocks away, records why, and releases them after the
grace period. Every request before, during and after the move returns W @ X.
"""

from __future__ import annotations

import numpy as np

from node.client import Client
from node.work.holder import RELEASE_GRACE_S
from tests.daemons import wait_for


def rand(shape, seed):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def test_a_slow_nodes_blocks_migrate_away_and_every_answer_stays_exact(cluster, tmp_path):
    conf = tmp_path / "fast-reconfigure.toml"
    conf.write_text("reconfigure_every = 2.0\n")
    common = ["--capacity", "10", "--config", str(conf)]
    n1 = cluster.add("n1", extra=common).start()
    n2 = cluster.add("n2", extra=common).start()
    slow = cluster.add("slow", extra=common + ["--compute-slowdown", "10"]).start()
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
    requests(5)
