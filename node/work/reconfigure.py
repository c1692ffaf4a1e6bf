"""Continuous reconfiguration: keep every deployed block at its replica count, and move
blocks to where they serve best (hot replication, retiring cooled replicas, migration).

(:func:`repairs` and :func:`node.work.rebalance.plan_pass` decide, sans I/O;
:class:`Reconfigurer` carries the decisions out.)

Rebalancing: for each block, the same single actor as for repairs (its lowest-id live
holder) builds a snapshot — learned speeds (its dual memory, else the peer's own measured
speed from its advert, else its advertised capacity), loads averaged over passes, free RAM,
the block's request rate (every live holder's own read rate: this node's, and the others'
from their adverts, :mod:`node.work.blockrates`) — and runs :func:`plan_pass`. Every move is
copy-then-switch: the new holder receives the programmed state, *then* the plan lists it
and is announced; a holder the plan drops keeps serving for a grace period
(:data:`~node.work.holder.RELEASE_GRACE_S`) before it releases the block, so requests in
flight finish. Each decision goes into the dual memory with its reason, predicted gain and
what was measured before; a later pass fills in what was measured after.

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
import math
import sqlite3
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from compute.partition import Block, PartitionPlan
from nat.link import LinkClosed
from node.work.blockrates import advertised, mesh_rate
from node.work.jobs import JobManager, request_timeout
from node.work.placement import rank
from node.work.rebalance import (BlockView, Decision, NodeView, Policy, grown_rates,
                                 plan_pass, retire_withheld, with_e2e_evidence)
from node.net.session import RemoteError
from node.memory.dualmemory import MAX_DECISIONS
from node.memory.store import StoreError
from protocol import codec
from protocol.errors import ProtocolError
from node.work.plans import VersionedPlan
from protocol.work import GetPlan, StoreState

log = logging.getLogger("sedma.reconfigure")

#: A copy held here that no plan lists is dropped after this long (if the plan, refreshed
#: from the block's listed holders, still does not list it): a copy-then-switch lists its
#: new holder within a round trip or two of the copy, so this is a generous bound.
UNLISTED_GRACE_S = 60.0
DEFAULT_LINK_BPS = 50e6   # until a copy to the peer was measured (request_timeout's figure)
JUDGE_AFTER_S = 60.0      # a decision's effect is measured this long after it
WITHHELD_LOG_EVERY_S = 20.0   # a block kept above its deployed count says why this often


def deployed_at(deploy: str) -> float:
    """When a deployment was made, from its id (``node.work.plans.new_deploy_id``: the
    time in ns, then the node); -inf for an id of another form (a pre-versioning plan)."""
    head = deploy[:20]
    return int(head) / 1e9 if len(head) == 20 and head.isdigit() else -math.inf


def decode_state(raw: bytes) -> dict:
    """The programmed-state dict of a block file (arrays are views into ``raw``)."""
    return codec.decode(raw)


@dataclass(frozen=True)
class Repair:
    """Copy block ``index`` of ``name`` from ``source`` (this node) to ``target``."""

    name: str
    index: int
    source: str
    target: str


def repairs(name: str, plan: PartitionPlan, me: str, alive: set[str],
            ranked: list[str], want: int, room: Mapping[str, int] | None = None,
            needs: Callable[[Block], int] | None = None) -> list[Repair]:
    """Repairs this node should make for ``name``; ``ranked`` is best-first node ids.

    With ``room`` (advertised free block bytes per node) and ``needs`` (a block's bytes),
    a spare without room for the block is passed over: it would refuse the copy on every
    pass, forever, while a node further down the ranking could take it.
    """
    out = []
    for blk in plan.blocks:
        live = [n for n in blk.nodes if n in alive]
        if not live or min(live) != me or len(live) >= want:
            continue
        need = needs(blk) if needs is not None and room is not None else 0
        spare = [n for n in ranked if n in alive and n not in blk.nodes
                 and (room is None or room.get(n, 0) >= need)]
        for target in spare[: want - len(live)]:
            out.append(Repair(name, blk.index, me, target))
    return out


@dataclass(frozen=True)
class Unlisted:
    """What to do with block copies of one matrix that this node holds but its plan does
    not list: ``adopt`` (list this node: no listed holder is alive, so this copy is the
    block's only one) or ``drop`` (unlisted for ``UNLISTED_GRACE_S``)."""

    adopt: tuple[int, ...]
    drop: tuple[int, ...]


def unlisted(plan: PartitionPlan, me: str, alive: set[str], gone: set[str], held: set[int],
             seen: dict[int, float], now: float, grace: float = UNLISTED_GRACE_S) -> Unlisted:
    """Decide about the copies in ``held`` the plan does not list; updates ``seen``
    (block index -> when this node first saw it held and unlisted) in place.

    ``alive``: members alive now; ``gone``: members the membership declared dead or left.
    A copy is adopted only when *every* holder the plan lists is gone (not merely not yet
    known: a node that just started knows no one), and dropped only when a listed holder
    is alive to serve the block (and to refresh the plan from).

    Where such a copy comes from: a migration's or hot replica's copy landed here, and
    its source was killed (-9) before it switched the plan, or a copy whose release was
    lost. Nothing else would ever resolve it: the next plan notice for that matrix may
    never come. A block a plan lists here is never in either list.
    """
    adopt, drop = [], []
    listed_here = set()
    for blk in plan.blocks:
        if me in blk.nodes:
            listed_here.add(blk.index)
            continue
        if blk.index not in held:
            continue
        if blk.nodes and all(n in gone for n in blk.nodes):
            adopt.append(blk.index)
            continue
        if not any(n in alive for n in blk.nodes):
            continue
        first = seen.setdefault(blk.index, now)
        if now - first >= grace:
            drop.append(blk.index)
    for idx in list(seen):
        if idx in listed_here or idx not in held:
            del seen[idx]
    return Unlisted(tuple(adopt), tuple(drop))


def _block(plan: PartitionPlan, index: int) -> Block:
    return next(b for b in plan.blocks if b.index == index)


class Reconfigurer:
    """Runs :func:`repairs` and :func:`plan_pass` against the live mesh (one pass at a time)."""

    def __init__(self, jobs: JobManager, policy: Policy = Policy()) -> None:
        self.jobs = jobs
        self.policy = policy
        self._busy = False
        self._load: dict[str, float] = {}          # per node, averaged over passes
        #: per block: (holder set last seen, when it was first seen): the dwell clock
        self._changed: dict[tuple[str, int], tuple[tuple[str, ...], float]] = {}
        self._deployed: dict[str, int] = {}
        #: per matrix: held, unlisted block copies -> when first seen so (see ``unlisted``)
        self._unlisted: dict[str, dict[int, float]] = {}
        #: per block: when this node last logged why it kept the block's extra replicas
        self._withheld_logged: dict[tuple[str, int], float] = {}

    async def rebalance(self, now: float | None = None) -> list[Decision]:
        """One rebalancing pass over the blocks this node acts for; the decisions made."""
        jobs = self.jobs
        if self._busy or not jobs.accepting:
            return []
        self._busy = True
        try:
            now = time.time() if now is None else now
            self._measure_after(now)
            nodes = self._node_views()
            blocks = self._block_views(set(nodes), now)
            done = []
            decisions = plan_pass(blocks, nodes, now, self.policy)
            self._log_withheld(blocks, nodes, decisions, now)
            for d in decisions:
                if await self._carry_out(d):
                    done.append(d)
            return done
        finally:
            self._busy = False

    def _log_withheld(self, blocks: list[BlockView], nodes: dict[str, NodeView],
                      decisions: list[Decision], now: float) -> None:
        """Say (every ``WITHHELD_LOG_EVERY_S``) why a block past its dwell keeps replicas
        above its deployed count: a retire that never comes leaves no decision behind."""
        decided = {(d.name, d.index) for d in decisions}
        acting = {(b.name, b.index) for b in blocks}
        self._withheld_logged = {k: t for k, t in self._withheld_logged.items() if k in acting}
        for b in blocks:
            key = (b.name, b.index)
            if (len(b.holders) <= b.want or key in decided
                    or now - b.changed_at < self.policy.min_dwell_s
                    or now - self._withheld_logged.get(key, -1e18) < WITHHELD_LOG_EVERY_S):
                continue
            why = retire_withheld(b, nodes, self.policy)
            if why:
                self._withheld_logged[key] = now
                loops = ", ".join(f"{nodes[h].loop_busy:.0%}" for h in b.holders if h in nodes)
                log.info("keeping %d holders of %s block %d (%d deployed): %s [rate %.2f, "
                         "%.3f s a read here, loops %s, share %.0f%%, grown at %.2f]",
                         len(b.holders), b.name, b.index, b.want, why, b.rate,
                         b.flops / max(nodes[self.jobs.node_id].speed, 1e-3) / 1e9
                         if self.jobs.node_id in nodes else float("nan"),
                         loops, 100 * b.share, b.grown_at_rate)

    def _node_views(self) -> dict[str, NodeView]:
        """Every live member, with speeds of one kind only: each node's own measured
        serving speed (ours from the dual memory, the others' from their adverts).

        Why not mix in advertised capacity or what we measured as their client: a BLAS
        peak and a serving speed with its overheads differ several-fold, and comparing
        them made two nodes each find the other faster and swap a block back and forth.
        A node that has served nothing yet gets the median of the known speeds. The one
        use of what we measured as a client is :func:`with_e2e_evidence`, which lowers a
        node only when, put on the same scale, it is several times slower end to end.
        """
        jobs, memory = self.jobs, self.jobs.memory
        adverts = {m.node_id: m.advert for m in jobs.mesh.members()}
        cands = jobs.candidates()
        own = {c.node_id: (memory.served_gflops if c.node_id == jobs.node_id else
                           adverts[c.node_id].stats.get("served_gflops")
                           if c.node_id in adverts else None) for c in cands}
        known = sorted(v for v in own.values() if v)
        measured = {n: float(v) for n, v in own.items() if v}
        e2e = {n: v for n in measured if (v := memory.peer_speed(n))}
        own |= with_e2e_evidence(measured, e2e, jobs.node_id)   # guarded: see there
        mine = jobs.mesh.advert.stats if getattr(jobs.mesh, "advert", None) else {}
        loops = {c.node_id: (mine if c.node_id == jobs.node_id else adverts[c.node_id].stats
                             if c.node_id in adverts else {}).get("loop_busy") or 0.0
                 for c in cands}
        out = {}
        for c in cands:
            prev = self._load.get(c.node_id, c.load)
            load = self._load[c.node_id] = 0.7 * prev + 0.3 * c.load
            speed = own[c.node_id] or (known[len(known) // 2] if known else c.capacity)
            out[c.node_id] = NodeView(c.node_id, float(speed), load, c.memory_free,
                                      c.link == "ice-relay",
                                      memory.link_speed(c.node_id, DEFAULT_LINK_BPS),
                                      float(loops[c.node_id]))
        return out

    def _block_views(self, alive: set[str], now: float) -> list[BlockView]:
        jobs, memory = self.jobs, self.jobs.memory
        me = jobs.node_id
        held = jobs.holder.store.names()
        mine_speed = memory.served_gflops or jobs.capacity
        rates = {(name, i): memory.block_rate((name, i), now)
                 for name, idxs in held.items() for i in idxs}
        total = sum(rates.values())
        logged = self._grown_rates()
        others = {m.node_id: advertised(m.advert.stats) for m in jobs.mesh.members()
                  if m.node_id != me}
        out = []
        for name, plan in jobs.plans.items():
            versioned = jobs.plans.versioned(name)
            for blk in plan.blocks:
                live = [n for n in blk.nodes if n in alive]
                if not live or min(live) != me or blk.index not in held.get(name, ()):
                    continue
                key = (name, blk.index)
                # Never read here: no work measured (flops 0), so only retiring can apply.
                # It used to be skipped, and a hot replica that landed here, with a lower
                # id than its source, just before every node restarted (so it had served
                # nothing) was never retired (CI, 132 s). Its rate is the mesh's (every
                # holder's advertised reads), not ours x holders: ours alone (0) retired
                # replicas that another holder was serving, and the next pass replicated
                # again. The rate it last grew at comes with the plan (whoever decided).
                svc = memory.block_service_s(key) or 0.0
                rate = mesh_rate(key, live, me, rates.get(key, 0.0), others)
                grown = versioned.grown[blk.index] if versioned is not None else 0.0
                out.append(BlockView(name, blk.index, jobs.holder.store.get(*key).nbytes,
                                     svc * mine_speed * 1e9, tuple(blk.nodes), rate,
                                     self._changed_at(key, tuple(blk.nodes), now),
                                     self._want(name, plan),
                                     rates.get(key, 0.0) / total if total else 0.0,
                                     grown or logged.get(key, 0.0)))
        return out

    def _grown_rates(self) -> dict[tuple[str, int], float]:
        """Per block, the rate this node last gave it a replica at, from the dual memory's
        decision log (persisted). The plan carries the same figure for whoever decided
        (``VersionedPlan.grown``) and is read first; this log covers plans from peers that
        predate that field."""
        plans = self.jobs.plans
        since = {name: deployed_at(v.deploy) for name in plans.names()
                 if (v := plans.versioned(name)) is not None}
        return grown_rates(self.jobs.memory.decided(limit=MAX_DECISIONS), since)

    def _want(self, name: str, plan: PartitionPlan) -> int:
        """Replicas as deployed, which retiring never goes below.

        From the plan's own record (persisted with it and carried on the wire), never from
        its block lists: after hot replication those include the extras, and a node that
        restarted (or joined later) would take the extras for the deployed count and never
        retire them. A plan from a peer that predates the record falls back to the fewest
        holders any block had when this process first saw it.
        """
        versioned = self.jobs.plans.versioned(name)
        if versioned is not None and versioned.replicas:
            return versioned.replicas
        return self._deployed.setdefault(name, min(len(b.nodes) for b in plan.blocks))

    async def _carry_out(self, d: Decision) -> bool:
        """Copy (for replicate/migrate), then switch the plan (a new version of that block
        only, so concurrent repairs of other blocks merge) and announce it."""
        jobs = self.jobs
        if d.target:
            log.info("copying %s block %d to %s for a %s", d.name, d.index, d.target[:8], d.kind)
            if not await self._copy(d.name, d.index, d.target):
                return False
        plan = jobs.plans.get(d.name)          # re-read: announcements may have merged in
        blk = next((b for b in plan.blocks if b.index == d.index), None) if plan else None
        if blk is None or d.source not in blk.nodes or (d.target and d.target in blk.nodes):
            return False                       # the plan moved on meanwhile
        nodes = list(blk.nodes)
        if d.kind == "replicate":
            nodes.append(d.target)
        elif d.kind == "retire":
            nodes.remove(d.source)
        else:
            nodes[nodes.index(d.source)] = d.target
        await jobs.plans.update_block(d.name, d.index, nodes, jobs.node_id,
                                      d.rate if d.kind == "replicate" else None)
        await jobs.announce_plan(d.name)
        jobs.holder.release_unlisted(d.name)
        key = (d.name, d.index)
        self._changed[key] = (tuple(nodes), d.at)
        before = {"rate": jobs.memory.block_rate(key, d.at),
                  "service_s": jobs.memory.block_service_s(key)}
        jobs.memory.record_decision(d.to_dict() | {"measured_before": before,
                                                   "measured_after": None})
        if d.kind == "replicate":      # its rate is what retiring it waits on: kept at once
            await self._save_memory()  # (the memory loop saves only every few seconds)
        log.info("%s %s block %d: %s -> %s (%s; predicted gain %.3g)", d.kind, d.name, d.index,
                 d.source[:8], d.target[:8] or "-", d.reason, d.predicted_gain)
        return True

    async def _save_memory(self) -> None:
        try:
            await self.jobs.db.run(self.jobs.memory.save)
        except sqlite3.Error as exc:   # the memory loop saves again shortly
            log.warning("could not save the dual memory after a decision: %s", exc)

    def _changed_at(self, key: tuple[str, int], holders: tuple[str, ...], now: float) -> float:
        """When this node saw the block's holder set change (first sight counts as a change).

        Why first sight: another node may have just moved the block here (its decision is
        in its own log, not ours); assuming the holders are fresh keeps the dwell time
        for everyone, at the price of waiting one dwell after a restart.
        """
        seen = self._changed.get(key)
        if seen is None or seen[0] != holders:
            self._changed[key] = seen = (holders, now)
        return seen[1]

    def _measure_after(self, now: float) -> None:
        """Fill in what was measured after decisions old enough to judge (same metrics)."""
        memory = self.jobs.memory
        for d in memory.decided(limit=10**6):
            if d.get("measured_after") is None and now - float(d.get("at", now)) >= JUDGE_AFTER_S:
                key = (d["name"], d["index"])
                memory.judge_decision(d["at"], key, {
                    "rate": memory.block_rate(key, now),
                    "service_s": memory.block_service_s(key)})

    async def _copy(self, name: str, index: int, target: str) -> bool:
        """Ship this node's programmed state of a block to ``target``; True if it took."""
        store = self.jobs.holder.store
        try:
            block = store.get(name, index)
            raw = await self.jobs.executor.run(store.state_bytes, name, index)
            state = await self.jobs.executor.run(decode_state, raw)
            session = await self.jobs.mesh.session(target)
            msg = StoreState(session.next_rid(), name, index, block.row_start, block.device,
                             block.seed, state)
            start = time.perf_counter()
            await session.request(msg, request_timeout(0, block.nbytes))
            self.jobs.memory.record_transfer(target, block.nbytes, time.perf_counter() - start)
            return True
        except (StoreError, OSError, LinkClosed, TimeoutError, RemoteError, ProtocolError) as exc:
            log.warning("copying %s block %d to %s failed: %s", name, index, target[:8], exc)
            return False

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
            room = {c.node_id: c.disk_free for c in candidates}   # every block is persisted
            made = 0
            for name, plan in jobs.plans.items():
                versioned = jobs.plans.versioned(name)     # as deployed; hot extras are
                want = (versioned.replicas if versioned and versioned.replicas  # not repaired
                        else max(len(b.nodes) for b in plan.blocks))
                todo = repairs(name, plan, jobs.node_id, alive, ranked, min(want, len(alive)),
                               room, self._needs(name))
                for repair in todo:     # announced one by one: the new holder must not
                    if await self._repair(repair, alive):   # wait for the other copies to
                        await jobs.announce_plan(name)      # learn that it is listed
                        made += 1
            await self.resolve_unlisted(alive)
            return made
        finally:
            self._busy = False

    async def resolve_unlisted(self, alive: set[str], now: float | None = None) -> None:
        """Adopt or drop block copies held here that the plan does not list (``unlisted``).

        Before a drop the plan is refreshed from the block's live listed holders (a plan
        notice to this node may have been lost), and the drop itself goes through the
        holder's release, which re-checks the plan after its grace: a block that a plan
        this node knows lists here is never deleted.
        """
        jobs = self.jobs
        now = time.monotonic() if now is None else now
        held = jobs.holder.store.names()
        gone = {m.node_id for m in jobs.mesh.members() if m.state.value in ("dead", "left")}
        for name in set(self._unlisted) - set(held):
            del self._unlisted[name]
        for name, idxs in held.items():
            plan = jobs.plans.get(name)
            if plan is None:
                continue
            seen = self._unlisted.setdefault(name, {})
            todo = unlisted(plan, jobs.node_id, alive, gone, set(idxs), seen, now)
            for idx in todo.adopt:
                nodes = [n for n in _block(plan, idx).nodes if n in alive] + [jobs.node_id]
                await jobs.plans.update_block(name, idx, nodes, jobs.node_id)
                await jobs.announce_plan(name)
                log.warning("adopted the unlisted copy of %s block %d held here: no holder "
                            "the plan lists is alive (a copy whose source died mid-switch)",
                            name, idx)
            if todo.drop:
                await self._refresh_plan(name, plan, todo.drop, alive)
                log.info("releasing unlisted copies of %s block(s) %s: no plan lists this "
                         "node for them after %.0f s", name, list(todo.drop), UNLISTED_GRACE_S)
                jobs.holder.release_unlisted(name)
                for idx in todo.drop:
                    seen.pop(idx, None)

    async def _refresh_plan(self, name: str, plan: PartitionPlan, idxs: tuple[int, ...],
                            alive: set[str]) -> None:
        """Merge in the plan of ``name`` as the blocks' live listed holders know it."""
        jobs = self.jobs
        asked = {n for i in idxs for n in _block(plan, i).nodes
                 if n in alive and n != jobs.node_id}
        for node in sorted(asked):
            try:
                session = await jobs.mesh.session(node)
                value = await session.request(GetPlan(session.next_rid(), name), 5)
                if value:
                    await jobs.plans.put(name, VersionedPlan.from_wire(value))
            except (LinkClosed, TimeoutError, RemoteError, ProtocolError, ValueError,
                    KeyError, TypeError) as exc:
                log.info("could not refresh the plan of %s from %s: %s", name, node[:8], exc)

    def _needs(self, name: str) -> Callable[[Block], int]:
        """A block's bytes as this node holds it (the repairer is always a holder)."""
        store = self.jobs.holder.store

        def needs(blk: Block) -> int:
            try:
                return store.get(name, blk.index).nbytes
            except StoreError:
                return 0
        return needs

    async def _repair(self, repair: Repair, alive: set[str]) -> int:
        """Ship the programmed state of one block to its new holder; 1 if it took."""
        try:
            block = self.jobs.holder.store.get(repair.name, repair.index)
        except StoreError as exc:   # the plan names us, but the block is gone (e.g. a bad file)
            log.warning("cannot re-replicate %s block %d: %s", repair.name, repair.index, exc)
            return 0
        try:
            session = await self.jobs.mesh.session(repair.target)
            raw = await self.jobs.executor.run(self.jobs.holder.store.state_bytes,
                                               repair.name, repair.index)
            state = decode_state(raw)
            msg = StoreState(session.next_rid(), repair.name, repair.index, block.row_start,
                             block.device, block.seed, state)
            await session.request(msg, request_timeout(0, block.nbytes))
        except (LinkClosed, TimeoutError, RemoteError, ProtocolError, OSError) as exc:
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
