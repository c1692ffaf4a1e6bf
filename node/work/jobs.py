"""Jobs this node coordinates: one-shot ``matmul``, ``deploy`` of resident weights, ``infer``.

The coordinator (the node whose local socket received the job) asks the placement scorer
for shares, sends each share to its node, and gathers the results. A share whose node
dies or times out is recomputed elsewhere (bounded attempts, this node last), so a job
returns the exact result as long as one node is left. Weights deployed with ``deploy``
stay resident on ``replicas`` nodes per row block; ``infer`` moves only X to one holder
of each block and the partial outputs back.

Job records live in SQLite (submitted, state, finished, error) and results in the data
directory, so a client that disconnects can fetch its result later, and a restart knows
which jobs were interrupted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import random
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Iterator
from typing import Any

import msgpack
from compute.lazynumpy import np
from protocol import codec

from compute.device import get_preset
from compute.partition import (Block, NodeSlot, PartitionPlan, PlacementError, plan_rows,
                               unit_rows)
from nat.link import LinkClosed
from node import shm
from node.runtime import spans
from node.errors import UserError, internal_message
from node.memory.dualmemory import DualMemory
from node.metrics import Metrics
from node.work.blockgroups import BlockTry, fail_over, group_by_holder, read_parts
from node.work.latency import PeakEwma, order_holders
from node.work.oneshotsplit import (MAX_CHUNKS, ShareCost, Split, chunk_rows, fits_memory,
                                    measuring_alone_affordable, transfer_split)
from node.work.placement import Candidate, holdable, rank
from node.work.sharemeter import ShareMeter, ShareTiming, host_id
from node.work.claims import ClaimRefused, quorum
from node.work.plans import VersionedPlan, new_deploy_id
from node.work.retention import JobStamp, Retention, expired
from node.work.holder import BlockHolder, Provenance, validate_operands
from node.net.session import RemoteError
from node.runtime.outcomes import ignore_outcome
from node.memory.statedb import StateDB
from node.memory.store import StoreError, as_matrix, check_name
from protocol.errors import ProtocolError
from protocol.framing import DEFAULT_MAX_MESSAGE
from protocol.work import (ClaimName, DropMatrix, GetPlan, InferBlocks, MatmulOperand,
                           MatmulRows, PlanNotice, ReleaseName, StoreBlock, read_share_result)

log = logging.getLogger("sedma.jobs")

MAX_ATTEMPTS = 4
REMOTE_HOP_S = 0.002     # a remote block read pays a round trip and X's transfer
CLAIM_TIMEOUT = 5.0   # a member that cannot answer a name claim in this long counts as "no"
BASE_TIMEOUT = 30.0
#: A job's operands and result together. Below the peer message limit (every share and
#: partial result then fits in one message) and the local API's frame limit.
MAX_JOB_BYTES = DEFAULT_MAX_MESSAGE - (1 << 20)
MAX_SEED = (1 << 63) - 1
#: Operands and partial results up to this size are validated and copied on the event
#: loop, not on the executor: a hop costs a thread and a loop wake-up, more than the work
#: itself at this size and most of a B=1 request's overhead. 2 MiB: measured here, the
#: NaN scan of a B=64 X at N=4096 (1 MiB) takes ~50 us and copying a peer's 512 KiB of Y
#: into the output ~20 us, against 0.3-2 ms per hop on a loaded machine (bench/README.md,
#: path4); the largest inline step (~0.2 ms) stays far under the loop's budget.
INLINE_BYTES = 2 << 20
FINAL_STATES = ("done", "failed", "cancelled")
#: After a job is kept whole to measure this node alone, no other job is kept whole for
#: the same figure for this long: jobs planned meanwhile (concurrent ones) split as usual.
MEASURE_PENDING_S = 30.0


class JobError(UserError):
    """A job cannot run or failed; the message is for the user."""


@dataclass
class Job:
    id: str
    kind: str
    state: str = "queued"
    submitted: float = field(default_factory=time.time)
    finished: float | None = None
    error: str | None = None
    detail: dict = field(default_factory=dict)
    task: asyncio.Task | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def public(self) -> dict:
        return {"id": self.id, "kind": self.kind, "state": self.state,
                "submitted": self.submitted, "finished": self.finished, "error": self.error,
                **{k: v for k, v in self.detail.items() if k not in ("id", "kind")}}


class JobManager:
    """Coordinates the jobs submitted here; the holder does this node's own share."""

    def __init__(self, node_id: str, holder: BlockHolder, mesh: Any, memory: DualMemory,
                 metrics: Metrics, db: StateDB, data_dir: Path, capacity: float,
                 retention: Retention = Retention()) -> None:
        self.node_id = node_id
        self.holder = holder
        self.plans = holder.plans
        self.executor = holder.executor
        self.mesh = mesh
        self.memory = memory
        self.metrics = metrics
        self.db = db
        self.results = data_dir / "results"
        self.results.mkdir(parents=True, exist_ok=True)
        self.capacity = capacity
        self.retention = retention
        self.jobs: dict[str, Job] = {}
        self.accepting = True
        #: Block requests this node has sent and not yet had answered, per holder.
        self.inflight: dict[str, int] = {}
        #: recent end-to-end cost of a block request to each holder (the replica choice)
        self.recent = PeakEwma()
        #: One-shot compute speeds measured per node, and this machine's id (co-hosts).
        self.share_meter = ShareMeter()
        # when the last job kept whole to measure this node alone was planned: one at a time
        self._measure_planned_at = -math.inf
        self.host = host_id()

    # persistence --------------------------------------------------------------------
    def restore(self) -> list[str]:
        """Restore job records; jobs that were running were interrupted by a stop.

        Returns the names of deploys that were interrupted (their blocks may be stored
        without a committed plan: the caller decides what to drop)."""
        def read(conn):
            interrupted = conn.execute("SELECT detail FROM jobs WHERE kind='deploy' AND "
                                       "state IN ('queued','running')").fetchall()
            conn.execute("UPDATE jobs SET state='failed', finished=?, "
                         "error='interrupted: the daemon stopped before it finished' "
                         "WHERE state IN ('queued','running')", (time.time(),))
            return interrupted, conn.execute(
                "SELECT id, kind, state, submitted, finished, error, detail "
                "FROM jobs ORDER BY submitted").fetchall()
        interrupted, rows = self.db.call(read)
        for jid, kind, state, submitted, finished, error, detail in rows:
            try:
                info = msgpack.unpackb(detail) if detail else {}
            except (ValueError, msgpack.UnpackException):
                info = {}
            job = Job(jid, kind, state, submitted, finished, error,
                      info if isinstance(info, dict) else {})
            job.done.set()
            self.jobs[jid] = job
        gone = self._forget(expired(self._stamps(), time.time(), self.retention))
        self.db.call(lambda c: _delete_rows(c, gone))
        _remove_results(self.results, gone, keep=set(self.jobs))
        return [n for n in (_detail_name(d) for (d,) in interrupted) if n]

    # retention ------------------------------------------------------------------------
    def _stamps(self) -> list[JobStamp]:
        return [JobStamp(j.id, j.finished if j.done.is_set() else None)
                for j in self.jobs.values()]

    def _forget(self, ids: list[str]) -> list[str]:
        for jid in ids:
            del self.jobs[jid]
        return ids

    async def prune(self, now: float | None = None) -> int:
        """Forget finished jobs the retention rule expires: record, row and result file."""
        now = time.time() if now is None else now
        gone = self._forget(expired(self._stamps(), now, self.retention))
        if gone:
            await self.db.run(lambda c: _delete_rows(c, gone))
            await self.executor.upkeep(_remove_results, self.results, gone, None)
            log.info("forgot %d finished job(s) past retention", len(gone))
        return len(gone)

    async def _save_job(self, job: Job) -> None:
        row = (job.id, job.kind, job.state, job.submitted, job.finished, job.error,
               msgpack.packb(job.detail))
        await self.db.run(lambda c: c.execute(
            "INSERT OR REPLACE INTO jobs VALUES (?,?,?,?,?,?,?)", row))

    # job lifecycle --------------------------------------------------------------------
    async def start_job(self, kind: str, detail: dict, coro_factory,
                        durable_start: bool = True) -> Job:
        """Record and start a job. ``durable_start=False`` (a one-shot matmul: nothing to
        clean up if it is interrupted) starts it while its record commits, instead of
        after; the final record is still written after that first one."""
        if not self.accepting:
            raise JobError("the daemon is shutting down and accepts no new jobs")
        job = Job(os.urandom(6).hex(), kind, "running", detail=detail)
        self.jobs[job.id] = job
        saved = asyncio.ensure_future(self._save_job(job))
        if durable_start:
            await saved
        job.task = asyncio.get_running_loop().create_task(self._run(job, coro_factory, saved))
        return job

    async def _run(self, job: Job, coro_factory, saved: asyncio.Future | None = None) -> None:
        log.info("job %s (%s) started: %s", job.id, job.kind, job.detail)
        try:
            await coro_factory(job)
            job.state = "done"
        except asyncio.CancelledError:
            job.state, job.error = "cancelled", job.error or "cancelled by the user"
        except (UserError, PlacementError) as exc:
            job.state, job.error = "failed", str(exc)
        except Exception as exc:  # a bug: keep serving, but say so loudly
            log.exception("job %s crashed", job.id)
            job.state, job.error = "failed", internal_message(exc)
        job.finished = time.time()
        if saved is not None:
            try:   # the first record goes first, or it would overwrite the final one
                await asyncio.shield(saved)
            except Exception as exc:
                log.error("job %s: its start record was not saved: %s", job.id, exc)
        await asyncio.shield(self._save_job(job))
        job.done.set()
        log.info("job %s %s in %.3fs%s", job.id, job.state, job.finished - job.submitted,
                 f": {job.error}" if job.error else "")

    def get(self, job_id: str) -> Job:
        job = self.jobs.get(job_id)
        if job is None:
            raise JobError(f"no job {job_id!r} on this node")
        return job

    async def wait(self, job_id: str, timeout: float | None) -> Job:
        job = self.get(job_id)
        try:
            await asyncio.wait_for(job.done.wait(), timeout)
        except asyncio.TimeoutError:
            pass
        return job

    def cancel(self, job_id: str) -> Job:
        job = self.get(job_id)
        if job.task is not None and not job.task.done():
            job.task.cancel()
        return job

    async def result(self, job_id: str, mapped: bool = False) -> np.ndarray:
        """A done job's stored result, read into memory; with ``mapped``, a read-only
        ``np.memmap`` of the file instead, for a local client that maps the file itself
        (node/shm.py, result files). The caller must then not touch the array's pages on
        the event loop. Nothing is read or copied here only for a result file written
        with a page-sized header (since result files) whose data area is at least
        ``shm.ARENA_MAX``: an older file or a smaller result is read into memory, on the
        executor, as without ``mapped`` (:func:`_map_result`)."""
        job = self.get(job_id)
        if job.state != "done":
            raise JobError(f"job {job_id} is {job.state}" + (f": {job.error}" if job.error else ""))
        path = self.results / f"{job_id}.npy"
        try:   # read on the executor: a memory map would fault pages in on the event loop
            if mapped:
                return await self.executor.run(_map_result, path)
            return await self.executor.run(np.load, path)
        except FileNotFoundError:
            raise JobError(f"job {job_id} has no stored result") from None
        except (ValueError, EOFError, OSError) as exc:   # cut short by a power loss
            raise JobError(f"job {job_id}'s stored result is unreadable: {exc}") from None

    async def shutdown(self, grace: float) -> None:
        """Stop accepting jobs; give running ones ``grace`` seconds, then cancel them."""
        self.accepting = False
        self.holder.accepting = False
        running = [j.task for j in self.jobs.values() if j.task and not j.task.done()]
        if running:
            log.info("waiting up to %.0fs for %d running job(s)", grace, len(running))
            _, pending = await asyncio.wait(running, timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=5)

    # candidates -----------------------------------------------------------------------
    def candidates(self, only: set[str] | None = None) -> list[Candidate]:
        """This node plus every alive member, as the scorer sees them (only those in
        ``only`` when given: a request ranks a block's holders, not the whole mesh)."""
        store = self.holder.store
        out = []
        if only is None or self.node_id in only:
            out.append(Candidate(self.node_id, self.capacity, self.load(), store.free,
                                 self.holder.device.name, "self", True, store.disk_free,
                                 self.memory.tier1_speed()))
        for m in self.mesh.members():
            if (m.node_id == self.node_id or m.state.value != "alive"
                    or (only is not None and m.node_id not in only)):
                continue
            a = m.advert
            outcome = self.mesh.connector.outcome(m.node_id)
            session = self.mesh.sessions.get(m.node_id)
            link = session.link.kind if session else (outcome.kind if outcome else "none")
            out.append(Candidate(m.node_id, a.capacity, a.load, a.memory_free, a.device, link,
                                 True, a.disk_free, a.tier1_speed))
        return out

    def load(self) -> float:
        return (self.executor.running + self.executor.queued) / self.executor.workers

    def slots(self, exclude: set[str] = frozenset()) -> list[NodeSlot]:
        slots = []
        for sc, c in rank(self.candidates(), self.memory):
            if c.node_id in exclude:
                continue
            try:
                dev = self.holder.device if c.node_id == self.node_id else get_preset(c.device)
            except ValueError:
                continue
            slots.append(NodeSlot(c.node_id, sc, holdable(c), dev))
        return slots

    # matmul ---------------------------------------------------------------------------
    async def submit_matmul(self, a: Any, b: Any, device: str | None, seed: int) -> Job:
        a, b = await validate_operands(self.executor, (a, "A"), (b, "B"))
        spans.mark("job.validated")
        if a.shape[1] != b.shape[0]:
            raise JobError(f"shapes do not align: A is {a.shape[0]}x{a.shape[1]}, "
                           f"B is {b.shape[0]}x{b.shape[1]}")
        check_device(device)
        check_seed(seed)
        check_size((a.size + b.size + a.shape[0] * b.shape[1]) * 4, "matmul")
        detail = {"shape": [a.shape[0], a.shape[1], b.shape[1]], "device": device, "seed": seed}
        return await self.start_job("matmul", detail,
                                    lambda job: self._matmul(job, a, b, device, seed),
                                    durable_start=False)

    async def _matmul(self, job: Job, a: np.ndarray, b: np.ndarray, device: str | None,
                      seed: int) -> None:
        self.metrics.live_bytes += a.nbytes + b.nbytes
        try:
            slots = self.slots()
            plan = self._oneshot_plan(job, a.shape, b.shape[1], slots, device)
            out = np.empty((a.shape[0], b.shape[1]), dtype=np.float32)
            job.detail["placement"] = plan.rows_by_node()
            unit = share_unit(slots, device)
            # Every share starts at once, this node's own on its compute threads while the
            # loop seals and writes the peers' (it used to wait for their hand-over, leaving
            # a core idle for the sealing's length: bench/README.md, oneshot4). The peers'
            # shares go first, so their first bytes leave before this node's compute starts.
            # ``pieces``: first row -> those rows of the product, every row in exactly one:
            # a peer's chunk stays in its reply's buffer, this node's rows are views of out.
            pieces: dict[int, np.ndarray] = {}
            sealing: list[list[float]] = []      # [start, end] of each peer's hand-over
            order = sorted(plan.blocks, key=lambda blk: blk.nodes[0] == self.node_id)
            await asyncio.gather(*(self._share(job, blk, a, b, out, device, seed, pieces, unit,
                                               sealing) for blk in order))
            spans.mark("job.gathered")
            path = self.results / f"{job.id}.npy"
            await self.executor.run(_save_npy_rows, path, out.shape, list(pieces.items()))
            spans.mark("job.saved")
        finally:
            self.metrics.live_bytes -= a.nbytes + b.nbytes

    def _oneshot_plan(self, job: Job, shape: tuple[int, int], n: int, slots: list[NodeSlot],
                      device: str | None) -> PartitionPlan:
        """The transfer-aware split when every candidate is measured, else the capacity
        split (which measures them); the choice and predicted times go to the log and the
        job's detail."""
        dev = get_preset(device) if device else None
        costs = self._share_costs(slots, device)
        if costs is None:
            job.detail["split"] = {"by": "capacity"}
            return plan_rows(shape, slots, device=dev)
        unit = share_unit(slots, device)
        # this node's share computes alongside the hand-over on every compute thread, which
        # the loop's sealing slows by one core of ``workers`` while it lasts
        split = transfer_split(shape[0], shape[1], n, costs, unit,
                               handover_delay=self._handover_delay())
        if self._should_measure_alone(costs, split, shape, n, slots, device, dev):
            return self._measure_alone(job, shape, device)
        if not fits_memory(split.rows, slots, shape[1], dev):
            job.detail["split"] = {"by": "capacity", "why": "a node's free memory"}
            log.info("job %s: the transfer-aware split %s exceeds a node's free memory; "
                     "split by capacity within memory", job.id,
                     {nid[:8]: r for nid, r in split.rows})
            return plan_rows(shape, slots, device=dev)
        predicted = {nid: round(t * 1000, 1) for nid, t in split.predicted_s.items()}
        job.detail["split"] = {"by": "transfer", "predicted_ms": predicted,
                               "cohosts": [c.node_id for c in costs if c.cohost]}
        log.info("job %s: transfer-aware split %s, predicted ms %s (co-hosts left out: %d); "
                 "measured GFLOP/s, path and hand-over MB/s: %s; this node beside peers' "
                 "shares %.1f GFLOP/s", job.id,
                 {nid[:8]: r for nid, r in split.rows},
                 {nid[:8]: t for nid, t in predicted.items()}, sum(c.cohost for c in costs),
                 {c.node_id[:8]: (round(c.gflops, 1), round(c.link_bps / 1e6),
                                  round(c.handover_bps / 1e6)) for c in costs},
                 next(c.alongside_gflops for c in costs if c.local))
        return split.plan(shape, device)

    def _alone_unmeasured(self, costs: list[ShareCost], device: str | None) -> bool:
        """Whether the split would have to price the job kept whole without ever having
        measured it: every job so far gave a peer rows (the first splits by capacity), so
        this node's speed is known only beside peers' shares, and a peer could get rows."""
        return (self.share_meter.speed(self.node_id, device or "") is None
                and any(not c.local and not c.cohost for c in costs))

    def _should_measure_alone(self, costs: list[ShareCost], split: Split,
                              shape: tuple[int, int], n: int, slots: list[NodeSlot],
                              device: str | None, dev) -> bool:
        """Whether this job is the one kept whole to measure this node alone: its speed
        alone is unknown, the whole job is affordable next to the split and fits this
        node's free memory (else the job could only split by capacity, which measures this
        node beside peers again, and every later job would come back here), and no other
        measuring job was planned within ``MEASURE_PENDING_S`` (two concurrent jobs must
        not both be kept whole for one figure)."""
        if time.monotonic() - self._measure_planned_at < MEASURE_PENDING_S:
            return False
        return (self._alone_unmeasured(costs, device)
                and measuring_alone_affordable(split, next(c for c in costs if c.local),
                                               shape[0], shape[1], n)
                and fits_memory(((self.node_id, shape[0]),), slots, shape[1], dev))

    def _measure_alone(self, job: Job, shape: tuple[int, int],
                       device: str | None) -> PartitionPlan:
        """Keep this job on this node to measure its speed alone: the split compares a
        split against the job kept whole, and a whole job's speed is the one figure only a
        whole job measures (beside a peer on the same cores it can be half of it). Costs
        one job in ``MAX_AGE_S`` at most, when every job splits, and only a job whose whole
        time is within ``MEASURE_ALONE_COST`` of the split's (``measuring_alone_affordable``)."""
        self._measure_planned_at = time.monotonic()
        job.detail["split"] = {"by": "measure", "why": "this node's speed alone"}
        log.info("job %s: kept on this node to measure its speed alone", job.id)
        return Split(((self.node_id, shape[0]),), {}).plan(shape, device)

    def _share_costs(self, slots: list[NodeSlot], device: str | None) -> list[ShareCost] | None:
        """A snapshot of what one-shot shares measured, for the candidates in ``slots``;
        None when any of them (co-hosts aside) lacks a compute speed or a link speed."""
        members = {m.node_id: m for m in self.mesh.members()}
        self.share_meter.forget(set(members) | {self.node_id})
        key = device or ""
        costs = []
        for slot in slots:
            nid = slot.node_id
            speed = self.share_meter.speed(nid, key)
            if nid == self.node_id:
                # alone (a whole job) and beside peers' shares; either stands for both
                # until the other is measured, as one figure did before they were apart
                alongside = self.share_meter.speed_alongside(nid, key)
                if speed is None and alongside is None:
                    return None
                costs.append(ShareCost(nid, speed or alongside, local=True,
                                       alongside_gflops=alongside or 0.0))
                continue
            member = members.get(nid)
            if member is not None and self.host and member.advert.extra.get("host") == self.host:
                costs.append(ShareCost(nid, speed or 0.0, cohost=True))
                continue
            link = self.share_meter.link_bps(nid) or 0.0
            if speed is None or link <= 0:
                return None
            costs.append(ShareCost(nid, speed, link, self._rtt_s(nid),
                                   handover_bps=self.share_meter.handover_bps(nid) or 0.0,
                                   chunks=MAX_CHUNKS))
        if not any(c.local for c in costs):
            return None
        return costs

    def _handover_delay(self) -> float:
        """The part of a peer's hand-over that delays this node's own share, which computes
        alongside it on every compute thread: the loop's sealing takes one core of those."""
        return 1.0 / max(1, self.executor.workers)

    def _rtt_s(self, node: str) -> float:
        session = self.mesh.sessions.get(node)
        rtt = session.link.rtt_ms if session is not None else None
        return (rtt or 0.0) / 1000

    async def _share(self, job: Job, blk, a, b, out, device, seed,
                     pieces: dict[int, np.ndarray], unit: int = 1,
                     sealing: list[list[float]] | None = None) -> None:
        """One row share of a matmul job, failed over to other nodes: a peer's in row
        chunks (``chunk_rows``); when a peer fails, only its chunks not yet answered go to
        the next node. Every computed range lands in ``pieces`` by its first row.
        ``sealing``: the job's peer hand-overs, [start, end] (perf_counter), so this node's
        own compute speed is kept net of the sealing it ran alongside (``own_seconds``)."""
        sealing = [] if sealing is None else sealing
        todo = [(blk.row_start, blk.row_stop)]
        tried: set[str] = set()
        target = blk.nodes[0]
        k, n = a.shape[1], b.shape[1]
        for attempt in range(MAX_ATTEMPTS):
            tried.add(target)
            if target != self.node_id:
                todo = [c for r0, r1 in todo for c in chunk_rows(r0, r1, k, unit)]
                sent = job.detail.setdefault("chunks", {})
                sent[target] = sent.get(target, 0) + len(todo)
            flops = 2.0 * sum(r1 - r0 for r0, r1 in todo) * k * n
            start = time.perf_counter()
            try:
                if target == self.node_id:       # computed straight into its rows of out
                    for r0, r1 in todo:
                        await self.holder.compute_share(a[r0:r1], b, device, seed, r0, out[r0:r1])
                        pieces[r0] = out[r0:r1]
                    # beside a peer's share (one whose hand-over began) the cores may
                    # be shared with it: that speed is kept apart (local_with_peers)
                    self.share_meter.record(target, device or "", flops, own_seconds(
                        start, time.perf_counter(), sealing, self._handover_delay()),
                        alongside=bool(sealing))
                else:
                    await self._chunks_on(target, job.id, a, b, todo, device, seed, pieces,
                                          sealing)
                self.memory.record_share(target, flops, time.perf_counter() - start, True)
                return
            except (LinkClosed, TimeoutError, RemoteError, ProtocolError, OSError) as exc:
                self.memory.record_share(target, flops, time.perf_counter() - start, False)
                todo = [(r0, r1) for r0, r1 in todo if r0 not in pieces]
                log.warning("job %s: share rows %s on %s failed (%s); reassigning %d row(s)",
                            job.id, _ranges_text(todo), target[:8], exc,
                            sum(r1 - r0 for r0, r1 in todo))
                target = self._fallback(tried, attempt)
        raise JobError(f"rows {blk.row_start}-{blk.row_stop} failed on {len(tried)} nodes")

    def _fallback(self, tried: set[str], attempt: int) -> str:
        """Best-scoring node not tried yet; this node for the last attempt."""
        if attempt >= MAX_ATTEMPTS - 2:
            return self.node_id
        for slot in self.slots(exclude=tried):
            return slot.node_id
        return self.node_id

    async def _chunks_on(self, node: str, job_id: str, a: np.ndarray, b: np.ndarray,
                         chunks: list[tuple[int, int]], device: str | None, seed: int,
                         pieces: dict[int, np.ndarray],
                         sealing: list[list[float]] | None = None) -> None:
        """Rows ``chunks`` of the product on peer ``node``: B once (``MatmulOperand``), then
        each chunk of A's rows (``MatmulRows``) once the one before is on the link, so the
        peer computes a chunk while the next is in transit. Each answered chunk goes to
        ``pieces`` as it comes; a failure raises with the answered ones kept there (the
        caller fails over the rest). Sent one after another, not queued together: the
        session interleaves queued bulk messages frame by frame, which would make every
        chunk arrive as late as the last."""
        session = await self.mesh.session(node)
        loop = asyncio.get_running_loop()
        k, n = a.shape[1], b.shape[1]
        rows = sum(r1 - r0 for r0, r1 in chunks)
        flops, nbytes = 2.0 * rows * k * n, b.nbytes + rows * k * a.itemsize
        timeout = request_timeout(flops, nbytes)
        operand = f"{job_id}/{chunks[0][0]}"     # one per attempt: its ranges are the job's
        spans.mark("share.send")
        start = time.perf_counter()
        sealed = [start, math.inf]           # until handed over (or failed)
        if sealing is not None:
            sealing.append(sealed)
        msgs = [MatmulOperand(session.next_rid(), operand, b, device, seed, len(chunks))]
        msgs += [MatmulRows(session.next_rid(), operand, a[r0:r1], r0) for r0, r1 in chunks]
        requests: list[asyncio.Future] = []
        try:
            for msg in msgs:
                handed = loop.create_future()
                requests.append(asyncio.ensure_future(session.request(msg, timeout, sent=handed)))
                await handed
                _raise_if_failed(requests[0])    # B refused: ship no more of A
            handover_s = time.perf_counter() - start
            sealed[1] = start + handover_s
            spans.mark("share.handed")
            await requests[0]
            compute: list[float | None] = []
            for (r0, r1), request in zip(chunks, requests[1:]):
                y, compute_s = read_share_result(await request)
                pieces[r0] = _expect_array(y, (r1 - r0, n), node)
                compute.append(compute_s)
        finally:
            sealed[1] = min(sealed[1], time.perf_counter())
            _keep_answered(chunks, requests[1:], n, node, pieces)
            for request in requests:
                if not request.done():
                    request.cancel()
                    request.add_done_callback(ignore_outcome)
                elif not request.cancelled():
                    request.exception()             # seen here, or raised above
        spans.mark("share.reply")
        peer_s = None if None in compute else sum(c for c in compute if c is not None)
        self._measure_share(node, device, ShareTiming(
            flops, nbytes, rows * n * 4, handover_s, time.perf_counter() - start, peer_s,
            self._rtt_s(node), len(chunks), fixed_bytes=b.nbytes))

    def _measure_share(self, node: str, device: str | None, timing: ShareTiming) -> None:
        """Keep what a peer share measured for the next split: the peer's compute (its
        own figure), the path (the rest of the round trip) and this node's hand-over."""
        self.share_meter.record_share(node, device or "", timing)

    # deploy ---------------------------------------------------------------------------
    async def deploy(self, name: str, w: Any, device: str | None, replicas: int | None,
                     seed: int) -> Job:
        check_name(name)
        check_device(device)
        if replicas is not None and replicas < 1:
            raise JobError("replicas must be at least 1")
        check_seed(seed)
        deploy_id = new_deploy_id(self.node_id)
        try:   # claimed here before any await: no two local deploys of one name
            self.plans.claims.grant(name, deploy_id, self.node_id, name in self.plans)
        except ClaimRefused as exc:
            raise JobError(str(exc)) from None
        try:
            w = await self.executor.run(as_matrix, w, "W")
            check_size(w.nbytes, "deploy")
            detail = {"name": name, "shape": list(w.shape), "device": device, "seed": seed}
            return await self.start_job(
                "deploy", detail,
                lambda job: self._deploy(job, name, deploy_id, w, device, replicas, seed))
        except BaseException:
            self.plans.claims.release(name, deploy_id)
            raise

    async def _deploy(self, job: Job, name, deploy_id, w, device, replicas, seed) -> None:
        granted: list[str] = []
        try:
            granted = await self._claim_mesh(name, deploy_id)
            await self._deploy_claimed(job, name, deploy_id, w, device, replicas, seed)
        except BaseException:
            self.plans.claims.release(name, deploy_id)
            await asyncio.shield(self._release_mesh(name, deploy_id, granted))
            raise

    async def _claim_mesh(self, name: str, deploy_id: str) -> list[str]:
        """Win the name from a strict majority of alive members; return who granted it."""
        peers = [c.node_id for c in self.candidates() if c.node_id != self.node_id]

        async def ask(node: str) -> str | None:
            try:
                session = await self.mesh.session(node)
                await session.request(ClaimName(session.next_rid(), name, deploy_id,
                                                self.node_id), CLAIM_TIMEOUT)
                return None
            except (LinkClosed, TimeoutError, RemoteError, ProtocolError, OSError) as exc:
                return f"{node[:8]}: {exc}"
        answers = await asyncio.gather(*(ask(p) for p in peers))
        granted = [p for p, err in zip(peers, answers) if err is None]
        need = quorum(len(peers) + 1)
        if len(granted) + 1 < need:
            await self._release_mesh(name, deploy_id, granted)
            refusals = "; ".join(a for a in answers if a)
            raise JobError(f"cannot claim {name!r}: {len(granted) + 1} of {len(peers) + 1} "
                           f"members granted it, {need} needed ({refusals})")
        return granted

    async def _release_mesh(self, name: str, deploy_id: str, nodes: list[str]) -> None:
        async def release(node: str) -> None:
            try:
                session = await self.mesh.session(node)
                await session.request(ReleaseName(session.next_rid(), name, deploy_id),
                                      CLAIM_TIMEOUT)
            except (LinkClosed, TimeoutError, RemoteError, ProtocolError, OSError):
                pass   # the claim lapses after its TTL
        await asyncio.gather(*(release(n) for n in nodes))

    async def _deploy_claimed(self, job: Job, name, deploy_id, w, device, replicas,
                              seed) -> None:
        if await self._known_elsewhere(name):
            raise JobError(f"a matrix named {name!r} is already deployed on the mesh")
        slots = self.slots()
        want = replicas if replicas is not None else (2 if len(slots) >= 2 else 1)
        plan = plan_rows(w.shape, slots, device=get_preset(device) if device else None,
                         replicas=want)
        plan_meta = {"seed": seed, "device": device}
        placed = await asyncio.gather(*(self._place_block(job, name, blk, w, device, seed)
                                        for blk in plan.blocks), return_exceptions=True)
        failures = [p for p in placed if isinstance(p, BaseException)]
        if failures:
            await self._drop_everywhere(name, {n for b in plan.blocks for n in b.nodes})
            raise failures[0]
        await self.plans.put(name, VersionedPlan(plan, deploy_id))
        job.detail.update(replicas=want, placement={str(b.index): b.nodes for b in plan.blocks},
                          **plan_meta)
        await self.announce_plan(name)

    async def _place_block(self, job: Job, name: str, blk, w, device, seed,
                           rows: Provenance = Provenance()) -> None:
        """Store the block on each of its holders, replacing holders that fail (``rows``:
        what this process knows of the block's rows, for the copy stored here)."""
        part = w[blk.row_start:blk.row_stop]
        holders: list[str] = []
        tried: set[str] = set()
        errors: list[str] = []
        queue = list(blk.nodes)
        while len(holders) < len(blk.nodes) and queue:
            node = queue.pop(0)
            tried.add(node)
            try:
                await self._store_on(node, name, blk.index, blk.row_start, part, device, seed,
                                     rows)
                holders.append(node)
            except (LinkClosed, TimeoutError, RemoteError, StoreError, ProtocolError) as exc:
                log.warning("deploy %s block %d on %s failed: %s", name, blk.index, node[:8], exc)
                errors.append(f"{node[:8]}: {exc}")
                queue += [s.node_id for s in self.slots(exclude=tried | set(queue))][:1]
        if not holders:
            raise JobError(f"no node could hold block {blk.index} of {name} "
                           f"({'; '.join(errors)})")
        blk.nodes = holders

    async def _store_on(self, node, name, index, row_start, part, device, seed,
                        rows: Provenance = Provenance()) -> None:
        if node == self.node_id:
            await self.holder.store_block(name, index, row_start, part, device, seed, rows)
            return
        session = await self.mesh.session(node)
        msg = StoreBlock(session.next_rid(), name, index, row_start, part, device, seed)
        await session.request(msg, request_timeout(2.0 * part.size * 16, part.nbytes))

    async def _drop_everywhere(self, name: str, nodes: set[str]) -> None:
        """Undo a partial deploy: holders forget the blocks they stored (best effort)."""
        async def drop(node: str) -> None:
            try:
                if node == self.node_id:
                    await self.holder.drop(name)
                    return
                session = await self.mesh.session(node)
                await session.request(DropMatrix(session.next_rid(), name), 10)
            except (LinkClosed, TimeoutError, RemoteError, ProtocolError) as exc:
                log.warning("could not drop partial %s on %s: %s", name, node[:8], exc)
        await asyncio.gather(*(drop(n) for n in nodes))

    async def announce_plan(self, name: str) -> None:
        """Tell every other member our merged plan of ``name`` (best effort; GetPlan and
        later announcements cover misses, and receivers merge, so order does not matter)."""
        versioned = self.plans.versioned(name)
        if versioned is None:
            return
        wire = versioned.to_wire()

        async def tell(node: str) -> None:
            try:
                session = await self.mesh.session(node)
                await session.request(PlanNotice(session.next_rid(), name, wire), 10)
            except (LinkClosed, TimeoutError, RemoteError, ProtocolError) as exc:
                log.info("could not tell %s about plan %s: %s", node[:8], name, exc)
        peers = [c.node_id for c in self.candidates() if c.node_id != self.node_id]
        await asyncio.gather(*(tell(p) for p in peers))

    # infer ----------------------------------------------------------------------------
    async def infer(self, name: str, x: Any, read_seed: int | None = None) -> np.ndarray:
        """``W @ X`` for a deployed matrix, one holder per block, failing over replicas."""
        start = time.perf_counter()
        plan = await self.plan_for(check_name(name))
        vector = isinstance(x, np.ndarray) and x.ndim == 1
        x = x[:, None] if vector else x
        if isinstance(x, np.ndarray) and x.nbytes <= INLINE_BYTES:
            x = as_matrix(x, "X")
        else:
            x = await self.executor.run(as_matrix, x, "X")
        check_size(x.nbytes + plan.shape[0] * x.shape[1] * 4, "infer")
        if read_seed is not None:
            check_seed(read_seed)
        if x.shape[0] != plan.shape[1]:
            raise JobError(f"X has {x.shape[0]} rows but {name} has {plan.shape[1]} columns")
        read_seed = random.getrandbits(62) if read_seed is None else read_seed
        out = np.empty((plan.shape[0], x.shape[1]), dtype=np.float32)
        self.metrics.live_bytes += x.nbytes + out.nbytes
        try:
            await self.read_blocks(name, plan.blocks, x, read_seed, out)
        finally:
            self.metrics.live_bytes -= x.nbytes + out.nbytes
        self.memory.record_request(name, time.perf_counter() - start)
        self.metrics.completed()
        return out[:, 0] if vector else out

    async def read_blocks(self, name: str, blocks: list[Block], x: np.ndarray,
                          read_seed: int, out: np.ndarray) -> list[str]:
        """Every block's rows of ``W @ X`` into ``out``: one request per chosen holder.
        Returns the node that served each block, in the order of ``blocks``.

        The holder of each block is chosen per block, as before (each choice counts the
        blocks already sent there, so a request's blocks spread over replicas); then the
        blocks going to the same peer travel as one ``InferBlocks`` carrying X once.
        Blocks whose holder fails go on, each to its own next holder (see
        :mod:`node.work.blockgroups`). Blocks held here last: peers' requests are sent
        before this node wakes its own compute threads.
        """
        for blk in blocks:
            if not blk.nodes:
                raise JobError(f"block {blk.index} of {name} has no live holder (none listed)")
        tries = []
        for blk in sorted(blocks, key=lambda b: self.node_id in b.nodes):
            flops = 2.0 * (blk.row_stop - blk.row_start) * x.shape[0] * x.shape[1]
            t = BlockTry(blk, flops, self._holder_order(blk.nodes, flops))
            self.inflight[t.holder] = self.inflight.get(t.holder, 0) + 1
            tries.append(t)
        await self._send_groups(name, group_by_holder(tries), x, read_seed, out)
        served = {t.blk.index: t.holder for t in tries}     # a failed holder left its order
        return [served[b.index] for b in blocks]

    async def _send_groups(self, name: str, groups: list[tuple[str, list[BlockTry]]],
                           x: np.ndarray, read_seed: int, out: np.ndarray) -> None:
        """Run each group (its blocks already counted in flight at its node), local last."""
        groups = sorted(groups, key=lambda g: g[0] == self.node_id)
        await asyncio.gather(*(self._infer_group(name, node, group, x, read_seed, out)
                               for node, group in groups))

    async def _infer_group(self, name: str, node: str, group: list[BlockTry], x: np.ndarray,
                           read_seed: int, out: np.ndarray) -> None:
        """One holder's blocks of a request; the failed ones fail over to their next."""
        flops = sum(t.flops for t in group)
        start = time.perf_counter()
        try:
            parts = await self._infer_many_on(node, name, [t.blk for t in group], x,
                                              read_seed, flops)
        except (LinkClosed, TimeoutError, RemoteError, ProtocolError, StoreError,
                OSError) as exc:
            parts = [exc] * len(group)
        finally:
            self.inflight[node] -= len(group)
        took = time.perf_counter() - start
        done = [(t, p) for t, p in zip(group, parts) if isinstance(p, np.ndarray)]
        failed = [(t, str(p) or type(p).__name__) for t, p in zip(group, parts)
                  if not isinstance(p, np.ndarray)]
        if done:
            await self._write_rows(out, done)
        self._learn(node, took, ok=sum(t.flops for t, _ in done) if done else None,
                    failed=sum(t.flops for t, _ in failed) if failed else None)
        if not failed:
            return
        log.info("infer %s block(s) %s on %s failed after %.3fs (%s); trying the next holder",
                 name, ",".join(str(t.blk.index) for t, _ in failed), node[:8], took,
                 failed[0][1])
        again, exhausted = fail_over(failed)
        if exhausted:
            t = exhausted[0]
            raise JobError(f"block {t.blk.index} of {name} has no live holder "
                           f"({'; '.join(t.errors)})")
        for t in again:
            self.inflight[t.holder] = self.inflight.get(t.holder, 0) + 1
        await self._send_groups(name, group_by_holder(again), x, read_seed, out)

    async def _write_rows(self, out: np.ndarray, done: list[tuple[BlockTry, np.ndarray]]) -> None:
        """Each block's rows into ``out``: on the loop when small, else in one hop."""
        def write() -> None:
            for t, part in done:
                out[t.blk.row_start:t.blk.row_stop] = part
        if sum(p.nbytes for _, p in done) <= INLINE_BYTES:
            write()
        else:
            await self.executor.run(write)

    async def _infer_many_on(self, node: str, name: str, blocks: list[Block], x: np.ndarray,
                             read_seed: int, flops: float) -> list[Any]:
        """Each block's rows from ``node``, or the error that block alone met there.

        Here: each block read as before (in parallel on the compute threads). A peer: one
        ``InferBlocks`` with X once; an error of the whole request raises."""
        if node == self.node_id:
            return await self.holder.read_many(name, [b.index for b in blocks], x, read_seed)
        session = await self.mesh.session(node)
        msg = InferBlocks(session.next_rid(), name, [b.index for b in blocks], x, read_seed)
        spans.mark("coord.dispatch")
        start = time.perf_counter()
        value = await session.request(msg, request_timeout(flops, x.nbytes))
        spans.mark("coord.peer_reply")
        shapes = [(b.row_stop - b.row_start, x.shape[1]) for b in blocks]
        parts, held = read_parts(value, shapes, node)
        if held is not None and log.isEnabledFor(logging.DEBUG):
            took = time.perf_counter() - start
            log.debug("infer %s: %d block(s) on %s in %.4fs, %.4fs of it at the holder and "
                      "%.4fs on the link and loops", name, len(blocks), node[:8], took, held,
                      took - held)
        return [RemoteError(p) if isinstance(p, str) else p for p in parts]

    def _holder_order(self, nodes: list[str], flops: float = 0.0) -> list[str]:
        """Holders by predicted finish time (this node's requests in flight there x the
        cost it measured per request, exploration included: see node.work.latency), so
        load spreads over replicas and a new replica gets tried; holders that are not
        alive go last, and a holder whose link just closed goes after the linked ones
        (see :func:`linked_first`). A single holder needs no ranking."""
        if len(nodes) <= 1:
            return list(nodes)
        scores = {c.node_id: s for s, c in rank(self.candidates(set(nodes)), self.memory)}
        live = [n for n in nodes if n in scores]
        hop = {n: REMOTE_HOP_S for n in live if n != self.node_id}
        ordered = order_holders(live, self.recent.costs(live, time.monotonic()), scores,
                                self.inflight, flops, hop)
        sessions = self.mesh.sessions
        linked = {n for n in nodes if n in sessions and not sessions[n].closed.is_set()}
        return linked_first(ordered + [n for n in nodes if n not in scores], self.node_id,
                            linked)

    @contextlib.contextmanager
    def holder_request(self, node: str, flops: float) -> Iterator[None]:
        """Account for one request to holder ``node`` around the ``with`` body.

        Why: the replica choice (:meth:`_holder_order`) ranks holders by this node's
        requests in flight there and by how long its last ones took; every path that sends
        block work to a chosen holder (the model pipeline's gatherer and block requests)
        must feed both, or the choice sees nothing and keeps the plan's order. A failure
        (any exception but a cancellation) marks the holder failed for the choice."""
        self.inflight[node] = self.inflight.get(node, 0) + 1
        start = time.perf_counter()
        try:
            yield
        except Exception:
            self._learn(node, time.perf_counter() - start, failed=flops)
            raise
        else:
            self._learn(node, time.perf_counter() - start, ok=flops)
        finally:
            self.inflight[node] -= 1

    def _learn(self, node: str, took: float, *, ok: float | None = None,
               failed: float | None = None) -> None:
        """What a request to holder ``node`` taught, in one place for every path: the work
        (flops) it served and failed, for the dual memory's long-term speed and
        reliability and, for the replica choice, its end-to-end cost or that it failed."""
        now = time.monotonic()
        if ok is not None:
            self.memory.record_share(node, ok, took, True)
            self.recent.observe(node, ok, took, now)
        if failed is not None:
            self.memory.record_share(node, failed, took, False)
            self.recent.failed(node, now)

    async def _known_elsewhere(self, name: str) -> bool:
        try:
            await self.plan_for(name)
        except JobError:
            return False
        return True

    async def plan_for(self, name: str) -> PartitionPlan:
        """The plan of ``name``: ours, else the first member's that knows it."""
        plan = self.plans.get(name)
        if plan is not None:
            return plan
        for c in self.candidates():
            if c.node_id == self.node_id:
                continue
            try:
                session = await self.mesh.session(c.node_id)
                value = await session.request(GetPlan(session.next_rid(), name), 5)
            except (LinkClosed, TimeoutError, RemoteError, ProtocolError):
                continue
            if value:
                try:
                    versioned = VersionedPlan.from_wire(value)
                except (ValueError, KeyError, TypeError) as exc:
                    log.warning("%s sent a malformed plan of %s: %s", c.node_id[:8], name, exc)
                    continue
                return (await self.plans.put(name, versioned)).plan
        raise JobError(f"no matrix named {name!r} is deployed on the mesh")

