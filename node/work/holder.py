"""What this node does with its own resident blocks, for itself and for its peers.

The holder programs blocks and keeps them (via the :class:`~node.memory.store.BlockStore`), reads
them for ``infer``, computes one-shot shares, and answers the work requests peers send
(:mod:`protocol.work`). Every failure goes back to the asking peer as text; nothing a peer
sends can stop the daemon. Compute always runs on the executor's threads.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import time
from dataclasses import dataclass
from typing import Any

from compute.lazynumpy import np

from compute.crossbar import ProgrammedMatrix, crossbar_matmul, row_granularity
from compute.device import DeviceProfile, get_preset
from compute.executor import Executor
from compute.partition import PlacementError
from node.runtime import spans
from node.errors import UserError, internal_message
from node.memory.dualmemory import DualMemory
from node.memory.prefetcher import Prefetcher
from node.metrics import Metrics
from nat.link import LinkClosed
from node.work.claims import ClaimRefused
from node.work.heldoperands import HeldOperands
from node.work.modelbook import ModelBook, ModelRecord, check_matrix_name as check_name
from node.work.plans import PlanBook, VersionedPlan
from node.net.session import RemoteError, Session
from node.memory.store import BlockStore, Resident, StoreError, as_matrix, copy_pause_s
from protocol.errors import ProtocolError
from protocol.framing import DEFAULT_MAX_MESSAGE
from protocol.work import (MAX_INFER_BLOCKS, ClaimName, DropMatrix, GetModel, GetPlan,
                           InferBlock, InferBlocks, MatmulOperand, MatmulRows, MatmulShare,
                           ModelNotice, ModelSync,
                           PlanNotice, ReleaseName, RunStage, StageResult, StoreBlock,
                           StoreState, Undeploy, infer_blocks_result_wire,
                           share_result_wire)

log = logging.getLogger("sedma.holder")

MAX_SERVING = 256          # peer requests served at once; more are refused, not queued
RELEASE_GRACE_S = 30.0     # a block the plan moved away stays this long for requests in flight
DEPLOY_WRITERS = 2         # block files written (and fsynced) at once
#: A peer's X up to this size is checked on the event loop (a NaN scan: ~50 us for the
#: 1 MiB X of a B=64 request at N=4096), not on compute threads: the scan in spans was a
#: gather of one hop per thread, more than the scan itself (jobs.INLINE_BYTES).
INLINE_CHECK_BYTES = 2 << 20
#: The largest grouped reply: the parts must fit one message with room for its header.
MAX_REPLY_BYTES = DEFAULT_MAX_MESSAGE - (1 << 20)


@dataclass(frozen=True)
class Provenance:
    """What this process already knows about a block's rows when it stores them."""

    checked: bool = False   # validated (finite, float32, 2-D) where they entered this process
    owned: bool = False     # a private buffer no one else writes: kept without a copy


