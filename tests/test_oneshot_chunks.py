"""A peer's one-shot share in row chunks (issue 13, oneshot4): B once, then A's rows in
chunks the peer computes as each arrives. The chunk plan is a pure function; the peer holds
B within limits and drops it; chunks give the same numbers as one share, on a non-ideal
device too; a failed peer's unanswered chunks fail over; the meter reads a chunked round
trip by the split's model."""

from __future__ import annotations

import asyncio
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compute.crossbar import crossbar_matmul, row_granularity
from compute.device import get_preset
from node.memory.store import StoreError
from node.net.session import RemoteError
from node.work.heldoperands import HeldOperands
from node.work.oneshotsplit import (MIN_CHUNK_BYTES, ShareCost, chunk_rows, fixed_cost,
                                    row_cost, transfer_split)
from node.work.sharemeter import ShareMeter, ShareTiming, path_rate
from protocol.messages import decode_message, encode_message
from protocol.work import MatmulOperand, MatmulRows, read_share_result
from tests.replying_session import FakeSession
from tests.test_oneshot_share import holder  # noqa: F401  (the fixture: a small holder)

RRAM = get_preset("rram")


def rand(shape, seed) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# the chunk plan ---------------------------------------------------------------------------

def test_a_2048_share_goes_in_four_even_chunks_and_a_small_one_whole():
    assert chunk_rows(0, 1024, 2048) == [(0, 256), (256, 512), (512, 768), (768, 1024)]
    assert chunk_rows(0, 100, 64) == [(0, 100)]                 # 25 KiB: not worth a chunk
    assert chunk_rows(1024, 2048, 2048, unit=256) == [(1024, 1280), (1280, 1536),
                                                      (1536, 1792), (1792, 2048)]


@settings(deadline=None)
@given(start_units=st.integers(0, 50), rows=st.integers(1, 5000), k=st.integers(1, 4096),
       unit=st.sampled_from([1, 8, 64, 256]), max_chunks=st.integers(1, 8))
def test_chunks_cover_the_share_once_on_unit_boundaries(start_units, rows, k, unit, max_chunks):
    start = start_units * unit
    stop = start + rows
    chunks = chunk_rows(start, stop, k, unit, max_chunks=max_chunks)
    assert chunks[0][0] == start and chunks[-1][1] == stop
    assert all(a[1] == b[0] for a, b in zip(chunks, chunks[1:]))        # no gap, no overlap
    assert all(r1 > r0 for r0, r1 in chunks)
    assert all(r0 % unit == 0 for r0, _ in chunks)                     # whole tiles each
    assert len(chunks) <= max_chunks
    if len(chunks) > 1:
        assert min(r1 - r0 for r0, r1 in chunks) * k * 4 >= MIN_CHUNK_BYTES - unit * k * 4


def test_nothing_to_chunk_is_refused():
    with pytest.raises(ValueError):
        chunk_rows(5, 5, 10)


# the held operand -------------------------------------------------------------------------

def test_a_held_operand_is_kept_for_its_chunks_and_limited():
    async def run() -> None:
        held = HeldOperands(max_held=2, max_bytes=1000, hold_s=60)
        held.open("p", "j1", 400, 2, None, 0)
        with pytest.raises(StoreError, match="already held"):
            held.open("p", "j1", 1, 1, None, 0)
        held.open("q", "j1", 400, 1, None, 0)                      # another sender: its own
        with pytest.raises(StoreError, match="operands held"):
            held.open("p", "j3", 1, 1, None, 0)
        held.drop("q", "j1")
        with pytest.raises(StoreError, match="byte limit"):
            held.open("p", "j2", 700, 1, None, 0)
        with pytest.raises(StoreError, match="chunks"):
            held.open("p", "j2", 1, 0, None, 0)
        with pytest.raises(StoreError, match="no operand held"):
            held.get("q", "j1")                                     # not another's
        held.served("p", "j1")
        assert held.get("p", "j1").left == 1
        held.served("p", "j1")                                      # the last chunk
        assert len(held) == 0 and held.nbytes == 0
    asyncio.run(run())


