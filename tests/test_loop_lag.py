"""A 1 GiB job does not stall the event loop: validation, copies and results run off it.

Two real daemons; the client submits the largest matmul the job limit allows (A is about
1 GB) to one of them and fetches the result. Each daemon measures its own event loop (a
50 ms ticker, reported in ``status``): the CPU time the loop thread spends between two
ticks stays under 100 ms -- no callback blocked the loop that long -- and neither daemon
ever suspects the other. On the old code the validation (``astype``/``isfinite`` over
1 GB), the share copies and the whole-frame reads ran on the loop: hundreds of ms each.

Wall-clock lag is printed, not asserted: on a shared 2-core machine at load 10 the OS alone
delays an idle daemon's timers by 300 ms (measured before the job starts), which says
nothing about this code. For the same reason a suspicion while the host's load average is
over twice its cores skips (saying so) instead of failing; below that it fails.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from node.client import Client
from node.work.jobs import MAX_JOB_BYTES
from tests.daemons import wait_for

LAG_LIMIT_MS = 100.0


@pytest.mark.slow
def test_a_1gib_job_keeps_the_event_loop_responsive(cluster):
    cluster.start(2, extra=["--capacity", "10"])
    cluster.wait_converged(alive=1)
    n1, n2 = cluster.nodes
    k, n = 10_000, 4
    m = (MAX_JOB_BYTES // 4 - k * n) // (k + n)         # A + B + C within the job limit
    rng = np.random.default_rng(7)
    a = rng.standard_normal((m, k), dtype=np.float32)
    b = rng.standard_normal((k, n), dtype=np.float32)
    assert a.nbytes > 1_000_000_000
    before = {node.name: node.status()["loop_lag"] for node in cluster.nodes}
    with Client(n1.socket) as c:
        got = c.matmul(a, b, device="ideal", timeout=900)
        job = c.jobs()[-1]
    assert job["state"] == "done"
    assert len(job["placement"]) == 2              # both daemons computed a share
    want = a @ b
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()
    del a, got, want
    lags = {node.name: node.status()["loop_lag"] for node in cluster.nodes}
    print("loop lag before:", before, "after:", lags)
    for name, lag in lags.items():
        assert lag["worst_cpu_ms"] < LAG_LIMIT_MS, (name, lag)
    logs = cluster.logs(tail=10**7)
    suspected = " is suspect" in logs or " is dead" in logs
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    if suspected and load > 2 * cores:
        pytest.skip(f"a peer was suspected while the host's load average was {load:.0f} on "
                    f"{cores} cores (idle daemons lagged {before}): wall-clock failure "
                    "detection cannot be judged here; the loop-CPU bound above held")
    assert not suspected, "a peer was suspected during the job"
    for node in cluster.nodes:
        wait_for(lambda node=node: all(p["state"] == "alive" for p in node.peers()), 20,
                 f"{node.name}'s peers all alive")
