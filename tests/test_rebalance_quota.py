"""A node made slow by a real CPU quota (cgroup v1 cpu controller), not the testing aid:
its blocks migrate away, and every answer stays exact.

The requests carry enough compute per block (~270 MFLOP, several ms) to outlast one
quota slice (1 ms of CPU per 20 ms): the migration rule compares each node's own measured
serving speed (compute time on its threads), and a computation that fits inside a slice
runs at full speed, so a node starved only *between* computations is not seen as slow by
that measure (its peers' learned speeds do see it; see bench/README.md)."""

from __future__ import annotations

import numpy as np
import pytest

from node.client import Client
from node.runtime.cpuquota import CpuQuota, available
from node.work.holder import RELEASE_GRACE_S
from tests.daemons import wait_for

pytestmark = [pytest.mark.slow,   # about a minute: real daemons adapting
              pytest.mark.skipif(bool(available()), reason=available() or "-")]

DWELL_S = 8.0


def rand(shape, seed):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def test_cpu_quota_group_holds_the_process_and_is_removed(cluster):
    node = cluster.add("n1")
    quota = CpuQuota("unit", 0.2)
    try:
        quota.add(node.proc.pid)
        assert node.proc.pid in quota.pids()
        assert (quota.path / "cpu.cfs_quota_us").read_text().strip() == "2000"
    finally:
        quota.close()
    assert not quota.path.exists()
    assert node.status()["id"]                # the daemon lives on, outside the group


def test_a_node_under_a_cpu_quota_has_its_blocks_migrate_away(cluster, tmp_path):
    conf = tmp_path / "fast.toml"
    conf.write_text(f"reconfigure_every = 2.0\nrebalance_dwell_s = {DWELL_S}\n")
    common = ["--capacity", "10", "--config", str(conf)]
    n1 = cluster.add("n1", extra=common)
    n2 = cluster.add("n2", extra=common)
    slow = cluster.add("slow", extra=common)
    quota = CpuQuota("test", 0.05)            # 5 % of one CPU
    try:
        quota.add(slow.proc.pid)
        cluster.wait_converged(alive=2)
        w = rand((1536, 1024), 1)
        with Client(n1.socket) as c:
            info = c.deploy("w", w, replicas=1)
        moved = [i for i, holders in info["placement"].items() if slow.id in holders]
        assert moved, "the planner gave the slow node nothing to hold"

        def requests(k: int) -> None:
            with Client(n1.socket) as c:
                for i in range(k):
                    x = rand((1024, 256), i)   # ~270 MFLOP a block: longer than a slice
                    np.testing.assert_allclose(c.infer("w", x), w @ x, rtol=1e-4, atol=1e-3)

        def migrated():
            requests(5)
            with Client(slow.socket) as c:
                decisions = c.memory()["decisions"]
            return [d for d in decisions if d["kind"] == "migrate" and d["source"] == slow.id]
        done = wait_for(migrated, 150, "the node under a CPU quota to migrate its blocks away")
        assert "slow" in done[0]["reason"], done[0]["reason"]
        assert quota.throttled_us() > 0       # the quota really held it back
        wait_for(lambda: (requests(2), not slow.status()["blocks"].get("w"))[1],
                 RELEASE_GRACE_S + 90, "the slow node to release the moved blocks")
        held = {int(i) for node in (n1, n2) for i in node.status()["blocks"].get("w", [])}
        assert held == {int(i) for i in info["placement"]}
    finally:
        quota.close()
    assert not quota.path.exists()