def linked_first(order: list[str], me: str, linked: set[str]) -> list[str]:
    """``order`` with the holders we have no live link to moved last (stable).

    A holder whose link just closed (killed, say) is then tried only after its replicas:
    the request fails over without a dial and without waiting for the failure detector to
    call the holder dead. Unlinked holders are still tried (dialled), in their order.
    """
    return sorted(order, key=lambda n: n != me and n not in linked)


def check_device(device: str | None) -> None:
    """An unknown preset name is the user's error (get_preset raises a plain ValueError)."""
    if device is None:
        return
    try:
        get_preset(device)
    except ValueError as exc:
        raise JobError(str(exc)) from None


def check_seed(seed: object) -> None:
    """Seeds are checked here, once, so a bad one is the user's error, not a peer failure."""
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= MAX_SEED:
        raise JobError(f"seed must be an integer from 0 to {MAX_SEED}, got {seed!r}")


def check_size(nbytes: int, what: str) -> None:
    if nbytes > MAX_JOB_BYTES:
        raise JobError(f"{what} needs {nbytes} bytes of operands and result, over the "
                       f"{MAX_JOB_BYTES}-byte job limit")


def request_timeout(flops: float, nbytes: int) -> float:
    """Generous bound for one share: fixed slack + 1 s per GFLOP + 1 s per 50 MB."""
    return min(BASE_TIMEOUT + flops / 1e9 + nbytes / 50e6, 900.0)


