"""The lean per-request path (issue 13): fewer hops, same answers, same checks.

- A block read for a narrow X (B=1) is one executor hop (check X, pin, read, unpin on one
  thread), returns exactly W @ x, refuses a bad X from a peer and leaves the block unpinned.
- A wide X is read in chunks written into one output: exactly W @ X as well.
- A small message on an idle session goes to the link from the caller (no writer task),
  but never overtakes a queued message; a link with small frames still gets every
  fragment in order; a request still times out.
- A request ranks only the block's holders, in the same order as ranking everyone.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from compute.device import get_preset
from compute.executor import Executor
from nat.link import Link, LinkClosed
from node.memory.statedb import StateDB
from node.memory.store import BlockStore, StoreError
from node.metrics import Metrics
from node.net.session import Session
from node.work.holder import MIN_SPLIT_BATCH, BlockHolder
from node.work.plans import PlanBook
from protocol import PROTOCOL_VERSION
from protocol.handshake import Hello
from protocol.work import InferBlock

ROWS, COLS = 640, 384      # 5 tile rows of 128: the wide read splits into chunks


@pytest.fixture
async def holder(tmp_path: Path):
    db = StateDB(tmp_path / "state.db")
    executor = Executor(workers=2, cores=2)
    store = BlockStore(tmp_path, db, budget=1 << 30)
    h = BlockHolder(get_preset("ideal"), store, executor, Metrics(), PlanBook(db),
                    prefetch=False)
    try:
        yield h
    finally:
        executor.shutdown()
        db.close()


def _counting(executor: Executor) -> list:
    """Record every function the executor is asked to run (the hops)."""
    calls = []
    run = executor.run

    async def counted(fn, *args):
        calls.append(fn)
        return await run(fn, *args)
    executor.run = counted
    return calls


async def test_narrow_read_is_one_hop_and_exact(holder):
    rng = np.random.default_rng(1)
    w = rng.standard_normal((ROWS, COLS), dtype=np.float32)
    await holder.store_block("w", 0, 0, w, "ideal", 0)
    calls = _counting(holder.executor)
    for x in (rng.standard_normal((COLS, 1), dtype=np.float32),
              rng.standard_normal((COLS, MIN_SPLIT_BATCH - 1), dtype=np.float32)):
        calls.clear()
        y = await holder.infer_local("w", 0, x, 5, validate=True)
        assert len(calls) == 1, calls
        np.testing.assert_array_equal(y, w @ x)


async def test_wide_read_in_chunks_is_exact(holder):
    rng = np.random.default_rng(2)
    w = rng.standard_normal((ROWS, COLS), dtype=np.float32)
    await holder.store_block("w", 0, 0, w, "ideal", 0)
    x = rng.standard_normal((COLS, 64), dtype=np.float32)
    calls = _counting(holder.executor)
    y = await holder.infer_local("w", 0, x, 5)
    assert len(calls) >= 3          # the pin, then at least two chunks on the threads
    np.testing.assert_allclose(y, w @ x, rtol=1e-5, atol=1e-4)
    assert y.shape == (ROWS, 64) and y.flags.c_contiguous


@pytest.mark.parametrize("bad, why", [
    (np.full((COLS, 1), np.nan, np.float32), "NaN"),
    (np.ones((COLS + 1, 1), np.float32), "rows"),
    (np.ones(COLS, np.float32), "2-D"),
    ("not an array", "2-D"),
])
async def test_bad_peer_x_is_refused_and_the_block_stays_unpinned(holder, bad, why):
    w = np.ones((ROWS, COLS), np.float32)
    await holder.store_block("w", 0, 0, w, "ideal", 0)
    with pytest.raises(StoreError, match=why):
        await holder.infer_local("w", 0, bad, 5, validate=True)
    block = holder.store.get("w", 0)
    assert block.pins == 0
    x = np.ones((COLS, 1), np.float32)
    np.testing.assert_array_equal(await holder.infer_local("w", 0, x, 5), w @ x)


# sessions -----------------------------------------------------------------------------

def _hello(node: str) -> Hello:
    return Hello(PROTOCOL_VERSION, node, node, [f"{node}:1"], b"", b"")


class PipeLink(Link):
    """One end of an in-memory frame pipe; ``sent`` keeps what this end sent."""

    kind = "tcp"

    def __init__(self, max_frame: int = (1 << 20) + 64) -> None:
        super().__init__()
        self.max_frame = max_frame
        self.peer: PipeLink | None = None
        self.sent: list[bytes] = []

    async def send(self, frame) -> None:
        if self.closed:
            raise LinkClosed(self.close_reason)
        data = b"".join(bytes(b) for b in frame)
        self.sent.append(data)
        if self.peer is not None:
            self.peer._frames.append(data)
            self.peer._readable.set()

    async def recv(self) -> bytes:
        return await self._next_frame()

    async def close(self, reason: str = "closed locally") -> None:
        self.close_reason = self.close_reason or reason
        self._readable.set()


def _msg(rid: int, x=None) -> InferBlock:
    """A request the peer's handler sees (replies go to the waiting request instead)."""
    return InferBlock(rid, "w", 0, np.ones((4, 1), np.float32) if x is None else x, 1)


