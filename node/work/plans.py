"""The deployment plans this node knows: which nodes hold which row blocks of which matrix.

Every member keeps the plans it has heard of (the deployer announces each one), so any
member can route ``infer`` for any deployed matrix. Plans are small and persisted in
SQLite, so a restarted node routes again at once.

Plans are *versioned and merged*, never overwritten. The old rule was last writer wins:
two survivors repairing different blocks each announced a whole plan, and whichever
announcement came last erased the other's repair. Now each block carries a stamp
``(version, writer)`` and the plan a deployment id; :func:`merge` keeps, block by block,
the entry with the larger stamp (a last-writer-wins register per block: a CRDT whose merge
is commutative, associative and idempotent, so every member converges whatever order the
announcements arrive in). A plan of a newer deployment of the same name (ids sort by
time) replaces an older one whole.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field, replace
from typing import Any

import msgpack

from compute.partition import Block, PartitionPlan
from node.memory.statedb import StateDB
from node.work.claims import ClaimTable

log = logging.getLogger("sedma.plans")

Stamp = tuple[int, str]     # (version, writer node id): larger wins


def new_deploy_id(node_id: str, now_ns: int | None = None) -> str:
    """Sortable by time, unique per node: a later deployment of a name sorts after."""
    now_ns = time.time_ns() if now_ns is None else now_ns
    return f"{now_ns:020d}-{node_id[:16]}"


@dataclass
class VersionedPlan:
    """A partition plan plus the stamps that let copies of it merge."""

    plan: PartitionPlan
    deploy: str
    stamps: list[Stamp] = field(default_factory=list)   # one per block
    #: Replicas per block as deployed (0: unknown, from a peer that predates the field).
    #: Kept apart from the block lists because hot replication adds holders above it and
    #: retiring must know where to stop, also after a restart (the plan is persisted).
    replicas: int = 0
    #: Per block, the request rate (req/s) it last gained a hot replica at (0: none or
    #: unknown). Retiring that replica waits for the rate to fall well below it; carried
    #: with the block's entry (so it merges with it) because the node that decides the
    #: retire is often not the one that decided the replica (node.work.rebalance).
    grown: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.stamps:                # a fresh deployment: every block as placed
            self.stamps = [(0, "")] * len(self.plan.blocks)
            if not self.replicas and self.plan.blocks:
                self.replicas = min(len(b.nodes) for b in self.plan.blocks)
        if not self.grown:
            self.grown = [0.0] * len(self.plan.blocks)
        if len(self.stamps) != len(self.plan.blocks) or len(self.grown) != len(self.stamps):
            raise ValueError("a plan needs one stamp and one growth rate per block")

    def to_wire(self) -> dict:
        out = {"plan": self.plan.to_dict(), "deploy": self.deploy,
               "stamps": [[v, w] for v, w in self.stamps]}
        if self.replicas:
            out["replicas"] = self.replicas
        if any(self.grown):
            out["grown"] = list(self.grown)
        return out

    @classmethod
    def from_wire(cls, value: Any) -> "VersionedPlan":
        """Parse a versioned plan; a bare (pre-versioning) plan dict is version 0."""
        if not isinstance(value, dict):
            raise ValueError(f"a plan must be a dict, got {type(value).__name__}")
        if "plan" not in value:
            return cls(PartitionPlan.from_dict(value), "")
        plan = PartitionPlan.from_dict(value["plan"])
        deploy, raw = value.get("deploy"), value.get("stamps")
        if not isinstance(deploy, str) or not isinstance(raw, list):
            raise ValueError("a versioned plan needs a deploy id and a list of stamps")
        stamps = []
        for s in raw:
            if (not isinstance(s, (list, tuple)) or len(s) != 2 or not isinstance(s[0], int)
                    or isinstance(s[0], bool) or s[0] < 0 or not isinstance(s[1], str)):
                raise ValueError(f"bad block stamp {s!r}")
            stamps.append((s[0], s[1]))
        replicas = value.get("replicas", 0)
        if not isinstance(replicas, int) or isinstance(replicas, bool) or not 0 <= replicas <= 1024:
            raise ValueError(f"bad replica count {replicas!r}")
        grown = value.get("grown", [0.0] * len(stamps))
        if (not isinstance(grown, list) or len(grown) != len(stamps)
                or not all(isinstance(g, (int, float)) and not isinstance(g, bool)
                           and 0 <= g < math.inf for g in grown)):
            raise ValueError(f"bad block growth rates {grown!r}")
        return cls(plan, deploy, stamps, replicas, [float(g) for g in grown])

    def with_block(self, index: int, nodes: list[str], writer: str,
                   grown: float | None = None) -> "VersionedPlan":
        """A copy where block ``index`` is held by ``nodes``, stamped above its old stamp
        (``grown``: the rate it gained a hot replica at; None keeps the block's)."""
        blocks = [replace(b, nodes=list(nodes)) if b.index == index else _copy(b)
                  for b in self.plan.blocks]
        stamps = list(self.stamps)
        stamps[index] = (stamps[index][0] + 1, writer)
        rates = list(self.grown)
        if grown is not None:
            rates[index] = float(grown)
        return VersionedPlan(PartitionPlan(self.plan.shape, self.plan.device, blocks),
                             self.deploy, stamps, self.replicas, rates)


def _copy(b: Block) -> Block:
    return replace(b, nodes=list(b.nodes))


def merge(a: VersionedPlan, b: VersionedPlan) -> VersionedPlan:
    """The join of two copies of one name's plan (commutative, associative, idempotent)."""
    if a.deploy != b.deploy:
        return a if a.deploy > b.deploy else b
    if _layout(a.plan) != _layout(b.plan):   # same deployment, different cut: a bug or a
        return a if _digest(a) >= _digest(b) else b   # forgery; pick one deterministically
    blocks, stamps, grown = [], [], []
    for ba, sa, ga, bb, sb, gb in zip(a.plan.blocks, a.stamps, a.grown, b.plan.blocks,
                                      b.stamps, b.grown):
        if sa > sb or (sa == sb and (ba.nodes, ga) >= (bb.nodes, gb)):
            blocks.append(_copy(ba))
            stamps.append(sa)
            grown.append(ga)             # the growth rate goes with its block entry
        else:
            blocks.append(_copy(bb))
            stamps.append(sb)
            grown.append(gb)
    return VersionedPlan(PartitionPlan(a.plan.shape, a.plan.device, blocks), a.deploy, stamps,
                         max(a.replicas, b.replicas),   # one deployment, one count; 0 = unknown
                         grown)


def _layout(p: PartitionPlan) -> tuple:
    return (tuple(p.shape), p.device, tuple((b.index, b.row_start, b.row_stop) for b in p.blocks))


def _digest(v: VersionedPlan) -> bytes:
    return msgpack.packb(v.to_wire())


class PlanBook:
    """Name -> versioned partition plan, mirrored in the ``plans`` table."""

    def __init__(self, db: StateDB) -> None:
        self.db = db
        self._plans: dict[str, VersionedPlan] = {}
        self.claims = ClaimTable()

    def restore(self) -> int:
        """Load persisted plans; an unreadable one is logged and skipped."""
        rows = self.db.call(lambda c: c.execute("SELECT name, plan FROM plans").fetchall())
        for name, blob in rows:
            try:
                self._plans[name] = VersionedPlan.from_wire(msgpack.unpackb(blob))
            except (ValueError, TypeError, KeyError, msgpack.UnpackException) as exc:
                log.error("plan of %s unreadable (%s); ignoring it", name, exc)
        return len(self._plans)

    def get(self, name: str) -> PartitionPlan | None:
        v = self._plans.get(name)
        return v.plan if v else None

    def versioned(self, name: str) -> VersionedPlan | None:
        return self._plans.get(name)

    def items(self) -> list[tuple[str, PartitionPlan]]:
        return [(n, v.plan) for n, v in self._plans.items()]

    def names(self) -> list[str]:
        return sorted(self._plans)

    def __contains__(self, name: str) -> bool:
        return name in self._plans

    async def put(self, name: str, incoming: VersionedPlan) -> VersionedPlan:
        """Merge ``incoming`` into what we know of ``name``; persist and return the result."""
        known = self._plans.get(name)
        merged = incoming if known is None else merge(known, incoming)
        if known is not None and merged.to_wire() == known.to_wire():
            return known
        self._plans[name] = merged
        self.claims.settled(name)          # a committed plan now guards the name
        blob = msgpack.packb(merged.to_wire())
        await self.db.run(lambda c: c.execute(
            "INSERT OR REPLACE INTO plans VALUES (?,?,?)", (name, blob, time.time())))
        return merged

    async def update_block(self, name: str, index: int, nodes: list[str],
                           writer: str, grown: float | None = None) -> VersionedPlan:
        """Record that block ``index`` of ``name`` is now held by ``nodes`` (a repair, or a
        reconfiguration; ``grown``: see :meth:`VersionedPlan.with_block`)."""
        known = self._plans.get(name)
        if known is None:
            raise KeyError(name)
        return await self.put(name, known.with_block(index, nodes, writer, grown))

    async def forget(self, name: str) -> None:
        self._plans.pop(name, None)
        await self.db.run(lambda c: c.execute("DELETE FROM plans WHERE name=?", (name,)))