def _expect_array(value: Any, shape: tuple[int, int], node: str) -> np.ndarray:
    if not isinstance(value, np.ndarray) or value.shape != shape:
        got = getattr(value, "shape", type(value).__name__)
        raise ProtocolError(f"{node[:8]} returned {got}, expected an array of shape {shape}")
    return value


def own_seconds(start: float, end: float, sealing: list[list[float]], delay: float) -> float:
    """This node's compute seconds for its share ``[start, end]`` net of the sealing it ran
    alongside: ``delay`` of each peer hand-over's overlap with it (an unfinished one runs to
    ``end``). Why: the split charges that sealing to this node's finish itself
    (``handover_delay``); a speed measured with it inside would charge it twice, and a
    job's own share would then look slower whenever a peer had a share. Never below a
    tenth of the wall time (a figure that makes no sense is not learnt as infinite speed)."""
    overlap = sum(max(0.0, min(e, end) - max(s, start)) for s, e in sealing)
    return max(end - start - delay * overlap, 0.1 * (end - start))


def _ranges_text(ranges: list[tuple[int, int]]) -> str:
    return ", ".join(f"{r0}-{r1}" for r0, r1 in ranges) or "none"


def share_unit(slots: list[NodeSlot], device: str | None) -> int:
    """Rows a one-shot share is cut in: whole tiles of every candidate's device (the job's
    own device when it names one); 1 with no candidate. One place for the split and the
    chunks, which must agree on it."""
    dev = get_preset(device) if device else None
    return unit_rows([dev or s.device for s in slots]) if slots else 1


