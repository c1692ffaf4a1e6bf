"""What this node does with its own resident blocks, for itself and for its peers.

The holder programs blocks and keeps them (via the :class:`~node.memory.store.BlockStore`), reads
them for ``infer``, computes one-shot shares, and answers the work requests peers send
(:mod:`protocol.work`). Every failure goes back to the asking peer as text; nothing a peer
sends can stop the daemon. Compute always runs on the executor's threads.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from typing import Any

import numpy as np

from compute.crossbar import ProgrammedMatrix, crossbar_matmul, row_granularity
from compute.device import DeviceProfile, get_preset
from compute.executor import Executor
from compute.partition import PlacementError
from node.errors import UserError, internal_message
from node.metrics import Metrics
from nat.link import LinkClosed
from node.work.claims import ClaimRefused
from node.work.modelbook import ModelBook, ModelRecord, check_matrix_name as check_name
from node.work.plans import PlanBook, VersionedPlan
from node.net.session import RemoteError, Session
from node.memory.store import BlockStore, Resident, StoreError, as_matrix, validate_pair
from protocol.errors import ProtocolError
from protocol.work import (ClaimName, DropMatrix, GetModel, GetPlan, InferBlock, MatmulShare,
                           ModelNotice, ModelSync, PlanNotice, ReleaseName, RunStage,
                           StageResult, StoreBlock, StoreState, Undeploy)

log = logging.getLogger("sedma.holder")

MAX_SERVING = 256          # peer requests served at once; more are refused, not queued


class BlockHolder:
    """This node's compute and resident blocks, behind one small API."""

    def __init__(self, device: DeviceProfile, store: BlockStore, executor: Executor,
                 metrics: Metrics, plans: PlanBook, book: ModelBook | None = None) -> None:
        self.device = device
        self.book = book
        self.pipeline: Any = None   # node.work.pipeline.Pipeline, set once the daemon made it
        self.store = store
        self.executor = executor
        self.metrics = metrics
        self.plans = plans
        self.accepting = True
        self.serving = 0

    def profile(self, name: str | None) -> DeviceProfile:
        """The named preset, or this node's own device when the job names none."""
        if not name:
            return self.device
        try:
            return get_preset(name)
        except ValueError as exc:   # the asker named a preset this node does not know
            raise StoreError(str(exc)) from None

    async def compute_share(self, a: np.ndarray, b: np.ndarray, device: str | None, seed: int,
                            row_offset: int) -> np.ndarray:
        """One-shot ``a @ b`` on crossbars (a is rows [row_offset, ...) of the job's A)."""
        return await self.executor.run(crossbar_matmul, a, b, self.profile(device), seed,
                                       row_offset)

    async def store_block(self, name, index, row_start, w, device, seed) -> int:
        """Program a block here, persist it, then make it available; return its bytes."""
        check_name(name)
        w = await self.executor.run(as_matrix, w, "block")
        profile = self.profile(device)
        if row_start % row_granularity(profile):
            raise StoreError(f"block start {row_start} is not a multiple of the "
                             f"{row_granularity(profile)}-row tile of {profile.name}")
        cost = profile.resident_bytes(w.shape)
        self.store.reserve(cost, f"block {index} of {name}")
        try:
            def program_and_persist() -> Resident:
                matrix = ProgrammedMatrix.program(w, profile, seed, row_offset=row_start)
                block = Resident(name, index, row_start, device, seed, matrix)
                self.store.persist(block)
                return block
            started = time.monotonic()
            block = await self.executor.run(program_and_persist)
        finally:
            self.store.release(cost)
        self.metrics.programmed(block.nbytes, time.monotonic() - started)
        self.store.add(block)
        log.info("holding block %d of %s (%dx%d, %s, %d bytes)", index, name,
                 *block.matrix.shape, profile.name, block.nbytes)
        return block.nbytes

    async def drop(self, name: str) -> int:
        """Forget every block of ``name`` (file deletes and the commit off the event loop)."""
        return await self.executor.run(self.store.drop, name)

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
            await self.executor.run(self.store.persist, block)
        finally:
            self.store.release(matrix.nbytes)
        self.store.add(block)
        log.info("holding restored replica of block %d of %s", index, name)
        return block.nbytes

    async def infer_local(self, name: str, index: int, x: np.ndarray, read_seed: int) -> np.ndarray:
        """``W_block @ x``, cut into tile-row chunks so every compute thread takes a part.

        Several requests (or several blocks of one request) then share the threads evenly
        instead of queueing whole blocks behind each other; the values are the ones a single
        read gives (noise is keyed by tile position).
        """
        block = self.store.get(name, index)
        self.metrics.read()
        matrix = block.matrix
        if matrix.shape[1] != x.shape[0]:
            raise StoreError(f"X has {x.shape[0]} rows; block has {matrix.shape[1]} columns")
        spans = _chunks(-(-matrix.shape[0] // row_granularity(matrix.profile)), self.executor.workers)
        if len(spans) == 1 or x.ndim == 1 or x.shape[1] < MIN_SPLIT_BATCH:  # memory-bound
            return await self.executor.run(matrix.matmul, x, read_seed)
        parts = await asyncio.gather(*(self.executor.run(
            functools.partial(matrix.matmul, x, read_seed, tile_rows=span)) for span in spans))
        return await self.executor.run(np.concatenate, parts)   # up to GiBs: not on the loop


    async def handle(self, session: Session, msg: Any) -> None:
        """Serve a work request from a peer; errors go back as text."""
        if not isinstance(getattr(msg, "rid", None), int):
            log.warning("ignoring unexpected %s from %s", type(msg).TAG, session.peer_id[:8])
            return
        if self.serving >= MAX_SERVING:
            await session.reply(msg.rid, error=f"node busy: {self.serving} requests in progress")
            return
        self.serving += 1
        try:
            if isinstance(msg, RunStage) and self.pipeline is not None:
                value = await self.pipeline.serve(session.peer_id, msg)
            else:
                value = await self._serve(msg)
        except (UserError, PlacementError, ProtocolError) as exc:   # the asker's mistake
            await session.reply(msg.rid, error=str(exc))
        except (LinkClosed, TimeoutError, RemoteError) as exc:   # a stage's downstream failed
            await session.reply(msg.rid, error=f"downstream: {exc or type(exc).__name__}")
        except Exception as exc:   # a bug here, KeyError/ValueError included: say so
            log.exception("serving %s failed", type(msg).__name__)
            await session.reply(msg.rid, error=internal_message(exc))
        else:
            await session.reply(msg.rid, value)
        finally:
            self.serving -= 1

    async def _serve(self, msg: Any) -> Any:
        if isinstance(msg, MatmulShare):
            a, b = await self.executor.run(validate_pair, msg.a, msg.b, "A share")
            if a.shape[1] != b.shape[0]:
                raise StoreError("share shapes do not align")
            result = await self.compute_share(a, b, msg.device, msg.seed, msg.row_offset)
            self.metrics.completed()
            return result
        if isinstance(msg, InferBlock):
            x = await self.executor.run(as_matrix, msg.x, "X")
            result = await self.infer_local(check_name(msg.name), msg.index, x, msg.read_seed)
            self.metrics.completed()
            return result
        if isinstance(msg, StoreBlock):
            if not self.accepting:
                raise StoreError("node is shutting down")
            return await self.store_block(msg.name, msg.index, msg.row_start, msg.w,
                                          msg.device, msg.seed)
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
