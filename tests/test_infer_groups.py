"""X once per holder, not once per block (issue 13).

- The grouping of a request's blocks by the holder each goes to is a pure function: every
  block in exactly one group, order kept, long lists cut at the peer's limit; a failed
  block moves to its own next holder.
- A grouped reply is checked like a single-block one: one entry per block, each of
  exactly its block's shape or a one-line error for that block alone.
- A holder's grouped read gives exactly the per-block reads (rram, fixed read seed, B=1
  and B=64), refuses bad X and bad index lists, and answers a block it lacks with that
  block's own error.
- The coordinator (real JobManager and BlockHolders, peers behind an in-memory session
  that runs every message and reply through the codec) sends one InferBlocks per peer
  per request with X once, gets the same Y as the per-block path, and fails blocks over
  per block: a whole failed request, a block's own error, a malformed reply.
- Real daemons: a 3-daemon mesh whose holders have several blocks each returns W @ X and
  moves X once to each holder; a holder killed in the middle of a request: still W @ X.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from compute.device import get_preset
from compute.executor import Executor
from compute.partition import Block, PartitionPlan
from nat.link import LinkClosed
from node.client import Client
from node.memory.dualmemory import DualMemory
from node.memory.statedb import StateDB
from node.memory.store import BlockStore, StoreError
from node.metrics import Metrics
from node.net.session import RemoteError
from node.work.blockgroups import BlockTry, fail_over, group_by_holder, read_parts
from node.work.holder import BlockHolder
from node.work.jobs import JobError, JobManager
from node.work.plans import PlanBook, VersionedPlan, new_deploy_id
from protocol.errors import ProtocolError
from protocol.messages import decode_message, encode_message
from protocol.rpc import Reply
from protocol.work import (MAX_INFER_BLOCKS, InferBlock, InferBlocks, InferBlocksResult,
                           infer_blocks_result_wire)
from tests.daemons import wait_for

ROWS, COLS = 256, 384      # a block: 2 tile rows of 128 outputs, 384 inputs


def _blk(i: int, nodes: list[str]) -> Block:
    return Block(i, i * ROWS, (i + 1) * ROWS, list(nodes))


def _try(i: int, order: list[str]) -> BlockTry:
    return BlockTry(_blk(i, order), 1.0, list(order))


# --- pure: grouping and fail-over ---------------------------------------------------------
def test_blocks_are_grouped_by_the_holder_each_goes_to_next():
    tries = [_try(0, ["b", "c"]), _try(1, ["c", "b"]), _try(2, ["b"]), _try(3, ["me", "b"]),
             _try(4, ["c"])]
    groups = group_by_holder(tries)
    assert [(n, [t.blk.index for t in g]) for n, g in groups] == \
        [("b", [0, 2]), ("c", [1, 4]), ("me", [3])]
    # every block in exactly one group, and in the group of its first holder
    assert sorted(t.blk.index for _, g in groups for t in g) == [0, 1, 2, 3, 4]
    assert all(t.holder == n for n, g in groups for t in g)


def test_a_holder_with_more_blocks_than_the_peer_limit_gets_several_requests():
    tries = [_try(i, ["b"]) for i in range(7)]
    groups = group_by_holder(tries, limit=3)
    assert [[t.blk.index for t in g] for _, g in groups] == [[0, 1, 2], [3, 4, 5], [6]]
    assert len(group_by_holder([_try(i, ["b"]) for i in range(MAX_INFER_BLOCKS + 1)])) == 2


def test_failed_blocks_move_to_their_own_next_holder_or_run_out():
    a, b, c = _try(0, ["x", "y"]), _try(1, ["x", "z", "y"]), _try(2, ["x"])
    again, exhausted = fail_over([(a, "link closed"), (b, "timed out"), (c, "gone")])
    assert [t.blk.index for t in again] == [0, 1] and [t.blk.index for t in exhausted] == [2]
    assert a.order == ["y"] and b.order == ["z", "y"] and c.order == []
    assert a.errors == ["x: link closed"] and c.errors == ["x: gone"]
    assert [(n, [t.blk.index for t in g]) for n, g in group_by_holder(again)] == \
        [("y", [0]), ("z", [1])]


# --- pure: a grouped reply ------------------------------------------------------------------
SHAPES = [(ROWS, 2), (ROWS, 2)]


def typed(parts, compute_s=0.5):
    """A reply as a holder sends it (InferBlocksResult), through the codec."""
    return _through_codec(infer_blocks_result_wire(parts, compute_s))


def _through_codec(value):
    return decode_message(b"".join(bytes(p) for p in encode_message(Reply(1, value)))).value


def test_a_good_reply_gives_each_blocks_rows_or_its_own_error():
    y = np.ones((ROWS, 2), np.float32)
    parts, held = read_parts(typed([y, "block 3 is not resident"]), SHAPES, "peer")
    assert parts[1] == "block 3 is not resident" and held == 0.5
    np.testing.assert_array_equal(parts[0], y)


def test_an_older_holders_untyped_map_still_reads():
    y = np.ones((ROWS, 2), np.float32)
    parts, held = read_parts(_through_codec({"parts": [y, y], "compute_s": 0.25}), SHAPES,
                             "peer")
    assert held == 0.25 and all(np.array_equal(p, y) for p in parts)
    assert read_parts({"parts": [y, "gone"]}, SHAPES, "peer")[1] is None   # no figure
    assert read_parts({"parts": [y, y], "compute_s": -1.0}, SHAPES, "peer")[1] is None


Y2 = np.ones((ROWS, 2), np.float32)


@pytest.mark.parametrize("value, why", [
    (np.ones((2 * ROWS, 2), np.float32), "must be a map, got ndarray"),   # the old single reply
    (None, "must be a map, got NoneType"),
    (typed([Y2]), "answered 1 part"),                                      # wrong count
    (typed([Y2, Y2, Y2]), "answered 3 part"),
    (typed([Y2, np.ones((ROWS, 3), np.float32)]), "shape"),                # wrong shape
    (typed([Y2, np.ones((ROWS, 2), np.float64)]), "float64"),              # wrong dtype
    (typed([Y2, np.ones(ROWS, np.float32)]), r"shape \(256,\)"),           # wrong ndim
    ({"t": "work.infer_blocks_result", "parts": [Y2, 7], "compute_s": 0.1}, r"parts\[1\]"),
    ({"t": "work.infer_blocks_result", "parts": "no", "compute_s": 0.1}, "expected list"),
    ({"t": "work.infer_blocks_result", "parts": [Y2, Y2], "compute_s": "1"}, "compute_s"),
    ({"t": "work.infer_blocks_result", "parts": [Y2, Y2], "compute_s": float("nan")},
     "not a time"),
    ({"t": "work.infer_blocks_result", "parts": [Y2, Y2]}, "missing field 'compute_s'"),
    ({"t": "work.infer_blocks_result", "parts": [Y2, Y2], "compute_s": 1, "x": 1},
     "unknown field"),
    ({"t": "work.matmul_result", "y": Y2, "compute_s": 0.1}, "answered with work.matmul"),
    ({"parts": "no"}, "expected list"),                                    # old map, bad
    ({"parts": [Y2, 7]}, r"parts\[1\]"),
    ({"parts": [Y2, Y2], "extra": 1}, "unknown message type"),
])
def test_a_malformed_reply_is_the_peers_protocol_error(value, why):
    with pytest.raises(ProtocolError, match=why) as err:
        read_parts(value, SHAPES, "peer1234abcd")
    assert str(err.value).startswith("peer1234") and "\n" not in str(err.value)


# --- a holder ---------------------------------------------------------------------------------
def _holder(path: Path, device: str = "rram", workers: int = 2) -> tuple[BlockHolder, StateDB]:
    path.mkdir(parents=True, exist_ok=True)
    db = StateDB(path / "state.db")
    store = BlockStore(path, db, budget=1 << 30)
    return BlockHolder(get_preset(device), store, Executor(workers=workers, cores=2),
                       Metrics(), PlanBook(db), prefetch=False), db


@pytest.fixture
async def holder(tmp_path: Path):
    h, db = _holder(tmp_path / "h")
    try:
        yield h
    finally:
        h.executor.shutdown()
        db.close()


async def _store(h: BlockHolder, w: np.ndarray, indices: list[int], device: str = "rram",
                 name: str = "w") -> None:
    for i in indices:
        await h.store_block(name, i, i * ROWS, w[i * ROWS:(i + 1) * ROWS], device, 11)


@pytest.mark.parametrize("batch", [1, 64])
async def test_a_grouped_read_is_exactly_the_per_block_reads(holder, batch):
    rng = np.random.default_rng(batch)
    w = rng.standard_normal((4 * ROWS, COLS), dtype=np.float32)
    await _store(holder, w, [0, 1, 2, 3])
    x = rng.standard_normal((COLS, batch), dtype=np.float32)
    reply = await holder.infer_blocks("w", [2, 0, 3], x, 99)
    singles = [await holder.infer_local("w", i, x, 99, validate=True) for i in (2, 0, 3)]
    for got, want in zip(reply["parts"], singles):
        np.testing.assert_array_equal(got, want)       # same read noise, bit for bit
    assert not np.array_equal(reply["parts"][0], (await holder.infer_blocks(
        "w", [2], x, 100))["parts"][0])                # the seed does key the noise
    assert reply["compute_s"] > 0
    assert all(holder.store.get("w", i).pins == 0 for i in range(4))


async def test_a_block_the_holder_lacks_answers_its_own_error_and_the_rest_are_read(holder):
    w = np.ones((2 * ROWS, COLS), np.float32)
    await _store(holder, w, [0], device="ideal")
    x = np.ones((COLS, 1), np.float32)
    parts = (await holder.infer_blocks("w", [1, 0], x, 5))["parts"]
    assert isinstance(parts[0], str) and "block 1" in parts[0] and "not resident" in parts[0]
    np.testing.assert_array_equal(parts[1], w[:ROWS] @ x)


@pytest.mark.parametrize("indices, x, why", [
    ([0, 0], np.ones((COLS, 1), np.float32), "distinct"),
    ([], np.ones((COLS, 1), np.float32), "1 to"),
    (list(range(MAX_INFER_BLOCKS + 1)), np.ones((COLS, 1), np.float32), "1 to"),
    ([0, 1], np.full((COLS, 1), np.nan, np.float32), "NaN"),
    ([0, 1], np.full((COLS, 2048), np.inf, np.float32), "NaN"),      # checked on the threads
    ([0, 1], np.ones(COLS, np.float32), "2-D"),
])
async def test_bad_grouped_requests_are_refused_and_leave_no_block_pinned(holder, indices,
                                                                          x, why):
    w = np.ones((2 * ROWS, COLS), np.float32)
    await _store(holder, w, [0, 1], device="ideal")
    with pytest.raises(StoreError, match=why):
        await holder.infer_blocks("w", indices, x, 5)
    assert holder.store.get("w", 0).pins == 0 and holder.store.get("w", 1).pins == 0


async def test_x_of_the_wrong_height_fails_every_block_on_its_own(holder):
    await _store(holder, np.ones((2 * ROWS, COLS), np.float32), [0, 1], device="ideal")
    parts = (await holder.infer_blocks("w", [0, 1], np.ones((COLS + 1, 1), np.float32),
                                       5))["parts"]
    assert all(isinstance(p, str) and "columns" in p for p in parts)


# --- the coordinator, peers behind an in-memory session ---------------------------------------
class FakeSession:
    """Runs each request through the codec into the peer's holder, and its reply back."""

    def __init__(self, peer: "FakePeer") -> None:
        self.peer = peer
        self._rid = 0

    def next_rid(self) -> int:
        self._rid += 1
        return self._rid

    async def request(self, msg, timeout: float):
        peer = self.peer
        wire = decode_message(b"".join(bytes(p) for p in encode_message(msg)))
        peer.got.append(wire)
        if peer.fail is not None:
            raise peer.fail
        try:
            value = await peer.holder._serve(wire)
        except StoreError as exc:
            raise RemoteError(str(exc)) from None
        if peer.mangle is not None:
            value = peer.mangle(value)
        reply = decode_message(b"".join(bytes(p) for p in encode_message(
            Reply(msg.rid, value))))
        return reply.value