def test_an_unused_operand_expires():
    async def run() -> None:
        held = HeldOperands(hold_s=0.05)
        entry = held.open("p", "j", 10, 3, None, 0)
        with pytest.raises(StoreError, match="expired"):      # awaited, not slept for
            await asyncio.wait_for(entry.ready, 5)
        assert len(held) == 0
    asyncio.run(run())


# the peer's side ---------------------------------------------------------------------------

def wire(msg):
    """``msg`` as the peer receives it: encoded and decoded (views of one buffer)."""
    return decode_message(b"".join(bytes(p) for p in encode_message(msg)))


def serve_chunked(holder, a, b, chunks, device, seed):
    session = FakeSession()

    async def run() -> None:
        # as the session hands them on: each message's task started in arrival order, the
        # chunks' before B's validation is done (B is registered before its first await)
        operand = wire(MatmulOperand(1, "job/0", b, device, seed, len(chunks)))
        rows = [wire(MatmulRows(2 + i, "job/0", a[r0:r1], r0))
                for i, (r0, r1) in enumerate(chunks)]
        tasks = [asyncio.create_task(holder.handle(session, msg)) for msg in [operand, *rows]]
        await asyncio.gather(*tasks)
    asyncio.run(run())
    return session.replies


def test_chunks_on_a_non_ideal_device_give_the_numbers_of_one_share(holder):
    g = row_granularity(RRAM)
    a, b = rand((4 * g, 96), 1), rand((96, 8), 2)
    whole = crossbar_matmul(a, b, RRAM, 7, 0)
    chunks = [(0, g), (g, 3 * g), (3 * g, 4 * g)]
    replies = serve_chunked(holder, a, b, chunks, "rram", 7)
    assert replies[0] == (1, True, None)
    by_rid = {rid: read_share_result(value)[0] for rid, value, error in replies[1:]
              if error is None}
    got = np.concatenate([by_rid[2 + i] for i in range(len(chunks))])
    np.testing.assert_array_equal(got, whole)                   # bit for bit, same seed
    assert not np.array_equal(whole, a @ b)                     # the device is not ideal
    assert len(holder.operands) == 0                            # dropped after the last


def test_ideal_chunks_are_exact(holder):
    a, b = rand((300, 64), 3), rand((64, 40), 4)
    replies = serve_chunked(holder, a, b, [(0, 100), (100, 300)], None, 1)
    got = np.concatenate([read_share_result(v)[0] for _, v, _ in sorted(replies[1:])])
    np.testing.assert_allclose(got, a @ b, rtol=1e-5, atol=1e-5)


def test_a_chunk_with_nan_is_refused_with_a_clear_error_and_the_holder_serves_on(holder):
    a, b = rand((128, 16), 5), rand((16, 4), 6)
    a[100, 3] = np.nan
    replies = serve_chunked(holder, a, b, [(0, 64), (64, 128)], None, 1)
    errors = {rid: err for rid, _, err in replies}
    assert errors[1] is None and errors[2] is None
    assert "NaN" in errors[3]
    assert len(holder.operands) == 0
    clean = rand((64, 16), 7)
    replies = serve_chunked(holder, clean, b, [(0, 64)], None, 1)
    np.testing.assert_allclose(read_share_result(replies[1][1])[0], clean @ b, rtol=1e-5,
                               atol=1e-5)


def test_a_bad_operand_fails_its_chunks_and_a_chunk_without_one_is_refused(holder):
    a, b = rand((64, 16), 8), rand((16, 4), 9)
    b[0, 0] = np.inf
    replies = serve_chunked(holder, a, b, [(0, 64)], None, 1)
    assert all("NaN or infinity" in err for _, _, err in replies)
    session = FakeSession()
    asyncio.run(holder.handle(session, wire(MatmulRows(9, "nothing/0", a, 0))))
    assert "no operand held" in session.replies[0][2]