class BlockHolder:
    """This node's compute and resident blocks, behind one small API."""

    def __init__(self, device: DeviceProfile, store: BlockStore, executor: Executor,
                 metrics: Metrics, plans: PlanBook, book: ModelBook | None = None,
                 memory: DualMemory | None = None, slowdown: float = 1.0,
                 prefetch: bool = True, node_id: str = "") -> None:
        self.device = device
        self.book = book
        self.pipeline: Any = None   # node.work.pipeline.Pipeline, set once the daemon made it
        self.store = store
        self.executor = executor
        self.metrics = metrics
        self.plans = plans
        self.accepting = True
        self.serving = 0
        self.memory = memory
        self.node_id = node_id
        self.slowdown = slowdown
        self.prefetch_enabled = prefetch
        #: Prefetch loads run on their own threads so they overlap compute instead of
        #: queueing behind it (node/memory/prefetcher.py).
        self.prefetcher = Prefetcher(store, memory, enabled=prefetch)
        #: Block files are written and fsynced here, not on the compute threads: a deploy's
        #: fsyncs then wait on the disk without holding a thread that infers need.
        self._writer = concurrent.futures.ThreadPoolExecutor(
            DEPLOY_WRITERS, thread_name_prefix="sedma-write")
        self._releasing: set[tuple[str, int]] = set()        # blocks in their grace period
        #: B operands of chunked one-shot shares, held for their row chunks
        self.operands = HeldOperands()
        self._release_tasks: set[asyncio.Task] = set()

    def profile(self, name: str | None) -> DeviceProfile:
        """The named preset, or this node's own device when the job names none."""
        if not name:
            return self.device
        try:
            return get_preset(name)
        except ValueError as exc:   # the asker named a preset this node does not know
            raise StoreError(str(exc)) from None

    async def compute_share(self, a: np.ndarray, b: np.ndarray, device: str | None, seed: int,
                            row_offset: int, out: np.ndarray | None = None,
                            check_a: bool = False) -> np.ndarray:
        """One-shot ``a @ b`` on crossbars (``compute_share_timed`` without the time)."""
        return (await self.compute_share_timed(a, b, device, seed, row_offset, out, check_a))[0]

    async def compute_share_timed(self, a: np.ndarray, b: np.ndarray, device: str | None,
                                  seed: int, row_offset: int, out: np.ndarray | None = None,
                                  check_a: bool = False) -> tuple[np.ndarray, float]:
        """One-shot ``a @ b`` on crossbars (a is rows [row_offset, ...) of the job's A), and
        the seconds the product held the compute threads: the longest of its spans, which
        run side by side, measured on the threads. Why not the wall time around the call:
        a peer's chunk that arrives while the one before still computes waits for the
        threads, and that wait, summed over the chunks by the asker's meter, read as a
        peer two or three times slower than it computes (bench/README.md, oneshot5).

        ``b`` was validated where it entered this process; ``a`` too unless ``check_a``,
        which scans it on the compute threads in the same hop as the product (a peer's
        chunk: one thread hop per span instead of a scan pass and then a product pass; a
        bad chunk is still refused, its product discarded). On the ideal device the
        product is plain float32 ``a @ b``, cut into row chunks, one per compute thread,
        each written straight into ``out``: a daemon gives each compute thread one BLAS
        thread, so one call would use one core, and the engine's own entry would scan A for
        NaN a second time.
        """
        profile = self.profile(device)
        if not profile.is_ideal:
            y, seconds = await self.executor.run(self._timed, functools.partial(
                _checked_crossbar, a, b, profile, seed, row_offset, check_a))
            if out is not None:
                out[...] = y
            return y, seconds
        check_seed(seed)
        if check_a and not _plain_f32(a):          # rare: converted once, then as below
            a = await self.executor.run(as_matrix, a, "A share")
        y = np.empty((a.shape[0], b.shape[1]), np.float32) if out is None else out
        timed = await asyncio.gather(*(self.executor.run(self._timed, functools.partial(
            _checked_matmul, a[r0:r1], b, y[r0:r1], check_a))
            for r0, r1 in _row_spans(a.shape[0], self.executor.workers)))
        return y, max((seconds for _, seconds in timed), default=0.0)   # 0 rows: no span

    async def store_block(self, name, index, row_start, w, device, seed,
                          rows: Provenance = Provenance()) -> int:
        """Program a block here, persist it, then make it available; return its bytes.

        ``rows`` says what this process already knows about ``w``: rows validated where
        they entered it are not scanned again, and a private buffer (a block read from a
        file, a peer's message) becomes the ideal device's weights without a copy.
        """
        check_name(name)
        started = time.monotonic()
        if not rows.checked:
            w = await self.executor.run(as_matrix, w, "block")
        checked = time.monotonic()
        profile = self.profile(device)
        if row_start % row_granularity(profile):
            raise StoreError(f"block start {row_start} is not a multiple of the "
                             f"{row_granularity(profile)}-row tile of {profile.name}")
        cost = profile.resident_bytes(w.shape)
        self.store.reserve(cost, f"block {index} of {name}")
        try:
            matrix = await self.executor.run(program_block, w, profile, seed, row_start,
                                             rows.owned)
            programmed = time.monotonic()
            block = Resident(name, index, row_start, device, seed, matrix)
            await asyncio.get_running_loop().run_in_executor(self._writer, self.store.persist,
                                                             block)
        finally:
            self.store.release(cost)
        done = time.monotonic()
        shape = block.matrix.shape
        self.metrics.programmed(block.nbytes, done - started)
        self.store.add(block)
        log.info("holding block %d of %s (%dx%d, %s, %d bytes, tier %d) in %.3f s: validate "
                 "%.3f, program %.3f, write+commit %.3f", index, name, *shape, profile.name,
                 block.nbytes, block.tier, done - started, checked - started,
                 programmed - checked, done - programmed)
        return block.nbytes

    async def drop(self, name: str) -> int:
        """Forget every block of ``name`` (file deletes and the commit off the event loop)."""
        if self.memory is not None:
            self.memory.forget_matrix(name)
        return await self.executor.run(self.store.drop, name)

    def release_unlisted(self, name: str) -> None:
        """After a plan change: blocks held here that the plan no longer lists are dropped
        after a grace period (copy-then-switch: requests routed by the old plan finish)."""
        plan = self.plans.get(name)
        held = self.store.names().get(name, [])
        if plan is None or not held:
            return
        loop = asyncio.get_running_loop()
        for blk in plan.blocks:
            key = (name, blk.index)
            if (blk.index in held and self.node_id not in blk.nodes and blk.nodes
                    and key not in self._releasing):
                self._releasing.add(key)
                loop.call_later(RELEASE_GRACE_S, self._start_release, key)

    def _start_release(self, key: tuple[str, int]) -> None:
        task = asyncio.get_running_loop().create_task(self._release(*key))
        self._release_tasks.add(task)          # held until done (the loop keeps weak refs)
        task.add_done_callback(self._release_tasks.discard)

    async def _release(self, name: str, index: int) -> None:
        if (name, index) not in self._releasing:
            return              # a fresh copy arrived meanwhile (a repair): keep it
        self._releasing.discard((name, index))
        plan = self.plans.get(name)
        blk = next((b for b in plan.blocks if b.index == index), None) if plan else None
        if blk is None or self.node_id in blk.nodes or not blk.nodes:
            return              # the plan changed back (or vanished): keep it
        try:
            if await self.executor.run(self.store.drop_block, name, index):
                log.info("released block %d of %s (now held by %s)", index, name,
                         ", ".join(n[:8] for n in blk.nodes))
        except Exception:
            log.exception("releasing block %d of %s failed", index, name)
    async def undeploy_local(self, name: str, deploy_id: str, layers: list[str]) -> int:
        """Tombstone deployment ``deploy_id`` of ``name``, forget its plans and drop its blocks
        here (memory and disk); returns the resident bytes freed. Idempotent."""
        check_name(name)
        layers = [check_name(l) for l in layers]
        if self.book is not None:
            rec = self.book.entry(name)
            if rec is not None and rec.removed is None and rec.deploy_id != deploy_id:
                return 0   # stale: a newer deployment holds this name now
            if rec is not None and rec.deploy_id == deploy_id:
                layers = sorted(set(layers) | {l.matrix for l in rec.layers})
            await self.book.tombstone(name, deploy_id)
        freed = 0
        for lname in layers:
            freed += sum(b.nbytes for b in self.store.blocks() if b.name == lname)
            await self.plans.forget(lname)
            await self.drop(lname)
        if freed:
            log.info("undeployed %s: freed %d bytes", name, freed)
        return freed

    def _layer_removed(self, matrix: str) -> bool:
        """A plan for a layer of a removed model arriving late must not bring it back."""
        if self.book is None:
            return False
        base = matrix.partition(":")[0]
        rec = self.book.entry(base)
        return (rec is not None and rec.removed is not None
                and any(l.matrix == matrix for l in rec.layers))

    async def store_state(self, name, index, row_start, device, seed, state) -> int:
        """Keep a block programmed elsewhere (a replica being restored)."""
        check_name(name)
        matrix = await self.executor.run(_state_to_matrix, state)
        self.store.reserve(matrix.nbytes, f"block {index} of {name}")
        try:
            block = Resident(name, index, row_start, device, seed, matrix)
            await self.executor.run(self.store.persist, block, copy_pause_s())
        finally:
            self.store.release(matrix.nbytes)
        self.store.add(block)
        # a release scheduled before this copy (say a migration moved the block away, then
        # a repair brings it back) must not drop it before the repair's plan arrives
        self._releasing.discard((name, index))
        log.info("holding restored replica of block %d of %s", index, name)
        return block.nbytes

    async def infer_blocks(self, name: str, indices: list[int], x: Any,
                           read_seed: int) -> dict[str, Any]:
        """A peer's grouped request: ``W_b @ x`` for each block ``b`` of ``indices``.

        X is checked once for all blocks, then every block is read by the same path as a
        single-block request (:meth:`infer_local`), all at once on the compute threads.
        A block that cannot be read here (not resident, moved away) answers its own error
        string, so only that block fails over at the coordinator; X itself being bad, or a
        bug, fails the whole request. Each block's rows are its own array: no gather copy
        here, and the coordinator copies each into its output as before.
        """
        start = time.perf_counter()
        check_name(name)
        if not 0 < len(indices) <= MAX_INFER_BLOCKS or len(set(indices)) != len(indices):
            raise StoreError(f"a grouped request names 1 to {MAX_INFER_BLOCKS} distinct "
                             f"blocks, got {len(indices)} ({len(set(indices))} distinct)")
        if isinstance(x, np.ndarray) and x.nbytes <= INLINE_CHECK_BYTES:
            x = as_matrix(x, "X")
        else:
            (x,) = await validate_operands(self.executor, (x, "X"))
        parts: list[Any] = [str(r) if isinstance(r, UserError) else r
                            for r in await self.read_many(name, indices, x, read_seed)]
        size = sum(p.nbytes for p in parts if isinstance(p, np.ndarray))
        if size > MAX_REPLY_BYTES:
            raise StoreError(f"the {len(indices)} blocks' rows are {size} bytes, over the "
                             f"{MAX_REPLY_BYTES}-byte reply limit")
        return infer_blocks_result_wire(parts, time.perf_counter() - start)

    async def read_many(self, name: str, indices: list[int], x: np.ndarray,
                        read_seed: int) -> list[np.ndarray | UserError]:
        """Each block's ``W_b @ x`` (X already checked), read at once on the compute
        threads, or the error that block alone met (not resident here, say); any other
        exception is a bug and raises. With a block per compute thread or more, a wide X
        is not also cut into chunks: the threads are busy already, and each chunk is one
        more hop."""
        split = len(indices) < self.executor.workers
        results = await asyncio.gather(*(self.infer_local(name, i, x, read_seed, split=split)
                                         for i in indices), return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException) and not isinstance(r, UserError):
                raise r
        return results

    async def infer_local(self, name: str, index: int, x: np.ndarray, read_seed: int,
                          *, validate: bool = False, split: bool = True) -> np.ndarray:
        """``W_block @ x``; ``validate`` checks X first (a peer's X: as_matrix reads it all).

        The block is pinned for the whole read (it cannot leave RAM under it), and the
        blocks predicted to follow it are brought into RAM meanwhile. The common case
        (B < ``MIN_SPLIT_BATCH``, memory-bound) is one executor hop: check X, pin, read,
        unpin on one compute thread, since every hop costs a thread wake-up and a loop
        wake-up, which is most of a small request's time on a busy machine. A wide X is cut
        into tile-row chunks so every compute thread takes a part (several requests then
        share the threads evenly instead of queueing whole blocks); the values are the ones
        a single read gives (noise is keyed by tile position). ``split=False`` reads a wide
        X whole too (a grouped request with a block per thread has nothing to split).
        """
        self.store.get(name, index)
        self.metrics.read()
        self._prefetch_after(name, index)
        reading = self.store.reading(name, index)
        wide = (split and isinstance(x, np.ndarray) and x.ndim == 2
                and x.shape[1] >= MIN_SPLIT_BATCH and self.executor.workers > 1)
        if not wide:
            shape, y, busy = await self.executor.run(self._read_pinned, reading, x, read_seed,
                                                     validate)
        else:
            block, x = await self.executor.run(_pin, reading, x, validate)
            try:
                shape = block.matrix.shape
                y, busy = await self._read_split(block.matrix, x, read_seed)
            finally:
                reading.__exit__(None, None, None)
        if self.memory is not None:
            self.memory.record_served(2.0 * shape[0] * shape[1] * (1 if y.ndim == 1 else y.shape[1]),
                                      busy)
        return y

    def _read_pinned(self, reading: Any, x: Any, read_seed: int,
                     validate: bool) -> tuple[tuple[int, int], np.ndarray, float]:
        """On a compute thread: check X, pin the block, read it whole, unpin."""
        block, x = _pin(reading, x, validate)
        try:
            y, busy = self._timed(functools.partial(block.matrix.matmul, x, read_seed))
        finally:
            reading.__exit__(None, None, None)
        return block.matrix.shape, y, busy

    async def _read_split(self, matrix: ProgrammedMatrix, x: np.ndarray,
                          read_seed: int) -> tuple[np.ndarray, float]:
        """A wide read in tile-row chunks on every compute thread, each writing its rows of
        one output (no gather copy), and the seconds it kept the compute threads busy
        (queueing excluded: this node's own speed must not drop just because it was given
        more work)."""
        g = row_granularity(matrix.profile)
        spans = _chunks(-(-matrix.shape[0] // g), self.executor.workers)
        if len(spans) == 1:
            return await self.executor.run(self._timed, functools.partial(matrix.matmul, x,
                                                                          read_seed))
        y = np.empty((matrix.shape[0], x.shape[1]), dtype=np.float32)

        def part(span: tuple[int, int]) -> None:
            y[span[0] * g:min(matrix.shape[0], span[1] * g)] = matrix.matmul(
                x, read_seed, tile_rows=span)
        parts = await asyncio.gather(*(self.executor.run(self._timed, functools.partial(
            part, span)) for span in spans))
        busy = sum(sec for _, sec in parts) / min(len(spans), self.executor.workers)
        return y, busy

    def _timed(self, fn: Any) -> tuple[Any, float]:
        """``fn()`` on a compute thread, and the seconds it kept that thread.

        With ``--compute-slowdown F`` (a testing aid) the thread then sleeps F-1 times as
        long as ``fn`` ran: the node's compute threads are held F times longer, so it serves
        F times fewer requests, like a slower machine, without taking the shared machine's
        CPU from anyone. Measured on the thread, so queueing is excluded.
        """
        spans.mark("compute.start")
        start = time.perf_counter()
        value = fn()
        spans.mark("compute.end")
        if self.slowdown > 1.0:
            time.sleep((self.slowdown - 1.0) * (time.perf_counter() - start))
        return value, time.perf_counter() - start

    def _prefetch_after(self, name: str, index: int) -> None:
        """Start loading the blocks the dual memory predicts after this one (if held here)."""
        self.prefetcher.after(name, index)

    async def handle(self, session: Session, msg: Any) -> None:
        """Serve a work request from a peer; errors go back as text."""
        if not isinstance(getattr(msg, "rid", None), int):
            log.warning("ignoring unexpected %s from %s", type(msg).TAG, session.peer_id[:8])
            return
        if self.serving >= MAX_SERVING:
            if isinstance(msg, MatmulRows):   # a refused chunk still counts off its operand
                self.operands.served(session.peer_id, msg.job_id)
            await session.reply(msg.rid, error=f"node busy: {self.serving} requests in progress")
            return
        self.serving += 1
        try:
            if isinstance(msg, RunStage) and self.pipeline is not None:
                value = await self.pipeline.serve(session.peer_id, msg)
            else:
                value = await self._serve(msg, session.peer_id)
        except (UserError, PlacementError, ProtocolError) as exc:   # the asker's mistake
            await session.reply(msg.rid, error=str(exc))
        except (LinkClosed, TimeoutError, RemoteError) as exc:   # a stage's downstream failed
            await session.reply(msg.rid, error=f"downstream: {exc or type(exc).__name__}")
        except Exception as exc:   # a bug here, KeyError/ValueError included: say so
            log.exception("serving %s failed", type(msg).__name__)
            await session.reply(msg.rid, error=internal_message(exc))
        else:
            await session.reply(msg.rid, value)
            spans.mark("peer.replied")
        finally:
            self.serving -= 1

    async def _serve(self, msg: Any, sender: str = "") -> Any:
        if isinstance(msg, MatmulOperand):
            return await self._hold_operand(sender, msg)
        if isinstance(msg, MatmulRows):
            return await self._serve_rows(sender, msg)
        if isinstance(msg, MatmulShare):
            spans.mark("peer.share_recv")
            a, b = await validate_operands(self.executor, (msg.a, "A share"), (msg.b, "B"))
            spans.mark("peer.validated")
            if a.shape[1] != b.shape[0]:
                raise StoreError("share shapes do not align")
            # the product's own seconds: the asker's split needs its compute apart
            result, compute_s = await self.compute_share_timed(a, b, msg.device, msg.seed,
                                                               msg.row_offset)
            self.metrics.completed()
            return share_result_wire(result, compute_s)
        if isinstance(msg, InferBlock):
            spans.mark("peer.recv")
            result = await self.infer_local(check_name(msg.name), msg.index, msg.x,
                                            msg.read_seed, validate=True)
            self.metrics.completed()
            return result
        if isinstance(msg, InferBlocks):
            spans.mark("peer.recv")
            result = await self.infer_blocks(msg.name, msg.indices, msg.x, msg.read_seed)
            self.metrics.completed()
            return result
        if isinstance(msg, StoreBlock):
            if not self.accepting:
                raise StoreError("node is shutting down")
            # msg.w is a view into this message's own buffer: owned, not yet validated
            return await self.store_block(msg.name, msg.index, msg.row_start, msg.w,
                                          msg.device, msg.seed, Provenance(owned=True))
        if isinstance(msg, StoreState):
            if not self.accepting:
                raise StoreError("node is shutting down")
            return await self.store_state(msg.name, msg.index, msg.row_start, msg.device,
                                          msg.seed, msg.state)
        if isinstance(msg, PlanNotice):
            plan = _plan_from_peer(msg.plan)
            if self._layer_removed(check_name(msg.name)):
                return False
            await self.plans.put(msg.name, plan)
            self.release_unlisted(msg.name)
            return True
        if isinstance(msg, GetPlan):
            plan = self.plans.versioned(msg.name)
            return plan.to_wire() if plan else None
        if isinstance(msg, ClaimName):
            try:
                self.plans.claims.grant(check_name(msg.name), msg.deploy, msg.owner,
                                        msg.name in self.plans or (
                                            self.book is not None
                                            and self.book.get(msg.name) is not None))
            except ClaimRefused as exc:
                raise StoreError(str(exc)) from None
            return True
        if isinstance(msg, ReleaseName):
            self.plans.claims.release(msg.name, msg.deploy)
            return True
        if isinstance(msg, DropMatrix):
            await self.plans.forget(check_name(msg.name))
            return await self.drop(msg.name)
        if self.book is not None:
            return await self._serve_models(msg)
        raise StoreError(f"unexpected message {type(msg).TAG}")

    async def _hold_operand(self, sender: str, msg: MatmulOperand) -> bool:
        """Hold a chunked share's B for its chunks: registered before the first await (its
        chunks, behind it on the link, are served after this task starts), then validated
        on the compute threads while the first chunk is still in transit."""
        check_seed(msg.seed)
        self.profile(msg.device)            # an unknown preset is refused before holding
        nbytes = msg.b.nbytes if isinstance(msg.b, np.ndarray) else 0
        held = self.operands.open(sender, msg.job_id, nbytes, msg.chunks, msg.device, msg.seed)
        spans.mark("peer.operand_recv")
        try:
            (b,) = await validate_operands(self.executor, (msg.b, "B"))
        except BaseException as exc:
            self.operands.refused(sender, msg.job_id)
            if not held.ready.done():
                held.ready.set_exception(exc if isinstance(exc, Exception) else
                                         StoreError("the operand's validation was cancelled"))
            raise
        if not held.ready.done():
            held.ready.set_result(b)
        spans.mark("peer.validated")
        return True

    async def _serve_rows(self, sender: str, msg: MatmulRows) -> dict[str, Any]:
        """One row chunk of a chunked share: its rows times the held B (A's rows scanned in
        the compute hop); the operand is dropped after its last announced chunk."""
        try:
            held = self.operands.get(sender, msg.job_id)
            spans.mark("peer.share_recv")
            b = await asyncio.shield(held.ready)
            if not isinstance(msg.a, np.ndarray) or msg.a.ndim != 2 or msg.a.shape[1] != b.shape[0]:
                raise StoreError("share shapes do not align")
            if msg.row_offset < 0:
                raise StoreError(f"a chunk's row offset must be >= 0, got {msg.row_offset}")
            result, compute_s = await self.compute_share_timed(
                msg.a, b, held.device, held.seed, msg.row_offset, check_a=True)
        finally:
            self.operands.served(sender, msg.job_id)
        self.metrics.completed()
        return share_result_wire(result, compute_s)

    async def _serve_models(self, msg: Any) -> Any:
        """Deployment records: notices, lookups, undeploys and tombstone syncs."""
        book = self.book
        if isinstance(msg, ModelNotice):
            try:
                rec = ModelRecord.from_dict(msg.record)
            except ValueError as exc:
                raise ProtocolError(f"bad model record: {exc}") from None
            return await book.put(rec)
        if isinstance(msg, GetModel):
            rec = book.entry(check_name(msg.name))
            return rec.to_dict() if rec is not None and rec.removed is None else None
        if isinstance(msg, Undeploy):
            return await self.undeploy_local(msg.name, msg.deploy_id, msg.layers)
        if isinstance(msg, StageResult) and self.pipeline is not None:
            return self.pipeline.deliver(msg)
        if isinstance(msg, ModelSync):
            return [[str(n), str(d)] for n, d in (e[:2] for e in msg.entries if len(e) >= 2)
                    if book.is_removed(str(n), str(d))]
        raise StoreError(f"unexpected message {type(msg).TAG}")


#: Fewest tile rows worth a thread hop of their own (128-row tiles: 256 rows a chunk).
MIN_CHUNK_TILES = 2
#: Below this many input columns a read is bound by memory, not arithmetic: keep it whole.
MIN_SPLIT_BATCH = 8


def _chunks(n_tiles: int, workers: int) -> list[tuple[int, int]]:
    """Split ``n_tiles`` tile rows into about ``2 * workers`` even spans (fewer when small)."""
    count = max(1, min(2 * workers, n_tiles // MIN_CHUNK_TILES))
    bounds = [round(i * n_tiles / count) for i in range(count + 1)]
    return [(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]



def _checked_matmul(a: np.ndarray, b: np.ndarray, out: np.ndarray, check: bool) -> None:
    """On a compute thread: scan ``a`` (when ``check``) and multiply into ``out``."""
    if check:
        as_matrix(a, "A share")
    np.matmul(a, b, out=out)


def _checked_crossbar(a: Any, b: np.ndarray, profile: DeviceProfile, seed: int,
                      row_offset: int, check: bool) -> np.ndarray:
    """On a compute thread: validate ``a`` (when ``check``), then the engine's product."""
    return crossbar_matmul(as_matrix(a, "A share") if check else a, b, profile, seed,
                           row_offset)


def _pin(reading: Any, x: Any, validate: bool) -> tuple[Resident, np.ndarray]:
    """On a compute thread: check X (a peer's, when ``validate``), then pin the block
    (``reading`` may load it from disk) and check that X fits it."""
    if validate:
        x = as_matrix(x, "X")
    block = reading.__enter__()
    cols = block.matrix.shape[1]
    if np.shape(x)[0] != cols:
        reading.__exit__(None, None, None)
        raise StoreError(f"X has {np.shape(x)[0]} rows; block has {cols} columns")
    return block, x


def check_seed(seed: Any) -> None:
    """A programming seed from a peer or a job; a bad one is the asker's error."""
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 1 << 63:
        raise StoreError(f"seed must be an integer from 0 to 2^63-1, got {seed!r}")


#: Fewest rows of a one-shot product worth a compute thread of their own.
MIN_SHARE_ROWS = 64


async def validate_operands(executor: Executor, *operands: tuple[Any, str]) -> list[np.ndarray]:
    """Validate matmul operands (``as_matrix``) on every compute thread at once.

    The NaN/Inf scan of a one-shot job's operands (32 MiB at N=2048) sits on its critical
    path twice, at the coordinator and at the peer, and on one thread it left the other
    core idle. 2-D float32 operands are scanned in row spans, one per compute thread
    (numpy releases the GIL), by the same ``as_matrix``; anything else is checked,
    converted and scanned by ``as_matrix`` on one thread as before."""
    return list(await asyncio.gather(*(
        _scan_in_spans(executor, value, what) if _plain_f32(value)
        else executor.run(as_matrix, value, what) for value, what in operands)))


async def _scan_in_spans(executor: Executor, value: np.ndarray, what: str) -> np.ndarray:
    await asyncio.gather(*(executor.run(as_matrix, value[r0:r1], what)
                           for r0, r1 in _row_spans(value.shape[0], executor.workers)))
    return value


def _plain_f32(value: Any) -> bool:
    return isinstance(value, np.ndarray) and value.ndim == 2 and value.dtype == np.float32 \
        and value.shape[0] > 0 and value.shape[1] > 0


def _row_spans(rows: int, workers: int) -> list[tuple[int, int]]:
    """``rows`` cut into at most ``workers`` near-equal spans of ``MIN_SHARE_ROWS`` or more."""
    count = max(1, min(workers, rows // MIN_SHARE_ROWS))
    bounds = [round(i * rows / count) for i in range(count + 1)]
    return [(r0, r1) for r0, r1 in zip(bounds, bounds[1:]) if r1 > r0]


def program_block(w: np.ndarray, profile: DeviceProfile, seed: int, row_start: int,
                  owned: bool) -> ProgrammedMatrix:
    """Program a block; the ideal device keeps an owned float32 buffer as its weights.

    Why: programming an ideal matrix is a float32 copy of W. When ``w`` is a buffer only
    this block will hold (rows read from a file, a peer's message), that copy is a second
    W-sized allocation and a pass over it for nothing. The seed is checked here because
    the shortcut does not reach the engine's own check (a peer's bad seed is its error).
    """
    check_seed(seed)
    if (owned and profile.is_ideal and w.dtype == np.float32 and w.ndim == 2
            and w.flags.c_contiguous):
        return ProgrammedMatrix(profile, w.shape, row_start, seed, None, None, w)
    return ProgrammedMatrix.program(w, profile, seed, row_offset=row_start)


def _state_to_matrix(state: Any) -> ProgrammedMatrix:
    """A peer's programmed state; a malformed one is the peer's error, not ours."""
    try:
        return ProgrammedMatrix.from_state(state)
    except (ValueError, KeyError, TypeError) as exc:
        raise ProtocolError(f"malformed block state: {exc}") from None


def _plan_from_peer(value: Any) -> VersionedPlan:
    try:
        return VersionedPlan.from_wire(value)
    except (ValueError, KeyError, TypeError) as exc:
        raise ProtocolError(f"malformed plan: {exc}") from None
