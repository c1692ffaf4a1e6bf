"""One-shot matmul (issue 13): a share on the ideal device is computed on every compute
thread, straight into its rows of the job's output, without a second NaN scan."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from compute.device import get_preset
from compute.executor import Executor
from node.memory.statedb import StateDB
from node.memory.store import BlockStore, StoreError
from node.metrics import Metrics
from node.work.holder import BlockHolder, _row_spans
from node.work.plans import PlanBook

IDEAL = get_preset("ideal")


def test_row_spans_cover_every_row_once():
    for rows, workers in [(2048, 2), (100, 4), (10, 8), (1, 1), (1000, 3)]:
        spans = _row_spans(rows, workers)
        assert spans[0][0] == 0 and spans[-1][1] == rows
        assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
        assert len(spans) <= workers


@pytest.fixture
def holder(tmp_path: Path):
    db = StateDB(tmp_path / "state.db")
    h = BlockHolder(IDEAL, BlockStore(tmp_path, db, budget=1 << 20), Executor(workers=2),
                    Metrics(), PlanBook(db))
    yield h
    db.close()


def test_an_ideal_share_is_exact_and_lands_in_the_given_rows(holder):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((300, 40)).astype(np.float32)
    b = rng.standard_normal((40, 7)).astype(np.float32)
    out = np.full((500, 7), -1.0, np.float32)
    y = asyncio.run(holder.compute_share(a, b, None, 3, 128, out[100:400]))
    assert np.shares_memory(y, out)
    np.testing.assert_array_equal(out[100:400], a @ b)
    assert (out[:100] == -1).all() and (out[400:] == -1).all()
    np.testing.assert_array_equal(asyncio.run(holder.compute_share(a, b, None, 3, 128)), a @ b)


def test_a_non_ideal_share_still_goes_through_the_engine(holder):
    rng = np.random.default_rng(1)
    a = rng.standard_normal((128, 64)).astype(np.float32)
    b = rng.standard_normal((64, 3)).astype(np.float32)
    y = asyncio.run(holder.compute_share(a, b, "rram", 3, 0))
    assert y.shape == (128, 3) and not np.array_equal(y, a @ b)   # device noise and ADC
    assert np.corrcoef(y.ravel(), (a @ b).ravel())[0, 1] > 0.9


def test_a_share_of_no_rows_is_an_empty_product_in_no_time(holder):
    # zero rows get an empty product, not an internal error (max over no spans)...
    a = np.ones((0, 16), np.float32)
    b = np.ones((16, 5), np.float32)
    y, seconds = asyncio.run(holder.compute_share_timed(a, b, None, 3, 0))
    assert y.shape == (0, 5) and seconds == 0.0
    # ...and a peer's chunk, which is checked, is refused with the reason
    with pytest.raises(StoreError, match="empty"):
        asyncio.run(holder.compute_share_timed(a, b, None, 3, 0, check_a=True))


def test_a_share_with_a_bad_seed_is_refused(holder):
    a = np.ones((4, 4), np.float32)
    with pytest.raises(StoreError, match="seed"):
        asyncio.run(holder.compute_share(a, a, None, -1, 0))


def test_the_result_file_written_from_row_pieces_holds_what_np_save_writes(tmp_path: Path):
    # same array and data bytes as np.save; the header is padded to a page (node/shm.py,
    # result files: a local client maps the data straight from the file)
    from node import shm
    from node.work.jobs import _save_npy_rows
    y = np.random.default_rng(2).standard_normal((10, 6)).astype(np.float32)
    _save_npy_rows(tmp_path / "r.npy", y.shape, [(7, y[7:]), (0, y[:3]), (3, y[3:7])])
    np.save(tmp_path / "s.npy", y)
    got = np.load(tmp_path / "r.npy")
    assert got.dtype == y.dtype and got.shape == y.shape and np.array_equal(got, y)
    raw = (tmp_path / "r.npy").read_bytes()
    assert raw[shm.FILE_DATA_OFFSET:shm.FILE_DATA_OFFSET + y.nbytes] == y.tobytes()
    assert (tmp_path / "s.npy").read_bytes().endswith(y.tobytes())
    assert not (tmp_path / "r.tmp").exists()


def test_this_nodes_share_computes_while_the_peers_share_is_still_being_handed_over():
    """oneshot4: this node's own rows start on its compute threads at once, alongside the
    sealing of the peer's operands, instead of after it (a core stood idle meanwhile)."""
    from compute.partition import Block, PartitionPlan
    from node.work.jobs import Job, JobManager

    events: list[str] = []
    a, b = np.ones((128, 8), np.float32), np.ones((8, 4), np.float32)

    class Holder:
        async def compute_share(self, a, b, device, seed, row_offset, out):
            events.append("own compute")
            out[...] = a @ b

    class Fake:
        node_id = "me"
        holder = Holder()
        metrics = Metrics()
        share_meter = type("M", (), {"record": lambda *args, **kw: None})()
        memory = type("D", (), {"record_share": lambda *args: None})()
        results = None
        slots = staticmethod(lambda: [])
        _share = JobManager._share
        _handover_delay = staticmethod(lambda: 0.5)

        class executor:
            @staticmethod
            async def run(fn, *args):
                events.append("saved")

        def _oneshot_plan(self, job, shape, n, slots, device):
            return PartitionPlan((128, 8), None, [Block(0, 0, 64, ["peer"]),
                                                  Block(1, 64, 128, ["me"])])

        async def _chunks_on(self, node, job_id, a, b, chunks, device, seed, pieces, sealing):
            events.append("peer sealing")
            await asyncio.sleep(0.05)            # sealing and writing the peer's operands
            events.append("peer handed over")
            for r0, r1 in chunks:
                pieces[r0] = a[r0:r1] @ b

    fake = Fake()
    fake.results = Path("/nonexistent")
    asyncio.run(JobManager._matmul(fake, Job("j", "matmul", "running"), a, b, None, 0))
    assert events == ["peer sealing", "own compute", "peer handed over", "saved"]


def test_operands_are_validated_in_row_spans_and_bad_ones_refused(holder):
    from node.work.holder import validate_operands
    rng = np.random.default_rng(3)
    a = rng.standard_normal((700, 30)).astype(np.float32)
    b = rng.standard_normal((30, 5)).astype(np.float32)
    ex = holder.executor
    got_a, got_b = asyncio.run(validate_operands(ex, (a, "A"), (b, "B")))
    assert got_a is a and got_b is b                      # float32: no copy
    bad = a.copy()
    bad[650, 3] = np.nan                                  # in the last row span
    with pytest.raises(StoreError, match="A contains NaN or infinity"):
        asyncio.run(validate_operands(ex, (bad, "A"), (b, "B")))
    inf_b = b.copy()
    inf_b[0, 0] = np.inf
    with pytest.raises(StoreError, match="B contains NaN or infinity"):
        asyncio.run(validate_operands(ex, (a, "A"), (inf_b, "B")))
    f64, _ = asyncio.run(validate_operands(ex, (a.astype(np.float64), "A"), (b, "B")))
    assert f64.dtype == np.float32 and np.array_equal(f64, a)   # converted as before
    with pytest.raises(StoreError, match="must be a 2-D array"):
        asyncio.run(validate_operands(ex, (a[0], "A"), (b, "B")))