class FakePeer:
    def __init__(self, holder: BlockHolder) -> None:
        self.holder = holder
        self.got: list = []
        self.fail: Exception | None = None
        self.mangle = None


class FakeMesh:
    """No members (so holders keep their plan order), one FakeSession per peer."""

    def __init__(self, peers: dict[str, FakePeer]) -> None:
        self.peers = peers
        self.sessions: dict = {}
        self.connector = SimpleNamespace(outcome=lambda node: None)

    def members(self) -> list:
        return []

    async def session(self, node: str) -> FakeSession:
        if node not in self.peers:
            raise LinkClosed(f"no link to {node}")
        return FakeSession(self.peers[node])


@pytest.fixture
async def mesh(tmp_path: Path):
    """A coordinator ``me`` and peers ``p1``, ``p2``; rram blocks 0-5 of one W:
    me holds 4 and 5; p1 holds 0-3 (primary of 0-2); p2 holds 0-3 (primary of 3)."""
    made = []

    def holder(name: str) -> BlockHolder:
        h, db = _holder(tmp_path / name)
        made.append((h, db))
        return h
    me, p1, p2 = holder("me"), holder("p1"), holder("p2")
    rng = np.random.default_rng(7)
    w = rng.standard_normal((6 * ROWS, COLS), dtype=np.float32)
    await _store(me, w, [4, 5])
    await _store(p1, w, [0, 1, 2, 3])
    await _store(p2, w, [0, 1, 2, 3])
    blocks = [_blk(0, ["p1", "p2"]), _blk(1, ["p1", "p2"]), _blk(2, ["p1", "p2"]),
              _blk(3, ["p2", "p1"]), _blk(4, ["me"]), _blk(5, ["me"])]
    await me.plans.put("w", VersionedPlan(PartitionPlan((6 * ROWS, COLS), "rram", blocks),
                                          new_deploy_id("me")))
    peers = {"p1": FakePeer(p1), "p2": FakePeer(p2)}
    jobs = JobManager("me", me, FakeMesh(peers), DualMemory(), Metrics(), made[0][1],
                      tmp_path / "me", capacity=1.0)
    try:
        yield SimpleNamespace(jobs=jobs, peers=peers, holders={"me": me, "p1": p1, "p2": p2},
                              w=w)
    finally:
        for h, db in made:
            h.executor.shutdown()
            db.close()