def _raise_if_failed(request: asyncio.Future) -> None:
    """Raise a finished request's error (a refused operand fails the share at once)."""
    if request.done() and not request.cancelled() and request.exception() is not None:
        raise request.exception()


def _keep_answered(chunks: list[tuple[int, int]], requests: list[asyncio.Future], n: int,
                   node: str, pieces: dict[int, np.ndarray]) -> None:
    """Chunks answered after one that failed are kept, not failed over with it."""
    for (r0, r1), request in zip(chunks, requests):
        if (r0 in pieces or not request.done() or request.cancelled()
                or request.exception() is not None):
            continue
        try:
            y, _ = read_share_result(request.result())
            pieces[r0] = _expect_array(y, (r1 - r0, n), node)
        except ProtocolError:
            continue                     # a malformed answer: failed over with the rest



def _detail_name(blob: bytes | None) -> str | None:
    try:
        detail = msgpack.unpackb(blob) if blob else {}
        name = detail.get("name") if isinstance(detail, dict) else None
        return check_name(name) if name is not None else None
    except (ValueError, msgpack.UnpackException):
        return None


def _delete_rows(conn, ids: list[str]) -> None:
    conn.executemany("DELETE FROM jobs WHERE id=?", [(i,) for i in ids])


def _remove_results(results: Path, ids: list[str], keep: set[str] | None) -> None:
    """Delete the result files of ``ids``; with ``keep``, also every file of no known job
    (a crash between forgetting a job and removing its file, or a leftover temp file)."""
    for jid in ids:
        (results / f"{jid}.npy").unlink(missing_ok=True)
    if keep is None:
        return
    for path in results.iterdir():
        if path.stem not in keep or path.suffix != ".npy":
            path.unlink(missing_ok=True)


