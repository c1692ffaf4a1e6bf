"""The prefetcher on a real store: several layers in flight, the budget held throughout,
every read exact and covered by a prefetch once the order is learned.

Disk reads are made slow on purpose (a reader that sleeps before reading) so the test sees
what the bench sees on a real disk: reads slower than compute, which only loads in flight
at once can hide.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from node.memory.blockio import BlockReader
from node.memory.dualmemory import DualMemory
from node.memory.prefetcher import Prefetcher
from node.memory.statedb import StateDB
from node.memory.store import BlockStore
from tests.test_memory_store import BLOCK, COLS, put

LAYERS = 8
READ_S = 0.08       # a disk read, 4x a compute: one load at a time could not keep up


class SlowReader(BlockReader):
    """A reader whose every load takes READ_S longer; counts loads at once."""

    def __init__(self) -> None:
        super().__init__(threads=1)
        self.now = self.most = 0
        self._lock = threading.Lock()

    def read(self, path, expect=None):
        with self._lock:
            self.now += 1
            self.most = max(self.most, self.now)
        try:
            time.sleep(READ_S)
            return super().read(path, expect)
        finally:
            with self._lock:
                self.now -= 1


@pytest.fixture
def db(tmp_path: Path):
    d = StateDB(tmp_path / "state.db")
    yield d
    d.close()


def run_passes(store, mem, enabled, passes, ws):
    """Layer-by-layer reads as the holder makes them: after() on the loop, the read on a
    worker; returns per-pass (reads, tier-0 reads, late) and the highest tier-0 use seen."""
    x = np.random.default_rng(3).standard_normal((COLS, 2)).astype(np.float32)
    peak, stop = [0], threading.Event()

    def watch():
        while not stop.is_set():
            peak[0] = max(peak[0], store.used)
            time.sleep(0.001)

    def compute(i):
        with store.reading("m", i) as blk:
            y = blk.matrix.matmul(x)
        time.sleep(READ_S / 4)
        np.testing.assert_array_equal(y, ws[i] @ x)

    async def main():
        pf = Prefetcher(store, mem, enabled=enabled)
        loop = asyncio.get_running_loop()
        out = []
        try:
            for _ in range(passes):
                s = store.stats
                before = (s.reads, s.tier0_reads, s.late)
                for i in range(LAYERS):
                    pf.after("m", i)
                    await loop.run_in_executor(None, compute, i)
                s = store.stats
                out.append((s.reads - before[0], s.tier0_reads - before[1], s.late - before[2]))
        finally:
            pf.close()
        return out

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        return asyncio.run(main()), peak[0]
    finally:
        stop.set()
        watcher.join()


def layered_store(tmp_path, db):
    """A store with room for 4 of LAYERS blocks in RAM, every layer deployed, slow reads."""
    reader = SlowReader()
    store = BlockStore(tmp_path, db, budget=4 * BLOCK, disk_budget=LAYERS * BLOCK,
                       memory=DualMemory(), reader=reader)
    return store, reader, [put(store, "m", i) for i in range(LAYERS)]


def test_several_layers_load_at_once_within_the_budget_and_every_read_is_covered(tmp_path, db):
    store, reader, ws = layered_store(tmp_path, db)
    per_pass, peak = run_passes(store, store.memory, True, passes=4, ws=ws)
    assert peak <= store.budget
    assert store.stats.depth == 3                 # 4 blocks fit: the read + 3 ahead
    assert store.stats.max_in_flight >= 2 and reader.most >= 2
    # Learned: the reads of the last two passes found their layer in RAM or on its way
    # (>= 90 %: a load queued but not yet started on a starved machine counts as a miss).
    reads = sum(r for r, _, _ in per_pass[-2:])
    covered = sum(h + lt for _, h, lt in per_pass[-2:])
    assert reads == 2 * LAYERS and covered >= 0.9 * reads, per_pass
    assert store.stats.accuracy() == 1.0 and store.stats.bytes_wasted == 0
    assert store.stats.bytes_transient == 0       # nothing read around the budget


def test_prefetch_off_reads_the_same_layers_on_demand_with_the_same_loader(tmp_path, db):
    store, reader, ws = layered_store(tmp_path, db)
    per_pass, peak = run_passes(store, store.memory, False, passes=2, ws=ws)
    assert peak <= store.budget
    assert store.stats.issued == 0 and reader.most == 1      # one read at a time, on demand
    reads, hits, late = per_pass[-1]
    assert reads == LAYERS and late == 0 and hits < LAYERS