async def _per_block(m, x: np.ndarray, seed: int) -> np.ndarray:
    """The per-block path: each block read by the single-block request its holder serves."""
    y = np.empty((6 * ROWS, x.shape[1]), np.float32)
    for i, node in enumerate(["p1", "p1", "p1", "p2", "me", "me"]):
        y[i * ROWS:(i + 1) * ROWS] = await m.holders[node]._serve(
            InferBlock(1, "w", i, x, seed))
    return y


@pytest.mark.parametrize("batch", [1, 64])
async def test_one_request_per_peer_carries_x_once_and_gives_the_per_block_y(mesh, batch):
    x = np.random.default_rng(batch).standard_normal((COLS, batch), dtype=np.float32)
    y = await mesh.jobs.infer("w", x, read_seed=1234)
    np.testing.assert_array_equal(y, await _per_block(mesh, x, 1234))
    # each peer got ONE message, naming all the blocks it was chosen for, and X once
    (m1,), (m2,) = mesh.peers["p1"].got, mesh.peers["p2"].got
    assert isinstance(m1, InferBlocks) and m1.indices == [0, 1, 2]
    assert isinstance(m2, InferBlocks) and m2.indices == [3]
    np.testing.assert_array_equal(m1.x, x)
    assert mesh.jobs.inflight == {"p1": 0, "p2": 0, "me": 0}
    # and the product is the device's W @ X (rram: within its noise, not exact)
    ref = mesh.w @ x
    assert np.linalg.norm(y - ref) / np.linalg.norm(ref) < 0.5


