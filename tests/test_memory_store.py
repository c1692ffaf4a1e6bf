"""The tiered block store: more blocks than RAM, reads pinned, hot blocks in RAM, restarts."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from compute.crossbar import ProgrammedMatrix
from compute.device import get_preset
from node.memory.dualmemory import DualMemory
from node.memory.statedb import StateDB
from node.memory.store import BlockStore, Resident, StoreError

ROWS, COLS = 128, 256
IDEAL = get_preset("ideal")
BLOCK = ROWS * COLS * 4          # bytes of one ideal block


@pytest.fixture
def db(tmp_path: Path):
    d = StateDB(tmp_path / "state.db")
    yield d
    d.close()


def weights(i: int) -> np.ndarray:
    return np.random.default_rng(i).standard_normal((ROWS, COLS)).astype(np.float32)


def put(store: BlockStore, name: str, i: int, profile=IDEAL) -> np.ndarray:
    w = weights(i)
    store.reserve(profile.resident_bytes(w.shape), name)
    try:
        block = Resident(name, i, 0, profile.name, 7, ProgrammedMatrix.program(w, profile, 7))
        store.persist(block)
    finally:
        store.release(profile.resident_bytes(w.shape))
    store.add(block)
    return w


def read(store: BlockStore, name: str, i: int, x: np.ndarray, now: float) -> np.ndarray:
    with store.reading(name, i, now=now) as blk:
        return blk.matrix.matmul(x)


def test_holds_four_times_its_ram_and_every_block_reads_back_exactly(tmp_path, db):
    mem = DualMemory()
    store = BlockStore(tmp_path, db, budget=2 * BLOCK, disk_budget=8 * BLOCK, memory=mem)
    ws = [put(store, "m", i) for i in range(8)]
    assert store.resident_bytes <= store.budget
    assert store.disk_used == 8 * BLOCK
    assert sorted(t for t in store.tiers()["m"].values()).count(1) >= 6
    x = np.random.default_rng(99).standard_normal((COLS, 3)).astype(np.float32)
    for rnd in range(2):
        for i, w in enumerate(ws):
            np.testing.assert_array_equal(read(store, "m", i, x, now=100 + rnd * 10 + i), w @ x)
    assert store.resident_bytes <= store.budget
    with pytest.raises(StoreError, match="block budget"):
        put(store, "m", 8)


def test_disk_budget_defaults_to_ram_so_a_node_without_tier_1_refuses_as_before(tmp_path, db):
    store = BlockStore(tmp_path, db, budget=BLOCK)
    put(store, "m", 0)
    with pytest.raises(StoreError):
        put(store, "m", 1)


def test_a_frequently_read_block_is_promoted_and_a_one_off_read_does_not_flush_it(tmp_path, db):
    mem = DualMemory()
    store = BlockStore(tmp_path, db, budget=BLOCK, disk_budget=4 * BLOCK, memory=mem)
    for i in range(3):
        put(store, "m", i)
    x = np.ones((COLS, 1), np.float32)
    first = [k for k, t in store.tiers()["m"].items() if t == 0]
    hot = next(i for i in range(3) if i not in first)
    for t in range(6):
        read(store, "m", hot, x, now=100 + t)
    assert store.tiers()["m"][hot] == 0          # read often: it earned the RAM
    cold = next(i for i in range(3) if i != hot)
    read(store, "m", cold, x, now=107)           # one scan-like read
    assert store.tiers()["m"][hot] == 0 and store.tiers()["m"][cold] == 1


def test_a_block_being_read_is_never_evicted_under_its_reader(tmp_path, db):
    mem = DualMemory()
    store = BlockStore(tmp_path, db, budget=BLOCK, disk_budget=4 * BLOCK, memory=mem)
    put(store, "m", 0)
    put(store, "m", 1)
    x = np.ones((COLS, 1), np.float32)
    for t in range(3):
        read(store, "m", 0, x, now=100 + t)
    assert store.tiers()["m"][0] == 0
    with store.reading("m", 0, now=110) as blk:
        for t in range(20):                       # block 1 becomes far hotter meanwhile
            read(store, "m", 1, x, now=111 + t * 0.01)
            assert store.tiers()["m"][0] == 0     # pinned: still in RAM
        np.testing.assert_array_equal(blk.matrix.matmul(x), weights(0) @ x)
    read(store, "m", 1, x, now=112)
    assert store.tiers()["m"] == {0: 1, 1: 0}     # unpinned: now it can go


def test_prefetch_loads_a_predicted_block_and_counts_hits_and_waste(tmp_path, db):
    mem = DualMemory()
    store = BlockStore(tmp_path, db, budget=BLOCK, disk_budget=4 * BLOCK, memory=mem)
    for i in range(3):
        put(store, "m", i)
    target = next(i for i, t in store.tiers()["m"].items() if t == 1)
    store.predicted = {("m", target): 1}
    assert store.prefetch("m", target, now=100)
    assert store.tiers()["m"][target] == 0
    x = np.ones((COLS, 1), np.float32)
    read(store, "m", target, x, now=101)
    assert (store.stats.issued, store.stats.used, store.stats.tier0_reads) == (1, 1, 1)
    other = next(i for i, t in store.tiers()["m"].items() if t == 1)
    store.predicted = {("m", other): 1}
    assert store.prefetch("m", other, now=102)
    store.predicted = {("m", target): 1}   # the guess was wrong: target comes back
    assert store.prefetch("m", target, now=103)
    assert store.stats.wasted == 1 and store.stats.bytes_prefetched == 3 * BLOCK


def test_restart_brings_back_every_block_most_used_in_ram(tmp_path, db):
    mem = DualMemory()
    store = BlockStore(tmp_path, db, budget=BLOCK, disk_budget=4 * BLOCK, memory=mem)
    for i in range(3):
        put(store, "m", i)
    x = np.ones((COLS, 1), np.float32)
    for t in range(5):
        read(store, "m", 2, x, now=time.time() + t)
    again = BlockStore(tmp_path, db, budget=BLOCK, disk_budget=4 * BLOCK, memory=mem)
    assert again.load_all() == 3
    assert again.tiers()["m"] == {0: 1, 1: 1, 2: 0}
    np.testing.assert_array_equal(read(again, "m", 0, x, now=2e9), weights(0) @ x)


def test_a_corrupt_tier_1_file_is_forgotten_at_start(tmp_path, db):
    store = BlockStore(tmp_path, db, budget=BLOCK, disk_budget=4 * BLOCK)
    put(store, "m", 0)
    put(store, "m", 1)
    victim = next(i for i, t in store.tiers()["m"].items() if t == 1)
    store.path("m", victim).write_bytes(b"garbage")
    again = BlockStore(tmp_path, db, budget=BLOCK, disk_budget=4 * BLOCK)
    assert again.load_all() == 1 and victim not in again.tiers()["m"]


def test_concurrent_readers_and_prefetch_keep_the_budget_and_the_results(tmp_path, db):
    mem = DualMemory()
    store = BlockStore(tmp_path, db, budget=2 * BLOCK, disk_budget=6 * BLOCK, memory=mem)
    ws = [put(store, "m", i) for i in range(6)]
    x = np.random.default_rng(5).standard_normal((COLS, 2)).astype(np.float32)
    errors: list[BaseException] = []

    def worker(k):
        try:
            for r in range(30):
                i = (k + r) % 6
                np.testing.assert_array_equal(read(store, "m", i, x, now=None), ws[i] @ x)
                store.prefetch("m", (i + 1) % 6)
                assert store.used <= store.budget
        except BaseException as exc:
            errors.append(exc)
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert store.resident_bytes == sum(b.nbytes for b in store.blocks() if b.tier == 0)


def test_a_paused_copy_write_has_half_the_bytes_on_disk_then_the_same_file(tmp_path):
    """The testing aid behind SEDMA_TEST_PAUSE_COPY_S: while the write waits, the temp
    file holds exactly the first half (fsync'd) and the block file does not exist yet;
    afterwards the file is byte for byte what an unpaused write gives."""
    import threading

    from node.memory.store import _atomic_write
    parts = [b"head", memoryview(bytes(range(256)) * 40), b"tail-bytes"]
    whole = b"".join(bytes(p) for p in parts)
    path = tmp_path / "0.blk"
    seen = {}

    def look():
        # Wait (bounded) until the first half is all there: the half may take several
        # write calls, and a look at the first non-empty size raced them.
        tmp = path.with_suffix(".blk.tmp")
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and (
                not tmp.exists() or tmp.stat().st_size < len(whole) // 2):
            time.sleep(0.001)
        seen["tmp"], seen["final"] = tmp.read_bytes(), path.exists()
    t = threading.Thread(target=look)
    t.start()
    _atomic_write(path, parts, pause_s=2.0)    # long enough for a loaded machine
    t.join(5)
    assert seen["tmp"] == whole[: len(whole) // 2] and not seen["final"]
    assert path.read_bytes() == whole


def test_copy_pause_is_off_unless_set_and_bounded(monkeypatch):
    from node.memory.store import copy_pause_s
    monkeypatch.delenv("SEDMA_TEST_PAUSE_COPY_S", raising=False)
    assert copy_pause_s() == 0.0
    for raw, want in (("2.5", 2.5), ("-3", 0.0), ("1e9", 600.0), ("soon", 0.0)):
        monkeypatch.setenv("SEDMA_TEST_PAUSE_COPY_S", raw)
        assert copy_pause_s() == want