def test_an_operand_over_the_holders_limit_is_refused(holder):
    holder.operands = HeldOperands(max_bytes=100)
    session = FakeSession()
    asyncio.run(holder.handle(session, wire(MatmulOperand(1, "j/0", rand((16, 4), 1), None,
                                                          0, 1))))
    assert "byte limit" in session.replies[0][2]
    assert len(holder.operands) == 0


# the coordinator's side: failover of the chunks not answered -------------------------------

class _DyingPeer:
    """Answers the operand and the first ``good`` chunks, then its link dies."""

    def __init__(self, good: int) -> None:
        self.good, self.rows = good, 0

    def next_rid(self) -> int:
        return 0

    async def request(self, msg, timeout, sent=None):
        sent.set_result(None)
        await asyncio.sleep(0.001)
        if isinstance(msg, MatmulOperand):
            self.b = msg.b
            return True
        if self.rows >= self.good:
            raise RemoteError("link closed")
        self.rows += 1
        return {"t": "work.matmul_result", "y": msg.a @ self.b, "compute_s": 0.001}


def test_a_peer_that_dies_mid_share_has_only_its_unanswered_chunks_recomputed():
    a, b = rand((1024, 1024), 10), rand((1024, 32), 11)    # 4 MiB of A: 4 chunks
    peer = _DyingPeer(good=2)
    computed_here, got = _share_with(peer, a, b)
    assert peer.rows == 2
    assert computed_here == [(512, 768), (768, 1024)]            # the two unanswered
    np.testing.assert_allclose(got, a @ b, rtol=1e-4, atol=1e-4)


# the model and the meter agree on a chunked share -----------------------------------------

def test_chunks_shorten_a_peers_predicted_share_by_the_overlap():
    one = ShareCost("p", 50.0, 5e8, 0.001)
    four = ShareCost("p", 50.0, 5e8, 0.001, chunks=4)
    k = n = 2048
    compute, transfer = 2.0 * k * n / 50e9, (k + n) * 4 / 5e8
    assert row_cost(one, k, n) == pytest.approx(compute + transfer)
    assert row_cost(four, k, n) == pytest.approx(compute + transfer - 0.75 * min(compute,
                                                                                 transfer))
    me = ShareCost("me", 50.0, local=True)
    assert (dict(transfer_split(k, k, n, [me, four]).rows)["p"]
            > dict(transfer_split(k, k, n, [me, one]).rows)["p"])   # worth more rows


@pytest.mark.parametrize("chunks", [1, 2, 4])
@pytest.mark.parametrize("gflops, link", [(50.0, 3e8), (10.0, 5e8), (500.0, 3e8)])
def test_the_meter_reads_back_the_link_the_model_predicted(chunks, gflops, link):
    """A round trip as the model predicts it, for a known link and compute, read back by
    the meter: the same link (compute-bound, and transfer-bound at 500 GFLOP/s)."""
    k = n = 2048
    rows = 768
    cost = ShareCost("p", gflops, link, 0.0, chunks=chunks)
    total = fixed_cost(cost, k, n) + rows * row_cost(cost, k, n)
    compute = 2.0 * rows * k * n / (gflops * 1e9)
    t = ShareTiming(2.0 * rows * k * n, (k * n + rows * k) * 4, rows * n * 4, 0.01, total,
                    compute, 0.0, chunks, fixed_bytes=k * n * 4)
    assert path_rate(t, compute) == pytest.approx(link, rel=1e-6)
    meter = ShareMeter()
    meter.record_share("p", "", t)
    assert meter.link_bps("p") == pytest.approx(link, rel=1e-6)
    assert meter.speed("p", "") == pytest.approx(gflops, rel=1e-6)


