"""The bulk deploy path (issue 13): block order and per-holder overlap, one validation per
process, no programmed copy of a private buffer, and the client's in-memory ``.npy``."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import numpy as np
import pytest

from compute.crossbar import ProgrammedMatrix
from compute.device import get_preset
from compute.executor import Executor
from compute.model import FileMatrix
from compute.modelfile import read_model
from compute.partition import Block, PartitionPlan
from node.client import npy_for_daemon
from node.memory.statedb import StateDB
from node.memory.store import BlockStore, StoreError
from node.metrics import Metrics
from node.work import holder as holder_mod
from node.work.holder import BlockHolder, Provenance, program_block
from node.work.models import DEPLOY_IN_FLIGHT, ModelManager, _read_rows, interleave
from node.work.plans import PlanBook
from protocol.work import StoreBlock

IDEAL = get_preset("ideal")


def blocks(owners: list[str]) -> list[Block]:
    out, row = [], 0
    for i, node in enumerate(owners):
        out.append(Block(i, row, row + 128, [node]))
        row += 128
    return out


def test_interleave_takes_holders_in_turn_and_keeps_every_block():
    plan = blocks(["a", "a", "a", "b", "b", "c"])
    order = interleave(plan)
    assert [b.nodes[0] for b in order] == ["a", "b", "c", "a", "b", "a"]
    assert sorted(b.index for b in order) == list(range(6))


def test_program_block_keeps_an_owned_buffer_and_copies_a_shared_one():
    w = np.random.default_rng(0).standard_normal((128, 64)).astype(np.float32)
    owned = program_block(w, IDEAL, 3, 128, owned=True)
    shared = program_block(w, IDEAL, 3, 128, owned=False)
    assert np.shares_memory(owned.weights, w)
    assert not np.shares_memory(shared.weights, w)
    x = np.ones((64, 2), np.float32)
    np.testing.assert_array_equal(owned.matmul(x), shared.matmul(x))
    assert (owned.row_offset, owned.seed, owned.shape) == (128, 3, (128, 64))
    # a device that really programs never aliases its input, owned or not
    rram = program_block(w, get_preset("rram"), 3, 0, owned=True)
    assert rram.weights is None and rram.codes is not None


@pytest.mark.parametrize("seed", [-1, 1 << 63, True, 1.5])
def test_program_block_refuses_a_bad_seed_with_a_clear_error(seed):
    w = np.zeros((4, 4), np.float32)
    with pytest.raises(StoreError, match="seed"):
        program_block(w, IDEAL, seed, 0, owned=True)


def test_read_rows_says_which_rows_are_a_private_buffer(tmp_path):
    w = np.arange(512 * 8, dtype=np.float32).reshape(512, 8)
    path = tmp_path / "w.npy"
    np.save(path, w)
    blk = Block(1, 128, 256, ["a"])
    from_file, owned = _read_rows(FileMatrix(str(path), 128, w.shape, w.dtype), blk)
    assert owned and from_file.dtype == np.float32
    np.testing.assert_array_equal(from_file, w[128:256])
    view, owned = _read_rows(w, blk)
    assert not owned and np.shares_memory(view, w)          # the client's message: copy later
    converted, owned = _read_rows(w.astype(np.float64), blk)
    assert owned and converted.dtype == np.float32           # a fresh conversion: keep it


@pytest.fixture
def holder(tmp_path: Path):
    db = StateDB(tmp_path / "state.db")
    store = BlockStore(tmp_path, db, budget=64 << 20)
    executor = Executor(workers=1)
    h = BlockHolder(IDEAL, store, executor, Metrics(), PlanBook(db))
    yield h
    db.close()


def count_validations(monkeypatch) -> list[int]:
    calls: list[int] = []
    real = holder_mod.as_matrix

    def counting(value, what, ndim=2):
        calls.append(1)
        return real(value, what, ndim)
    monkeypatch.setattr(holder_mod, "as_matrix", counting)
    return calls


def test_rows_checked_in_this_process_are_not_scanned_again(holder, monkeypatch):
    calls = count_validations(monkeypatch)
    w = np.random.default_rng(1).standard_normal((128, 32)).astype(np.float32)
    asyncio.run(holder.store_block("m", 0, 0, w, None, 0, Provenance(checked=True)))
    assert calls == []
    asyncio.run(holder.store_block("m", 1, 128, w, None, 0))
    assert calls == [1]
    with holder.store.reading("m", 0) as blk:
        np.testing.assert_array_equal(blk.matrix.weights, w)


def test_a_peers_block_is_validated_once_and_kept_without_a_copy(holder, monkeypatch):
    calls = count_validations(monkeypatch)
    w = np.random.default_rng(2).standard_normal((128, 32)).astype(np.float32)
    asyncio.run(holder._serve(StoreBlock(1, "m", 0, 0, w, None, 5)))
    assert calls == [1]
    with holder.store.reading("m", 0) as blk:
        assert np.shares_memory(blk.matrix.weights, w)       # the message's buffer, no copy
    assert holder.store.path("m", 0).is_file()              # and it was persisted


def test_a_peers_non_finite_block_is_still_refused(holder):
    w = np.ones((128, 32), np.float32)
    w[77, 3] = np.nan
    with pytest.raises(StoreError, match="NaN or infinity"):
        asyncio.run(holder._serve(StoreBlock(1, "m", 0, 0, w, None, 5)))
    assert holder.store.names() == {} and holder.store.disk_used == 0


class _FakeJobs:
    """Records which holders have blocks in flight at once. Each placement is held until
    ``DEPLOY_IN_FLIGHT`` are in flight together (at most 2 s): the peaks then show the
    deploy's bounds, not how fast a busy machine's thread pool happened to be."""

    def __init__(self) -> None:
        self.full: asyncio.Event | None = None
        self.inflight: dict[str, int] = {}
        self.peak: dict[str, int] = {}
        self.both_busy = False
        self.seen: list[tuple[int, Provenance]] = []

    async def _place_block(self, job, name, blk, w, device, seed, rows) -> None:
        node = blk.nodes[0]
        self.inflight[node] = self.inflight.get(node, 0) + 1
        self.peak[node] = max(self.peak.get(node, 0), self.inflight[node])
        self.both_busy |= sum(1 for v in self.inflight.values() if v) == 2
        self.total_peak = max(getattr(self, "total_peak", 0), sum(self.inflight.values()))
        self.seen.append((blk.index, rows))
        np.testing.assert_array_equal(w[blk.row_start:blk.row_stop][:, 0],
                                      np.arange(blk.row_start, blk.row_stop, dtype=np.float32))
        self.full = self.full or asyncio.Event()
        if sum(self.inflight.values()) >= DEPLOY_IN_FLIGHT:
            self.full.set()
        try:
            await asyncio.wait_for(self.full.wait(), 2.0)
        except asyncio.TimeoutError:     # the deploy never had that many out: peaks say so
            pass
        self.inflight[node] -= 1


def test_each_holder_gets_its_own_blocks_in_flight(tmp_path):
    """The old single gate sent all of one node's blocks, then the other's: never both."""
    jobs = _FakeJobs()
    mm = ModelManager.__new__(ModelManager)
    mm.jobs = jobs
    mm.holder = type("H", (), {"executor": Executor(workers=1)})()
    w = np.repeat(np.arange(1024, dtype=np.float32)[:, None], 4, axis=1)
    plan = PartitionPlan((1024, 4), None, blocks(["a"] * 4 + ["b"] * 4))
    asyncio.run(mm._place_layer(None, "m", plan, w, None, 0, checked=True))
    assert jobs.both_busy
    assert jobs.peak == {"a": 2, "b": 2} and jobs.total_peak == 4
    assert {jobs.seen[0][0] // 4, jobs.seen[1][0] // 4} == {0, 1}   # a's and b's first
    assert sorted(i for i, _ in jobs.seen) == list(range(8))
    assert all(rows.checked and not rows.owned for _, rows in jobs.seen)


def test_blocks_in_flight_are_bounded_whatever_the_number_of_holders():
    jobs = _FakeJobs()
    mm = ModelManager.__new__(ModelManager)
    mm.jobs = jobs
    mm.holder = type("H", (), {"executor": Executor(workers=1)})()
    owners = [f"n{i}" for i in range(8)] * 2
    w = np.repeat(np.arange(128 * len(owners), dtype=np.float32)[:, None], 4, axis=1)
    plan = PartitionPlan(w.shape, None, blocks(owners))
    asyncio.run(mm._place_layer(None, "m", plan, w, None, 0, checked=True))
    assert jobs.total_peak == DEPLOY_IN_FLIGHT
    assert len(jobs.seen) == len(owners)


def test_npy_for_daemon_is_a_readable_npy_path_gone_afterwards():
    w = np.random.default_rng(3).standard_normal((300, 7)).astype(np.float32)
    with npy_for_daemon(w) as path:
        assert path.is_absolute() and path.suffix == ".npy"
        model = read_model(path)                  # what the daemon does with the path
        np.testing.assert_array_equal(model.layers[0].weight[0:300], w)
        target = os.readlink(path) if path.is_symlink() else None
    assert not path.exists()
    if target is not None:                        # the memfd goes with its descriptor
        deadline = time.monotonic() + 10           # (closed on a thread: it can take a moment)
        while time.monotonic() < deadline and _is_deploy_memfd(target):
            time.sleep(0.01)
        assert not _is_deploy_memfd(target)


def _is_deploy_memfd(fd_path: str) -> bool:
    try:
        return os.readlink(fd_path).startswith("/memfd:sedma-deploy")
    except OSError:
        return False
