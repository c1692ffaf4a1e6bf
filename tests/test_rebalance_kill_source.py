"""Kill -9 of the *source* of a migration's copy, after the copy landed, before the switch.

A migration is copy-then-switch, and the node that copies is the block's acting holder.
The receiver writes the whole programmed state (the testing aid
``SEDMA_TEST_PAUSE_COPY_S`` holds it half-written for a while, see
:func:`node.memory.store.copy_pause_s`) and answers; only then would the source list it in
the plan. Here the source is killed while the receiver's write is paused, so the receiver
ends up holding a full copy that no plan lists. With one replica deployed, that copy is
the block's only one left. Before the fix it stayed unlisted (and the block unserved)
until a plan notice for the matrix came, which nothing sends. The test checks that

- the receiver adopts its copy once the membership declares the source dead, and the
  entry node serves ``W @ X`` again (exact, checked) from that copy, the only one left,
- no request ever returns a wrong result (some fail while the block has no live holder:
  the single replica's holder was killed),
- the restarted source does not bring its stale listing back: the block stays served.
"""

from __future__ import annotations

import time

import pytest

from node.client import Client
from tests.daemons import wait_for
from tests.rebalance_checks import (ExactLoad, fast_control, half_copies, held, pausing_copies,
                                    rand)

pytestmark = pytest.mark.slow   # about two minutes: real daemons, a kill and a restart

DWELL_S = 6.0
PAUSE_S = 10.0


def test_kill9_of_the_copy_source_the_receiver_adopts_its_full_unlisted_copy(
        cluster, tmp_path):
    common = fast_control(tmp_path, DWELL_S)
    # n1: the clients' entry, no RAM to spare (never a copy's target, never killed)
    n1 = cluster.add("n1", extra=common + ["--memory-limit", "64KiB"])
    n2 = pausing_copies(cluster, "n2", n1, common, PAUSE_S)
    slow = cluster.add("slow", extra=common + ["--compute-slowdown", "10"])
    cluster.wait_converged(alive=2)
    w = rand((2048, 256), 5)
    with Client(n1.socket) as c:
        info = c.deploy("w", w, replicas=1)
    on_slow = [int(i) for i, h in info["placement"].items() if slow.id in h]
    assert on_slow, info["placement"]

    with ExactLoad(n1, "w", w, rows=256) as load:
        wait_for(lambda: half_copies(n2), 120, "a copy to n2 to be half written")
        idx = int(half_copies(n2)[0].name.split(".")[0])
        assert idx in on_slow
        assert f"copying w block {idx} to {n2.id[:8]} for a migrate" in slow.log_path.read_text()
        slow.kill9()                              # the source: the plan is never switched
        # the receiver finishes its write after the pause: a full copy, unlisted
        wait_for(lambda: idx in n2.status()["blocks"].get("w", []), 60,
                 "n2 to hold the full copy")
        wait_for(lambda: "adopted the unlisted copy of w block" in n2.log_path.read_text(),
                 120, "n2 to adopt its copy once the source is declared dead")
        # block idx has no other copy: served again means n1 routes it to n2's copy
        served = load.served
        wait_for(lambda: load.served > served + 5, 60, "requests to be served again")
        failed = len(load.failures)

        slow.extra = common                       # back, still slow; its plan is stale
        slow.bootstrap = [n1.address]
        slow.start()
        time.sleep(3 * DWELL_S)
        served = load.served
        wait_for(lambda: load.served > served + 5, 60, "requests after the restart")
    wrong = [f for f in load.failures if "AssertionError" in f]
    assert wrong == [], wrong                     # failed requests, never a wrong answer
    assert len(load.failures) == failed, load.failures[failed:]   # none after adoption
    assert held([n1, n2, slow], "w").get(idx, 0) >= 1