def _pair(max_frame: int = (1 << 20) + 64) -> tuple[Session, Session, PipeLink]:
    a, b = PipeLink(max_frame), PipeLink(max_frame)
    a.peer, b.peer = b, a
    ha, hb = _hello("aa"), _hello("bb")
    return Session(a, ha, hb, initiator=True), Session(b, hb, ha, initiator=False), a


async def _collect(session: Session) -> list:
    got: list = []

    async def handler(_s, msg) -> None:
        got.append(msg)
    session.start(handler)
    return got


async def test_small_message_on_an_idle_session_needs_no_writer_task():
    sa, sb, link = _pair()
    got = await _collect(sb)
    # sa is not started: no writer task exists, so a queued send would never complete
    await asyncio.wait_for(sa.send(_msg(1)), 2)
    assert len(link.sent) == 1 and sa.stats.sent_messages == 1
    await asyncio.sleep(0.01)
    assert [m.rid for m in got] == [1]
    await sb.close("done")


async def test_small_message_does_not_overtake_a_queued_one():
    sa, sb, link = _pair()
    got = await _collect(sb)
    queued = sa._enqueue(_msg(1))           # waiting for the writer
    second = asyncio.ensure_future(sa.send(_msg(2)))
    await asyncio.sleep(0.01)
    assert link.sent == [] and not second.done()      # not sent around the queue
    sa.start(lambda *_: asyncio.sleep(0))
    await asyncio.wait_for(asyncio.gather(queued, second), 2)
    await asyncio.sleep(0.01)
    assert [m.rid for m in got] == [1, 2]
    await sa.close("done")
    await sb.close("done")


async def test_control_message_over_small_frames_arrives_whole():
    sa, sb, link = _pair(max_frame=4096 + 64)
    got = await _collect(sb)
    sa.start(lambda *_: asyncio.sleep(0))
    x = np.arange(10_000, dtype=np.float32).reshape(-1, 1)   # 40 KB: control, 10 frames
    await asyncio.wait_for(sa.send(_msg(7, x)), 2)
    await asyncio.sleep(0.05)
    assert len(link.sent) > 1
    assert [m.rid for m in got] == [7]
    np.testing.assert_array_equal(got[0].x, x)
    await sa.close("done")
    await sb.close("done")


async def test_request_still_times_out_and_forgets_the_request():
    sa, sb, _ = _pair()
    await _collect(sb)                                # receives, never answers
    sa.start(lambda *_: asyncio.sleep(0))
    with pytest.raises(TimeoutError, match="timed out after 0.1s"):
        await sa.request(_msg(9), 0.1)
    assert sa._pending == {}
    await sa.close("done")
    await sb.close("done")


async def test_request_gets_its_reply():
    sa, sb, _ = _pair()
    sa.start(lambda *_: asyncio.sleep(0))

    async def answer(session, msg) -> None:
        await session.reply(msg.rid, msg.x * 2)
    sb.start(answer)
    value = await asyncio.wait_for(sa.request(_msg(3), 2), 3)
    np.testing.assert_array_equal(value, np.full((4, 1), 2, np.float32))
    await sa.close("done")
    await sb.close("done")


async def test_closed_link_fails_a_direct_send_and_closes_the_session():
    sa, _sb, link = _pair()
    link.close_reason = "peer went away"
    with pytest.raises(LinkClosed):
        await sa.send(_msg(1))
    assert sa.closed.is_set() and "peer went away" in sa.close_reason
