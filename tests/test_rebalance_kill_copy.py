"""Kill -9 of the receiving node in the middle of a migration's copy.

A migration is copy-then-switch: the block's new holder writes the programmed state
(temp file, fsync, rename, then its database row) and only after it answered does the plan
list it. The copy window is short on loopback, so the test widens it with the testing aid
``SEDMA_TEST_PAUSE_COPY_S`` (see :func:`node.memory.store.copy_pause_s`): a node receiving
a copy holds the write with half the block file on disk. The test kills that node right
then, with the half-written file there, and checks that

- no request fails or returns anything but W @ X (the plan never listed the half copy),
- every block is held by two live nodes again (the replica count is restored),
- the migration still happens, to another node,
- the killed node, restarted, removed the half-written file and serves no such block.
"""

from __future__ import annotations

import time

import pytest

from node.client import Client
from tests.rebalance_checks import (ExactLoad, fast_control, half_copies, held, migrated_off,
                                    pausing_copies, rand)
from tests.daemons import wait_for


pytestmark = pytest.mark.slow   # about two minutes: real daemons, a kill and a restart

DWELL_S = 6.0
PAUSE_S = 15.0


def test_kill9_of_the_target_mid_copy_serves_no_half_block_and_restores_replicas(
        cluster, tmp_path):
    common = fast_control(tmp_path, DWELL_S)
    # n1 is the clients' entry and holds nothing (no RAM to spare), so it is never the
    # target of a copy and the node killed below is never the one the client talks to
    n1 = cluster.add("n1", extra=common + ["--memory-limit", "64KiB"])
    for name in ("n2", "n3"):         # the copies they receive pause halfway (testing aid)
        pausing_copies(cluster, name, n1, common, PAUSE_S)
    slow = cluster.add("slow", extra=common + ["--compute-slowdown", "10"])
    cluster.wait_converged(alive=3)
    w = rand((2048, 256), 3)
    with Client(n1.socket) as c:
        info = c.deploy("w", w, replicas=2)
    assert any(slow.id in h for h in info["placement"].values())
    blocks = {int(i) for i in info["placement"]}

    with ExactLoad(n1, "w", w, rows=256) as load:
        targets = cluster.nodes[1:3]
        hit = wait_for(lambda: next((n for n in targets if half_copies(n)), None), 120,
                       "a copy to n2 or n3 to be half written")
        half = half_copies(hit)
        assert half and half[0].stat().st_size > 0
        idx = int(half[0].name.split(".")[0])
        copying = f"copying w block {idx} to {hit.id[:8]} for a migrate"
        assert any(copying in n.log_path.read_text() for n in cluster.nodes), copying
        hit.kill9()                                   # mid-copy: half the file on its disk
        assert half_copies(hit) == half              # the half copy is left behind
        assert not half[0].with_suffix("").exists()   # ...and was never a block file
        before = load.served
        live = [n for n in cluster.nodes if n is not hit]
        wait_for(lambda: all(held(live, "w").get(i, 0) >= 2 for i in blocks), 120,
                 "every block of w to be held by two live nodes again", interval=0.5)

        wait_for(lambda: load.served > before + 5, 60, "requests to keep being served")

        hit.extra = common                            # back without the pause
        hit.prefix = []
        hit.bootstrap = [n1.address]
        hit.start()
        assert half_copies(hit) == []                # removed at start as an orphan
        # a block it did not hold before (a migration's target never does)
        assert idx not in hit.status()["blocks"].get("w", [])
        assert any(idx in n.status()["blocks"].get("w", []) for n in live)
        wait_for(lambda: migrated_off(cluster.nodes, slow.id), 120,
                 "a migration off the slow node to complete")
        served_after = load.served
        wait_for(lambda: load.served > served_after + 5, 60, "requests after the restart")
    assert load.failures == []