async def test_a_failed_grouped_request_fails_each_block_over_to_its_next_holder(mesh):
    x = np.random.default_rng(3).standard_normal((COLS, 4), dtype=np.float32)
    want = await _per_block(mesh, x, 77)
    mesh.peers["p1"].fail = LinkClosed("killed")
    y = await mesh.jobs.infer("w", x, read_seed=77)
    np.testing.assert_array_equal(y, want)
    # p1's three blocks went to p2, together, after p2's own block had its request
    assert sorted(m.indices for m in mesh.peers["p2"].got) == [[0, 1, 2], [3]]
    assert mesh.jobs.inflight == {"p1": 0, "p2": 0, "me": 0}


async def test_a_blocks_own_error_fails_over_only_that_block(mesh):
    x = np.ones((COLS, 1), np.float32)
    want = await _per_block(mesh, x, 5)
    mesh.holders["p1"].store.drop_block("w", 1)           # moved away, say
    y = await mesh.jobs.infer("w", x, read_seed=5)
    np.testing.assert_array_equal(y, want)
    assert [m.indices for m in mesh.peers["p1"].got] == [[0, 1, 2]]
    assert sorted(m.indices for m in mesh.peers["p2"].got) == [[1], [3]]


@pytest.mark.parametrize("mangle", [
    lambda v: {**v, "parts": v["parts"][:2]},                              # wrong count
    lambda v: {**v, "parts": [p[:, :1] for p in v["parts"]]},             # wrong shapes
    lambda v: {**v, "parts": [p.astype(np.float64) for p in v["parts"]]},  # wrong dtype
    lambda v: {**v, "parts": [1, 2, 3]},                                   # bad types
    lambda v: {**v, "compute_s": -3.0},                                    # not a time
    lambda v: v["parts"][0],                                               # not a message
], ids=["count", "shape", "dtype", "types", "compute_s", "bare"])
async def test_a_bad_typed_reply_fails_the_whole_group_over(mesh, mangle):
    x = np.ones((COLS, 2), np.float32)
    want = await _per_block(mesh, x, 6)
    mesh.peers["p1"].mangle = mangle
    y = await mesh.jobs.infer("w", x, read_seed=6)
    np.testing.assert_array_equal(y, want)
    assert sorted(m.indices for m in mesh.peers["p2"].got) == [[0, 1, 2], [3]]
    assert mesh.jobs.inflight == {"p1": 0, "p2": 0, "me": 0}


