"""Loading tier-1 block files: exact bytes, sizes checked, direct or buffered, and a damaged
file is an error on read, never a wrong result."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from node.memory.blockio import BlockReader, cached_pages
from node.memory.dualmemory import DualMemory
from node.memory.statedb import StateDB
from node.memory.store import BlockStore, StoreError
from tests.test_memory_store import BLOCK, COLS, put


@pytest.fixture
def db(tmp_path: Path):
    d = StateDB(tmp_path / "state.db")
    yield d
    d.close()


@pytest.mark.parametrize("direct", [True, False])
@pytest.mark.parametrize("threads", [1, 4])
@pytest.mark.parametrize("size", [1, 4095, 4096, 3 * 8192 + 17])
def test_reads_back_exactly_the_file_whatever_its_size(tmp_path, direct, threads, size):
    data = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes()
    path = tmp_path / "b.blk"
    path.write_bytes(data)
    reader = BlockReader(threads=threads, chunk=8192, direct=direct)
    try:
        got = reader.read(path, expect=size)
    finally:
        reader.close()
    assert bytes(got) == data and len(got) == size
    assert got.readonly                      # arrays decoded from it must not be written


def test_a_file_shorter_than_its_record_is_refused_before_reading(tmp_path):
    path = tmp_path / "b.blk"
    path.write_bytes(b"x" * 100)
    with pytest.raises(OSError, match="at least 200 expected"):
        BlockReader(threads=1).read(path, expect=200)


def test_chunks_must_suit_direct_io():
    with pytest.raises(ValueError):
        BlockReader(chunk=1000)


def test_buffered_fallback_leaves_nothing_in_the_page_cache(tmp_path):
    path = tmp_path / "b.blk"
    path.write_bytes(os.urandom(1 << 20))
    os.sync()
    fd = os.open(path, os.O_RDONLY)
    try:
        assert cached_pages(fd)[0] > 0          # just written: cached, so the check can fail
    finally:
        os.close(fd)
    BlockReader(threads=2, chunk=1 << 18, direct=False).read(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        resident, pages = cached_pages(fd)
    finally:
        os.close(fd)
    assert pages == 256 and resident == 0


def _tier1(store) -> int:
    return next(i for i, t in store.tiers()["m"].items() if t == 1)


def test_a_tier_1_block_damaged_on_disk_fails_its_read_with_a_clear_error(tmp_path, db):
    store = BlockStore(tmp_path, db, budget=BLOCK, disk_budget=4 * BLOCK, memory=DualMemory())
    for i in range(3):
        put(store, "m", i)
    x = np.ones((COLS, 1), np.float32)
    victim = _tier1(store)
    path = store.path("m", victim)
    raw = bytearray(path.read_bytes())
    path.write_bytes(bytes(raw[: len(raw) // 2]))            # truncated
    with pytest.raises(StoreError, match=f"block {victim} of 'm' cannot be read"):
        with store.reading("m", victim) as blk:
            blk.matrix.matmul(x)
    path.write_bytes(b"\xff" * len(raw))                     # same size, not a block
    with pytest.raises(StoreError, match="cannot be read"):
        with store.reading("m", victim):
            pass
    assert not store.prefetch("m", victim)                   # logged, not loaded
    assert store.used <= store.budget
    other = next(i for i in range(3) if i != victim)
    with store.reading("m", other) as blk:                   # the rest still serves
        assert blk.matrix.shape[1] == COLS


def test_a_buffer_is_reused_only_once_nothing_refers_to_it(tmp_path):
    a, b = tmp_path / "a.blk", tmp_path / "b.blk"
    a.write_bytes(np.full(20000, 1, np.float32).tobytes())
    b.write_bytes(np.full(20000, 2, np.float32).tobytes())
    reader = BlockReader(threads=2, chunk=8192)
    held = np.frombuffer(reader.read(a), np.float32)[10:]      # a view of a view, kept
    got_b = np.frombuffer(reader.read(b), np.float32)
    assert reader.reused == 0                   # a's buffer is still referred to
    assert (held == 1).all() and (got_b == 2).all()
    del held
    again = np.frombuffer(reader.read(a), np.float32)
    assert reader.reused == 1 and (again == 1).all() and (got_b == 2).all()
    del got_b, again
    reader.read(b)
    reader.read(b)
    assert reader.reused == 3
    assert len(reader._lent) <= 1 + reader.spare         # spares beyond the limit are freed


def test_dropping_blocks_gives_their_buffers_back(tmp_path):
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"{i}.blk")
        paths[-1].write_bytes(bytes(range(256)) * (40 + i))   # three sizes: no reuse
    reader = BlockReader(threads=1, spare=1)
    views = [reader.read(p) for p in paths]
    assert len(reader._lent) == 3
    del views
    reader.trim()
    assert len(reader._lent) == 1                           # one spare kept