def test_a_local_share_waiting_less_for_the_hand_over_keeps_more_rows():
    """With this node's share computing alongside the sealing (``handover_delay`` 1/2 on
    two threads), the sealing delays it less, so fewer rows need to go to the peer."""
    me = ShareCost("me", 50.0, local=True)
    p = ShareCost("p", 50.0, 1e9, 0.0, handover_bps=3e8)
    waits = transfer_split(2048, 2048, 2048, [me, p])
    along = transfer_split(2048, 2048, 2048, [me, p], handover_delay=0.5)
    assert dict(along.rows)["me"] > dict(waits.rows)["me"]
    assert along.predicted_s["me"] < waits.predicted_s["me"]
    with pytest.raises(ValueError, match="handover_delay"):
        transfer_split(2048, 2048, 2048, [me, p], handover_delay=1.5)


def test_this_nodes_speed_is_kept_net_of_the_sealing_it_computed_alongside():
    from node.work.jobs import own_seconds
    # own share 0..1 s; a peer's hand-over 0..0.4 s, another's 0.8..(unfinished)
    assert own_seconds(0.0, 1.0, [], 0.5) == pytest.approx(1.0)
    assert own_seconds(0.0, 1.0, [[0.0, 0.4]], 0.5) == pytest.approx(0.8)
    assert own_seconds(0.0, 1.0, [[0.0, 0.4], [0.8, float("inf")]], 0.5) == pytest.approx(0.7)
    assert own_seconds(0.0, 1.0, [[2.0, 3.0]], 0.5) == pytest.approx(1.0)     # after it
    assert own_seconds(0.0, 1.0, [[0.0, 5.0]] * 4, 1.0) == pytest.approx(0.1)  # floored


def test_a_split_fed_speeds_net_of_the_sealing_predicts_the_measured_finish():
    """The split charges ``handover_delay`` of the sealing to this node's finish; a speed
    measured net of it (own_seconds) makes the prediction what was measured, where a
    speed measured with the sealing inside would add it twice."""
    from node.work.jobs import own_seconds
    k = n = 2048
    rows, true_gflops, sealing_s, delay = 1280, 80.0, 0.1, 0.5
    compute = 2.0 * rows * k * n / (true_gflops * 1e9)
    wall = compute + delay * sealing_s                  # what the share took alongside
    net = own_seconds(0.0, wall, [[0.0, sealing_s]], delay)
    assert net == pytest.approx(compute)
    me = ShareCost("me", 2.0 * rows * k * n / net / 1e9, local=True)
    p = ShareCost("p", 50.0, 1e9, 0.0, handover_bps=(k * n + (k - rows) * k) * 4 / sealing_s)
    from node.work.oneshotsplit import _predicted
    predicted = _predicted({"me": rows, "p": k - rows}, me, [p], k, n, 4, delay)
    assert predicted["me"] == pytest.approx(wall)


# review mends: the held operand's lifetime and the coordinator's early stop ---------------

def test_a_use_re_arms_the_expiry_so_a_slow_shares_chunks_still_find_their_operand():
    async def run() -> None:
        held = HeldOperands(hold_s=60)
        entry = held.open("p", "j", 10, 3, None, 0)
        first = entry.timer
        await asyncio.sleep(0.01)
        held.get("p", "j")
        assert first.cancelled() and entry.timer.when() > first.when()
        second = entry.timer
        await asyncio.sleep(0.01)
        held.served("p", "j")
        assert second.cancelled() and entry.timer.when() > second.when()
        held.drop("p", "j")
        assert entry.timer.cancelled()
    asyncio.run(run())


def test_one_sender_cannot_take_every_slot_and_a_refused_operand_holds_no_bytes():
    async def run() -> None:
        held = HeldOperands(max_held=16, max_bytes=1000, hold_s=60, max_per_sender=2)
        held.open("p", "j1", 400, 1, None, 0)
        held.open("p", "j2", 400, 1, None, 0)
        with pytest.raises(StoreError, match="2 of your operands"):
            held.open("p", "j3", 1, 1, None, 0)
        held.open("q", "j1", 100, 1, None, 0)                       # others still can
        held.refused("p", "j1")                                     # failed validation
        assert held.nbytes == 500
        held.open("q", "j2", 500, 1, None, 0)                       # its bytes are free
    asyncio.run(run())