async def test_a_holder_answers_typed_and_an_older_holders_map_is_still_used(mesh):
    x = np.ones((COLS, 2), np.float32)
    want = await _per_block(mesh, x, 8)
    seen = []

    def as_older_holder(v):
        seen.append(v["t"])
        return {"parts": v["parts"], "compute_s": v["compute_s"]}
    mesh.peers["p1"].mangle = as_older_holder
    y = await mesh.jobs.infer("w", x, read_seed=8)
    np.testing.assert_array_equal(y, want)
    assert seen == [InferBlocksResult.TAG]
    assert [m.indices for m in mesh.peers["p2"].got] == [[3]]     # nothing failed over


async def test_a_block_with_no_holder_left_fails_the_request_naming_it(mesh):
    mesh.peers["p1"].fail = LinkClosed("killed")
    mesh.peers["p2"].fail = TimeoutError("timed out after 30s")
    with pytest.raises(JobError, match=r"block [0-3] of w has no live holder") as err:
        await mesh.jobs.infer("w", np.ones((COLS, 1), np.float32), read_seed=1)
    assert "p1: killed" in str(err.value) and "p2: timed out" in str(err.value)
    for _ in range(100):                           # the local group finishes on its own
        if mesh.jobs.inflight.get("me") == 0:
            break
        await asyncio.sleep(0.02)
    assert mesh.jobs.inflight == {"p1": 0, "p2": 0, "me": 0}