def _map_result(path: Path) -> np.ndarray:
    """The stored result as a read-only memory map (pages untouched), for the client to
    map the file itself; an ordinary array (read here, on the executor) when the file's
    data does not start at ``shm.FILE_DATA_OFFSET`` (a file written before results were
    shared by file), so it is never named to a client by mistake, or when its data area
    is under ``shm.ARENA_MAX``: such a result goes through the connection's arena like any
    reply, rather than hold a file descriptor and a mapping of its own in the client."""
    arr = np.load(path, mmap_mode="r")
    if (not isinstance(arr, np.memmap) or arr.offset != shm.FILE_DATA_OFFSET
            or _data_area(arr.nbytes) < shm.ARENA_MAX):
        return np.array(arr)
    return arr


def _data_area(nbytes: int) -> int:
    """Bytes of a reply's data area holding ``nbytes`` of array (padded to the codec's
    alignment, as the result file is)."""
    return -(-nbytes // codec.ALIGN) * codec.ALIGN


def _npy_header(shape: tuple[int, ...]) -> bytes:
    """A version 1.0 .npy header for float32 ``shape``, padded with spaces (which the
    format allows) to ``shm.FILE_DATA_OFFSET`` bytes: the data then starts on a page
    boundary and a local client maps it straight from the file (node/shm.py)."""
    meta = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)),
            "fortran_order": False, "shape": tuple(shape)}
    text = repr(meta).encode("latin1")
    prefix = np.lib.format.magic(1, 0)
    room = shm.FILE_DATA_OFFSET - len(prefix) - 2
    text = text + b" " * (room - len(text) - 1) + b"\n"
    return prefix + struct.pack("<H", room) + text


def _save_npy_rows(path: Path, shape: tuple[int, int],
                   pieces: list[tuple[int, np.ndarray]]) -> None:
    """A one-shot result, written from its row pieces in order (a peer's rows straight from
    its reply's buffer, no copy into one array) to a temp file renamed into place (never
    half a file). No fsync: the page cache keeps it across a kill -9, and the fsync cost a
    result of 16 MiB about as much as computing it; after a power loss it reads as "no
    stored result". The header is padded to a page and the data to the codec's alignment,
    so the file's tail is exactly the data area of the result's API reply (node/shm.py)."""
    tmp = path.with_suffix(".tmp")
    nbytes = 0
    with open(tmp, "wb") as f:
        f.write(_npy_header(shape))
        for _, piece in sorted(pieces, key=lambda p: p[0]):
            view = memoryview(np.ascontiguousarray(piece, dtype=np.float32)).cast("B")
            f.write(view)
            nbytes += len(view)
        f.write(bytes(-nbytes % codec.ALIGN))
    os.replace(tmp, path)