def test_a_chunk_refused_because_the_holder_is_busy_still_counts_off_its_operand(holder):
    from node.work import holder as holder_module

    a, b = rand((64, 16), 8), rand((16, 4), 9)
    session = FakeSession()

    async def run() -> None:
        await holder.handle(session, wire(MatmulOperand(1, "busy/0", b, None, 1, 1)))
        holder.serving = holder_module.MAX_SERVING
        try:
            await holder.handle(session, wire(MatmulRows(2, "busy/0", a, 0)))
        finally:
            holder.serving = 0
    asyncio.run(run())
    assert "node busy" in session.replies[1][2]
    assert len(holder.operands) == 0                    # its only chunk: dropped, not held


class _Peer:
    """A fake peer session: ``refuse_b`` answers the operand with an error after a fifth
    of the ``transfer_s`` each chunk takes to hand over; ``fail_chunk`` (an index) fails after
    ``fail_after_s`` while the other chunks are answered."""

    def __init__(self, refuse_b: bool = False, fail_chunk: int | None = None,
                 transfer_s: float = 0.0, fail_after_s: float = 0.3) -> None:
        self.refuse_b, self.fail_chunk = refuse_b, fail_chunk
        self.transfer_s, self.fail_after_s = transfer_s, fail_after_s
        self.chunks_sent: list[int] = []
        self.b = None

    def next_rid(self) -> int:
        return 0

    async def request(self, msg, timeout, sent=None):
        if isinstance(msg, MatmulOperand):
            sent.set_result(None)
            if self.refuse_b:                  # the refusal's round trip
                await asyncio.sleep(self.transfer_s / 5)
                raise RemoteError("node busy: 16 operands held")
            self.b = msg.b
            return True
        await asyncio.sleep(self.transfer_s)
        sent.set_result(None)
        index = len(self.chunks_sent)
        self.chunks_sent.append(msg.row_offset)
        if index == self.fail_chunk:
            await asyncio.sleep(self.fail_after_s)
            raise RemoteError("out of memory")
        return {"t": "work.matmul_result", "y": msg.a @ self.b, "compute_s": 0.001}


def _share_with(peer: _Peer, a: np.ndarray, b: np.ndarray):
    """Run one share of all of ``a``'s rows aimed at ``peer``; the fallback is this node.
    Returns (the rows computed here, the product assembled from the pieces)."""
    from compute.partition import Block
    from node.work.jobs import Job, JobManager

    computed_here: list[tuple[int, int]] = []

    class Holder:
        async def compute_share(self, a_rows, b, device, seed, row_offset, out):
            computed_here.append((row_offset, row_offset + len(a_rows)))
            out[...] = a_rows @ b

    class Fake:
        node_id = "me"
        holder = Holder()
        share_meter = ShareMeter()
        memory = type("D", (), {"record_share": lambda *args: None})()
        mesh = type("Mesh", (), {"sessions": {}})()
        _rtt_s = staticmethod(lambda node: 0.0)
        _measure_share = JobManager._measure_share
        _chunks_on = JobManager._chunks_on
        _handover_delay = staticmethod(lambda: 0.5)

        def _fallback(self, tried, attempt):
            return "me"

    async def session(node):
        return peer
    Fake.mesh.session = staticmethod(session)
    out = np.empty((a.shape[0], b.shape[1]), np.float32)
    pieces: dict[int, np.ndarray] = {}
    asyncio.run(JobManager._share(Fake(), Job("j", "matmul"), Block(0, 0, a.shape[0], ["p"]),
                                  a, b, out, None, 0, pieces))
    return computed_here, np.concatenate([pieces[r] for r in sorted(pieces)])