# --- real daemons ------------------------------------------------------------------------
#: 4224 x 4096 float32 is 66 MiB, over one 64 MiB block (node/work/models.BLOCK_BYTES):
#: each holder's share is cut into two blocks.
BIG = (4224, 4096)


def _deploy_on_three(cluster, replicas: int, last_extra: list[str] = ()):
    """Three daemons, W deployed from the first (which holds blocks too, so it gathers
    every request itself: see node/work/pipeline.py)."""
    nodes = [cluster.add(extra=["--capacity", "10"]) for _ in range(2)]
    nodes.append(cluster.add(extra=["--capacity", "10", *last_extra]))
    cluster.wait_converged(alive=2)
    rng = np.random.default_rng(13)
    w = rng.standard_normal(BIG, dtype=np.float32)
    with Client(nodes[0].socket) as c:
        info = c.deploy("w", w, device="ideal", replicas=replicas, timeout=600)
    return nodes, w, info


def _sent_to(c: Client) -> dict[str, int]:
    return {p["id"]: (p["traffic"] or {}).get("sent_bytes", 0) for p in c.peers()}


@pytest.mark.slow
def test_a_mesh_with_several_blocks_per_holder_moves_x_once_to_each(cluster):
    (coord, *holders), w, info = _deploy_on_three(cluster, replicas=1)
    per_holder = {h.id: sum(h.id in hs for hs in info["placement"].values()) for h in holders}
    assert min(per_holder.values()) >= 2, info["placement"]      # grouping has work to do
    x = np.random.default_rng(14).standard_normal((BIG[1], 256), dtype=np.float32)  # 4 MiB
    with Client(coord.socket) as c:
        np.testing.assert_allclose(c.infer("w", x), w @ x, rtol=1e-4, atol=1e-3)  # warm
        before = _sent_to(c)
        y = c.infer("w", x)
        after = _sent_to(c)
    np.testing.assert_allclose(y, w @ x, rtol=1e-4, atol=1e-3)
    for h in holders:
        moved = after[h.id] - before[h.id]
        # X once (+ framing, sealing and a little gossip), not once per block
        assert x.nbytes <= moved < 1.5 * x.nbytes, (per_holder[h.id], moved, x.nbytes)


@pytest.mark.slow
def test_a_holder_killed_in_the_middle_of_a_request_still_gives_w_at_x(cluster):
    # the victim advertises the most capacity (the coordinator sends it blocks first) but
    # computes 200x slower (a testing aid: its threads sleep): the kill lands while it
    # holds the request
    (coord, _, victim), w, info = _deploy_on_three(
        cluster, replicas=2, last_extra=["--capacity", "100", "--compute-slowdown", "200"])
    vid = victim.id                            # asked of the daemon: before it is killed
    assert sum(vid in hs for hs in info["placement"].values()) >= 2, info["placement"]
    x = np.random.default_rng(15).standard_normal((BIG[1], 64), dtype=np.float32)
    got: dict = {}
    with Client(coord.socket) as c:
        start = _sent_to(c)[vid]

        def ask() -> None:
            try:
                with Client(coord.socket) as c2:
                    got["y"] = c2.infer("w", x)
            except Exception as exc:           # reported below
                got["error"] = exc
        t = threading.Thread(target=ask)
        t.start()
        wait_for(lambda: _sent_to(c)[vid] - start >= x.nbytes, 60,
                 "the request to reach the victim")
        time.sleep(0.3)                       # it is computing (slowly) now
        victim.kill9()
        t.join(300)
    assert "error" not in got, got.get("error")
    np.testing.assert_allclose(got["y"], w @ x, rtol=1e-4, atol=1e-3)
    log = coord.log_path.read_text()
    assert any(vid[:8] in line and "trying the next holder" in line
               for line in log.splitlines()), "no block failed over from the victim"
