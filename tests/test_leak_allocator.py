"""The daemon's allocator tuning keeps medium numpy buffers on mmap (the soak's RSS growth).

glibc's default raises its mmap threshold after the first large free, so later 256 KiB
buffers land in the fragmenting heap arenas; ``node.allocator.tune`` fixes the threshold.
Each case runs in a fresh interpreter: mallopt changes are process-wide and one-way.
"""

from __future__ import annotations

import ctypes.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# mallinfo2().hblks counts live mmapped chunks: a buffer served by mmap adds one.
PROBE = textwrap.dedent("""
    import ctypes, json, sys
    import numpy as np
    sys.path.insert(0, {root!r})
    from node import allocator

    class MallInfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
            "uordblks", "fordblks", "keepcost")]

    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = MallInfo2
    tuned = allocator.tune() if {tune} else None
    big = np.ones(4 << 20, dtype=np.uint8)   # 4 MiB: mmapped, and its free raises the threshold
    del big
    before = libc.mallinfo2().hblks
    share = np.ones(256 * 256, dtype=np.float32)   # 256 KiB, a soak-sized operand
    print(json.dumps({{"tuned": tuned, "mmapped": libc.mallinfo2().hblks - before}}))
""")


def probe(tune: bool) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "SEDMA_MALLOC_TUNE"}
    out = subprocess.run([sys.executable, "-c", PROBE.format(root=str(ROOT), tune=tune)],
                         capture_output=True, text=True, timeout=60, check=True, env=env)
    return json.loads(out.stdout)


def glibc_with_mallinfo2() -> bool:
    try:
        ctypes.CDLL(ctypes.util.find_library("c")).mallinfo2  # noqa: B018
    except (OSError, AttributeError, TypeError):
        return False
    return True


pytestmark = pytest.mark.skipif(not glibc_with_mallinfo2(),
                                reason="needs glibc >= 2.33 (mallopt, mallinfo2)")


def test_default_glibc_moves_medium_buffers_into_the_heap_after_a_large_free():
    """The mechanism behind the growth: without tuning, the 256 KiB buffer is not mmapped."""
    assert probe(tune=False)["mmapped"] == 0


def test_tuned_allocator_keeps_medium_buffers_on_mmap():
    got = probe(tune=True)
    assert got["tuned"] is True
    assert got["mmapped"] == 1


def test_tuning_can_be_switched_off_for_ab_runs(monkeypatch):
    from node import allocator
    monkeypatch.setenv("SEDMA_MALLOC_TUNE", "0")
    assert allocator.tune() is False


def test_daemon_tunes_the_allocator_before_starting_its_executor():
    """The daemon calls tune() in start(), ahead of the executor threads (arenas are per thread)."""
    source = (ROOT / "node" / "daemon.py").read_text()
    start = source.index("async def start(")
    assert source.index("allocator.tune()", start) < source.index("Executor(", start)
