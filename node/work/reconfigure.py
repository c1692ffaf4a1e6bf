"""Continuous reconfiguration: keep every deployed block at its replica count.

(:func:`repairs` decides, sans I/O; :class:`Reconfigurer` carries the decisions out.)

When a holder dies, the block's surviving holder with the lowest node id (so exactly one
node acts, without a vote) picks the best-scoring member that does not hold the block,
ships it the *programmed state* (replicas stay bit-identical), records the block's new
holders as a new version of that block only, and announces the merged plan: two survivors
repairing different blocks at once both keep their repair (:mod:`node.work.plans`). Decisions are a pure function (:func:`repairs`) of the plan, the set of live
members and the scorer's ranking; the daemon runs them after membership events and on a
slow timer, so a repair that failed is retried.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from compute.partition import PartitionPlan
from nat.link import LinkClosed
from node.work.jobs import JobManager, request_timeout
from node.work.placement import rank
from node.net.session import RemoteError
from node.memory.store import StoreError
from protocol.errors import ProtocolError
from protocol.work import StoreState

log = logging.getLogger("sedma.reconfigure")


@dataclass(frozen=True)
class Repair:
    """Copy block ``index`` of ``name`` from ``source`` (this node) to ``target``."""

    name: str
    index: int
    source: str
    target: str


def repairs(name: str, plan: PartitionPlan, me: str, alive: set[str],
            ranked: list[str], want: int) -> list[Repair]:
    """Repairs this node should make for ``name``; ``ranked`` is best-first node ids."""
    out = []
    for blk in plan.blocks:
        live = [n for n in blk.nodes if n in alive]
        if not live or min(live) != me or len(live) >= want:
            continue
        spare = [n for n in ranked if n in alive and n not in blk.nodes]
        for target in spare[: want - len(live)]:
            out.append(Repair(name, blk.index, me, target))
    return out


class Reconfigurer:
    """Runs :func:`repairs` against the live mesh (one pass at a time)."""

    def __init__(self, jobs: JobManager) -> None:
        self.jobs = jobs
        self._busy = False

    async def run(self) -> int:
        """Restore lost replicas of every deployment this node holds; return repairs made."""
        jobs = self.jobs
        if self._busy or not jobs.accepting:
            return 0
        self._busy = True
        try:
            candidates = jobs.candidates()
            alive = {c.node_id for c in candidates}
            ranked = [c.node_id for _, c in rank(candidates, jobs.memory)]
            made = 0
            for name, plan in jobs.plans.items():
                want = max(len(b.nodes) for b in plan.blocks)  # as deployed
                todo = repairs(name, plan, jobs.node_id, alive, ranked, min(want, len(alive)))
                done = 0
                for repair in todo:
                    done += await self._repair(repair, alive)
                if done:
                    await jobs.announce_plan(name)
                made += done
            return made
        finally:
            self._busy = False

    async def _repair(self, repair: Repair, alive: set[str]) -> int:
        """Ship the programmed state of one block to its new holder; 1 if it took."""
        try:
            block = self.jobs.holder.store.get(repair.name, repair.index)
        except StoreError as exc:   # the plan names us, but the block is gone (e.g. a bad file)
            log.warning("cannot re-replicate %s block %d: %s", repair.name, repair.index, exc)
            return 0
        try:
            session = await self.jobs.mesh.session(repair.target)
            state = block.matrix.to_state()
            msg = StoreState(session.next_rid(), repair.name, repair.index, block.row_start,
                             block.device, block.seed, state)
            await session.request(msg, request_timeout(0, block.nbytes))
        except (LinkClosed, TimeoutError, RemoteError, ProtocolError) as exc:
            log.warning("re-replicating %s block %d to %s failed: %s", repair.name,
                        repair.index, repair.target[:8], exc)
            return 0
        plans = self.jobs.plans
        current = plans.get(repair.name)       # re-read: announcements may have merged in
        if current is None:
            return 0
        nodes = [n for n in current.blocks[repair.index].nodes if n in alive]
        if repair.target not in nodes:
            nodes.append(repair.target)
        await plans.update_block(repair.name, repair.index, nodes, self.jobs.node_id)
        log.info("re-replicated %s block %d to %s", repair.name, repair.index, repair.target[:8])
        return 1
