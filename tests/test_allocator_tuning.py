"""The daemon's glibc tuning (node/daemon.py limit_arenas): request-sized buffers freed
by one request are reused by the next without being faulted in again."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from node import daemon
from tests.daemons import ROOT, sedma_env

pytestmark = pytest.mark.skipif(daemon._libc() is None, reason="needs glibc's mallopt")

#: A B=64 request's buffers at N=4096 (X's copy and Y: 1 MiB, a peer's reply: 512 KiB),
#: allocated, written and freed 50 times; prints page faults per round.
PROBE = textwrap.dedent("""
    import resource, numpy as np
    from node import daemon
    daemon.limit_arenas()
    def faults():
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(3):
        a = np.empty(1 << 20, np.uint8); a.fill(1); del a
    start = faults()
    for _ in range(50):
        a = np.empty(1 << 20, np.uint8); a.fill(1)
        b = np.empty(1 << 19, np.uint8); b.fill(2)
        del a, b
    print((faults() - start) / 50)
""")


def test_request_sized_buffers_are_not_faulted_in_again_each_time():
    env = {k: v for k, v in sedma_env().items() if not k.startswith("MALLOC_")}
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                         env=env, cwd=ROOT, timeout=60, check=True).stdout
    per_round = float(out)
    # 1.5 MiB is 384 pages: trimmed and faulted in again every round, as with only the
    # mmap threshold set, that is ~350 faults a round; kept, a handful
    assert per_round < 32, f"{per_round} page faults per round of request buffers"