def test_a_refused_operand_stops_the_share_before_all_of_a_is_shipped():
    a, b = rand((1024, 1024), 12), rand((1024, 32), 13)         # 4 chunks of 1 MiB
    peer = _Peer(refuse_b=True, transfer_s=0.05)
    computed_here, got = _share_with(peer, a, b)
    assert len(peer.chunks_sent) == 1                 # the chunk in flight when refused
    assert computed_here == [(0, 256), (256, 512), (512, 768), (768, 1024)]
    np.testing.assert_allclose(got, a @ b, rtol=1e-4, atol=1e-4)


def test_chunks_answered_after_a_failed_one_are_kept_not_recomputed():
    a, b = rand((1024, 1024), 14), rand((1024, 32), 15)
    peer = _Peer(fail_chunk=1)
    computed_here, got = _share_with(peer, a, b)
    assert len(peer.chunks_sent) == 4
    assert computed_here == [(256, 512)]              # only the chunk that failed
    np.testing.assert_allclose(got, a @ b, rtol=1e-4, atol=1e-4)


def test_this_nodes_speed_is_kept_as_beside_peers_only_when_a_peer_share_was_in_flight():
    """A share of this node's computed while a peer's hand-over had begun counts as its
    speed beside peers (it may share their cores); one with none as its speed alone."""
    from compute.partition import Block
    from node.work.jobs import Job, JobManager

    class Holder:
        async def compute_share(self, a_rows, b, device, seed, row_offset, out):
            out[...] = a_rows @ b

    class Fake:
        node_id = "me"
        holder = Holder()
        memory = type("D", (), {"record_share": lambda *args: None})()
        _handover_delay = staticmethod(lambda: 0.5)

    a, b = rand((256, 64), 20), rand((64, 32), 21)
    for sealing, alone, beside in (([], True, False), ([[0.0, math.inf]], False, True)):
        fake = Fake()
        fake.share_meter = ShareMeter()
        out = np.empty((256, 32), np.float32)
        asyncio.run(JobManager._share(fake, Job("j", "matmul"), Block(0, 0, 256, ["me"]),
                                      a, b, out, None, 0, {}, 1, sealing))
        assert (fake.share_meter.speed("me", "") is not None) == alone
        assert (fake.share_meter.speed_alongside("me", "") is not None) == beside


def test_a_chunks_compute_time_leaves_out_its_wait_for_the_compute_threads(holder):
    """A chunk that arrives while the threads are busy (the chunk before it, here a stand-in
    holding both for 0.4 s) reports the seconds its product took, not its wait: the asker
    sums the chunks' figures, and the waits made a peer read 2-3x slower than it computes."""
    import time

    a, b = rand((256, 64), 30), rand((64, 32), 31)
    session = FakeSession()
    workers = holder.executor.workers

    async def run() -> float:
        busy = [asyncio.ensure_future(holder.executor.run(time.sleep, 0.4))
                for _ in range(workers)]
        for _ in range(400):                          # until both threads are taken
            if holder.executor.running == workers:
                break
            await asyncio.sleep(0.005)
        assert holder.executor.running == workers
        start = time.perf_counter()
        await holder.handle(session, wire(MatmulOperand(1, "job/0", b, None, 1, 1)))
        await holder.handle(session, wire(MatmulRows(2, "job/0", a, 0)))
        await asyncio.gather(*busy)
        return time.perf_counter() - start
    waited = asyncio.run(run())
    (_, ok, _), (rid, value, error) = session.replies
    assert error is None and rid == 2
    y, compute_s = read_share_result(value)
    np.testing.assert_allclose(y, a @ b, rtol=1e-5, atol=1e-5)
    assert waited >= 0.3                              # the chunk did wait for the threads
    assert 0 < compute_s < 0.2                        # ...and reports its product alone
