"""The load-aware scorer: how much work each member should get.

A member's score is its *effective* capacity: what the dual memory has measured it
achieving (or, for a stranger, what it advertises), scaled down by its current load and
its observed unreliability, and penalised for a relayed link (every byte crosses TURN)
and, when its RAM tier is full, by how much slower its disk tier measured.
Members that cannot be reached, or are not alive, score zero. Pure functions: the job
manager feeds them the advertisement table and the dual memory.
"""

from __future__ import annotations

from dataclasses import dataclass

from node.memory.dualmemory import DualMemory

RELAY_PENALTY = 0.5
MIN_SCORE = 1e-3


@dataclass
class Candidate:
    """What the scorer knows of one member (from its advertisement and our link)."""

    node_id: str
    capacity: float          # advertised GFLOP/s
    load: float              # advertised (running + queued) / cores
    memory_free: int
    device: str
    link: str                # 'self' | 'tcp' | 'ice-direct' | 'ice-relay' | 'none'
    alive: bool = True
    disk_free: int = 0       # tier 1: blocks it can hold beyond its RAM
    tier1_speed: float = 1.0  # tier-1 reads as a fraction of tier-0 speed (measured there)


def holdable(c: Candidate) -> int:
    """Bytes of new blocks ``c`` can hold: free RAM, plus free disk beyond it (tier 1)."""
    return c.memory_free + max(0, c.disk_free - c.memory_free)


def score(c: Candidate, memory: DualMemory) -> float:
    """Effective capacity of ``c`` in GFLOP/s; 0 when it should get no work."""
    if not c.alive or c.link == "failed":
        return 0.0
    measured = memory.peer_speed(c.node_id)
    base = measured if measured is not None else c.capacity
    value = max(base, MIN_SCORE) / (1.0 + max(c.load, 0.0))
    value *= memory.peer_reliability(c.node_id)
    if c.link == "ice-relay":
        value *= RELAY_PENALTY
    if c.memory_free <= 0 < c.disk_free:   # new blocks would be served from disk
        value *= max(c.tier1_speed, MIN_SCORE)
    return value


def rank(cands: list[Candidate], memory: DualMemory) -> list[tuple[float, Candidate]]:
    """Candidates that should get work, best first."""
    scored = [(score(c, memory), c) for c in cands]
    return sorted([sc for sc in scored if sc[0] > 0], key=lambda sc: -sc[0])


def by_predicted_finish(holders: list[str], speeds: dict[str, float], inflight: dict[str, int],
                        flops: float, overhead_s: dict[str, float] | None = None) -> list[str]:
    """Holders ordered by when a new request would finish on each, soonest first.

    Why not always the best-scoring holder: under load every request would pile onto it
    while its replicas idle. Predicted finish = (requests already in flight there + this
    one) x seconds per request at its learned speed + its transfer overhead, so requests
    spread across replicas in proportion to what each can actually do. Unknown speeds
    count as slow; ties go to the earlier holder (the plan's primary first).
    """
    extra = overhead_s or {}

    def finish(i_n: tuple[int, str]) -> tuple[float, int]:
        i, n = i_n
        per = flops / (max(speeds.get(n, 0.0), MIN_SCORE) * 1e9)
        return (inflight.get(n, 0) + 1) * per + extra.get(n, 0.0), i
    return [n for _, n in sorted(enumerate(holders), key=finish)]
