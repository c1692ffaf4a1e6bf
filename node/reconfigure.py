"""Continuous reconfiguration: keep every deployed block at its replica count.

When a holder dies, the block's surviving holder with the lowest node id (so exactly one
node acts, without a vote) picks the best-scoring member that does not hold the block,
ships it the *programmed state* (replicas stay bit-identical), updates the plan and
announces it. Decisions are a pure function (:func:`repairs`) of the plan, the set of live
members and the scorer's ranking; the daemon runs them after membership events and on a
slow timer, so a repair that failed is retried.
"""

from __future__ import annotations

from dataclasses import dataclass

from compute.partition import PartitionPlan


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
