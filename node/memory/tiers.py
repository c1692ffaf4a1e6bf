"""Which programmed blocks stay in RAM (tier 0) and which wait on disk (tier 1).

A node holds more blocks than its ``--memory-limit``: every block's programmed state is in
the data dir (tier 1, memory-mapped when read), and the ones worth it are also copied into
RAM (tier 0). Choosing them is a cache policy, and plain LRU is the wrong one for this
workload: a layer-by-layer model touches every block once per pass, so LRU evicts exactly
the block needed next, and one scan of a cold matrix flushes the hot ones. The value of a
block here is its *decayed frequency* (how often it was read, each read worth less as it
ages; the dual memory keeps these counts), like LFU with aging (the frequency half of ARC),
plus a bonus when the prefetcher predicts the block is needed next. A block being read is
*pinned* and never chosen.

Prefetch keeps several blocks of a predicted chain in RAM at once (the block being read is
rank 0, the next rank 1, ...). Among those, value is the wrong order: in a cycle over
layers the block needed soonest was read longest ago, so aged frequency would evict it
first to make room for one needed later. Predicted blocks are therefore ordered by rank:
they go only after every unpredicted candidate, the farthest first, and a load may displace
a predicted block only if that block is needed later than the one being loaded.

Everything here is a pure function over a snapshot (:class:`BlockUse` rows), so the store
decides under its lock without I/O and the tests need no files.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

#: Seconds for a read's weight to halve: recency, folded into frequency.
HALF_LIFE_S = 60.0
#: Worth of "the prefetcher predicts this block next", in reads.
PREDICTED_BONUS = 4.0
#: A newcomer must beat what it displaces by this many reads. Its own read is counted
#: before it is admitted, so without a margin every demand read in a cycle over more blocks
#: than fit looks a little hotter than the blocks it meets and displaces one (LRU in
#: disguise, 0 % hits); with it, a stable subset stays (blocks/fit of the reads hit).
ADMIT_MARGIN = 1.0

Key = tuple[str, int]
#: Rank of a block predicted without a place in the chain: after every ranked one.
FAR = 1 << 30


@dataclass(frozen=True)
class BlockUse:
    """One held block as the eviction policy sees it."""

    key: Key
    nbytes: int
    tier: int                 # 0: in RAM, 1: on disk only
    pinned: bool = False      # being read (or being loaded) right now
    hits: float = 0.0         # decayed read count at ``last_used``
    last_used: float = 0.0
    predicted: bool = False   # the prefetcher expects a read soon
    rank: int | None = None   # place in the predicted chain (0: being read); None: far/unknown

    @property
    def order(self) -> int | None:
        """Predicted rank (``FAR`` when predicted without one), None when not predicted."""
        if self.rank is not None:
            return self.rank
        return FAR if self.predicted else None


@dataclass(frozen=True)
class Eviction:
    """Move ``key`` from RAM to disk-only, and why."""

    key: Key
    nbytes: int
    value: float
    reason: str


def decayed(hits: float, last_used: float, now: float, half_life: float = HALF_LIFE_S) -> float:
    """``hits`` aged from ``last_used`` to ``now``."""
    age = max(0.0, now - last_used)
    return hits * math.pow(0.5, age / half_life)


def value(use: BlockUse, now: float, half_life: float = HALF_LIFE_S) -> float:
    """How much keeping ``use`` in RAM is worth: aged frequency, plus the prediction bonus."""
    return decayed(use.hits, use.last_used, now, half_life) + (
        PREDICTED_BONUS if use.predicted else 0.0)


def choose_victims(blocks: list[BlockUse], need: int, free: int, now: float,
                   protect: frozenset[Key] = frozenset(),
                   below: float | None = None,
                   rank: int | None = None) -> list[Eviction] | None:
    """Tier-0 blocks to evict so that ``need`` bytes fit in ``free`` + what they release.

    Unpredicted blocks first, lowest value first (ties: least recently used, then the larger
    block, so fewer go); then predicted ones, the farthest in the chain first. Pinned blocks
    and ``protect`` are never chosen. With ``below`` (admission), an unpredicted block may
    go only if it is worth less than that, and a predicted one only if its rank is beyond
    ``rank`` (the newcomer's; None: the newcomer displaces no predicted block).
    Returns ``[]`` when it fits already and ``None`` when it cannot be made to fit.
    """
    if need <= free:
        return []
    pool = [b for b in blocks if b.tier == 0 and not b.pinned and b.key not in protect]
    if below is not None:
        pool = [b for b in pool if (value(b, now) < below if b.order is None
                                    else rank is not None and b.order > rank)]
    pool.sort(key=lambda b: (b.order is not None, -(b.order or 0), value(b, now),
                             b.last_used, -b.nbytes))
    out: list[Eviction] = []
    for b in pool:
        v = value(b, now)
        why = (f"least valuable in RAM (aged reads {v:.2f})" if b.order is None else
               f"predicted furthest ahead (rank {b.order})")
        out.append(Eviction(b.key, b.nbytes, v, f"{why} to make room for {need} bytes"))
        free += b.nbytes
        if need <= free:
            return out
    return None


def admit(candidate: BlockUse, blocks: list[BlockUse], free: int,
          now: float) -> list[Eviction] | None:
    """Should a disk-only block come into RAM now? The evictions that make room, or None.

    A block that fits in free RAM always comes in. Otherwise it displaces only unpredicted
    blocks worth at least ``ADMIT_MARGIN`` reads less than itself, so a single cold read
    cannot flush the working set (scan resistance), and predicted blocks needed after it.
    """
    if candidate.tier == 0:
        return []
    return choose_victims(blocks, candidate.nbytes, free, now,
                          protect=frozenset({candidate.key}),
                          below=value(candidate, now) - ADMIT_MARGIN, rank=candidate.order)
