"""Learned prefetch: which block is read next, learned from the order blocks were read.

Why learn it instead of hard-coding "next layer": a node only sees block reads, not models,
and the same node serves several deployments, blocks of other nodes' models and recurring
request patterns. A first-order successor model is enough for the patterns that matter
here (layer i is followed by layer i+1; request type A is followed by B) and costs one
counter per observed pair: each read of ``j`` that comes within ``gap_s`` of a read of
``i`` adds one to ``i -> j``; counts decay (halved every ``half_life`` observations of
``i``) so a pattern that changes is unlearned. :meth:`SuccessorModel.predict` returns the
successors whose share of ``i``'s transitions is at least ``min_share``.

The model is a plain value (``to_dict``/``from_dict``) the dual memory persists, so a
restarted node prefetches correctly from its first request. :class:`PrefetchStats` counts
what prefetch did: issued, used before eviction (hits), evicted unused (wasted), bytes
moved into RAM.

How far ahead to load is :func:`plan_prefetch`, a pure function of the learned chain and
the tier-0 budget: a read from disk is several times slower than a layer's compute here,
so one block in flight leaves the device idle between loads and one reader leaves its
queue depth unused (the bench measures both). Several blocks in flight at once, as many
as fit in the RAM budget next to the block being read, keep the device busy; the budget is
never exceeded because every block of the chain counts, loaded or in flight.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable

Key = tuple[str, int]

GAP_S = 2.0            # reads further apart than this are not a sequence
MIN_SHARE = 0.3        # a successor must follow i at least this often to be predicted
MAX_SUCCESSORS = 8     # per block: bounded memory whatever the pattern
HALF_LIFE = 64         # observations of i after which old counts weigh half
MAX_BLOCKS = 4096      # blocks with a learned successor list


@dataclass(frozen=True)
class Prediction:
    key: Key
    share: float       # fraction of i's recent transitions that went to key


def _k(key: Key) -> str:
    return f"{key[0]}/{key[1]}"


def _unk(text: str) -> Key:
    name, _, idx = text.rpartition("/")
    return name, int(idx)


@dataclass
class SuccessorModel:
    """``i -> {j: weight}`` learned from the read order of this node's blocks."""

    gap_s: float = GAP_S
    min_share: float = MIN_SHARE
    table: dict[str, dict[str, float]] = field(default_factory=dict)
    _last: tuple[str, float] | None = None

    def observe(self, key: Key, now: float) -> None:
        """A read of ``key`` started at ``now``."""
        k = _k(key)
        last = self._last
        self._last = (k, now)
        if last is None or last[0] == k or now - last[1] > self.gap_s or now < last[1]:
            return
        if last[0] not in self.table and len(self.table) >= MAX_BLOCKS:
            return
        row = self.table.setdefault(last[0], {})
        decay = 0.5 ** (1.0 / HALF_LIFE)
        for j in row:
            row[j] *= decay
        row[k] = row.get(k, 0.0) + 1.0
        if len(row) > MAX_SUCCESSORS:
            del row[min(row, key=row.__getitem__)]

    def predict(self, key: Key, limit: int = 2) -> list[Prediction]:
        """Blocks likely read right after ``key``, most likely first."""
        row = self.table.get(_k(key))
        if not row:
            return []
        total = sum(row.values())
        ranked = sorted(row.items(), key=lambda kv: -kv[1])[:limit]
        return [Prediction(_unk(j), w / total) for j, w in ranked if w / total >= self.min_share]

    def forget(self, name: str) -> None:
        """Drop everything about matrix ``name`` (it was undeployed)."""
        prefix = name + "/"
        self.table = {i: {j: w for j, w in row.items() if not j.startswith(prefix)}
                      for i, row in self.table.items() if not i.startswith(prefix)}

    def to_dict(self) -> dict:
        return {"gap_s": self.gap_s, "min_share": self.min_share, "table": self.table}

    @classmethod
    def from_dict(cls, d: dict) -> "SuccessorModel":
        """Rebuild from :meth:`to_dict`; ValueError when the record is malformed."""
        table = d.get("table") if isinstance(d, dict) else None
        if not isinstance(table, dict):
            raise ValueError("successor model: missing table")
        clean: dict[str, dict[str, float]] = {}
        for i, row in list(table.items())[:MAX_BLOCKS]:
            if not isinstance(i, str) or not isinstance(row, dict):
                raise ValueError("successor model: bad row")
            _unk(i)
            clean[i] = {str(j): float(w) for j, w in list(row.items())[:MAX_SUCCESSORS]}
        return cls(float(d.get("gap_s", GAP_S)), float(d.get("min_share", MIN_SHARE)), clean)


#: Blocks of a chain followed ahead of the one read: bounded work per read.
MAX_CHAIN = 16


def follow_chain(start: Key, successor: Callable[[Key], Key | None],
                 held: Callable[[Key], bool], max_len: int = MAX_CHAIN) -> list[Key]:
    """``start`` then its most likely successors, one after the other, held here only.

    ``successor(key)`` is the model's best guess after ``key`` (or None); ``held(key)``
    whether this node holds it. Blocks held elsewhere are stepped over (their successors
    may be here); the walk stops at a repeat, a dead end or ``max_len`` steps.
    """
    chain, seen, key = [start], {start}, start
    for _ in range(max_len):
        key = successor(key)
        if key is None or key in seen:
            break
        seen.add(key)
        if held(key):
            chain.append(key)
    return chain


@dataclass(frozen=True)
class ChainBlock:
    """One block of the predicted chain as the store has it right now."""

    key: Key
    nbytes: int
    tier: int            # 0: in RAM, 1: on disk only
    loading: bool        # a load into RAM is in flight


@dataclass(frozen=True)
class PrefetchPlan:
    """What to keep in RAM and what to start loading after a read."""

    ranks: dict[Key, int]   # chain blocks that fit the budget, 0 = the block being read
    start: list[Key]        # disk-only blocks to start loading now, nearest first
    depth: int              # blocks ahead of the read that the budget allows


def plan_prefetch(chain: list[ChainBlock], budget: int, other_pinned: int,
                  max_in_flight: int) -> PrefetchPlan:
    """How many blocks of ``chain`` to hold ahead of the read, and which loads to start.

    The chain is taken from its head while its blocks, all counted whether in RAM, in
    flight or still on disk, fit in ``budget`` minus ``other_pinned`` (bytes pinned by
    other readers, which cannot be evicted). The head is the block about to be read; its
    read loads it itself. Loads in flight never exceed ``max_in_flight`` (the loader's
    threads: more would only queue), and the nearest blocks start first.
    """
    room = budget - max(0, other_pinned)
    ranks: dict[Key, int] = {}
    total = 0
    for rank, b in enumerate(chain):
        if total + b.nbytes > room:
            break
        total += b.nbytes
        ranks[b.key] = rank
    ahead = [b for b in chain[1:len(ranks)]]
    in_flight = sum(b.loading for b in ahead)
    start = []
    for b in ahead:
        if in_flight >= max_in_flight:
            break
        if b.tier == 1 and not b.loading:
            start.append(b.key)
            in_flight += 1
    return PrefetchPlan(ranks, start, len(ahead))


@dataclass
class PrefetchStats:
    """What prefetch did, for ``sedma memory`` and the bench."""

    reads: int = 0              # block reads served
    tier0_reads: int = 0        # ... that found the block in RAM (hits)
    late: int = 0               # ... that waited for a prefetch of their block in flight
    issued: int = 0             # blocks loaded into RAM because they were predicted
    used: int = 0               # ... that were read while still in RAM
    wasted: int = 0             # ... that were evicted before anyone read them
    bytes_loaded: int = 0       # bytes copied disk -> RAM (prefetch and on-demand)
    bytes_prefetched: int = 0   # ... of which by prefetch
    bytes_wasted: int = 0       # prefetched bytes evicted before anyone read them
    bytes_transient: int = 0    # bytes read from disk for a read, not kept in RAM
    depth: int = 0              # blocks ahead of the last read the budget allowed
    max_in_flight: int = 0      # most prefetch loads in flight at once

    def hit_rate(self) -> float | None:
        """Reads that found their block in RAM over all reads (late prefetches are misses)."""
        return self.tier0_reads / self.reads if self.reads else None

    def accuracy(self) -> float | None:
        """Prefetched blocks that were used over prefetched blocks that were decided."""
        done = self.used + self.wasted
        return self.used / done if done else None

    def to_dict(self) -> dict:
        return asdict(self) | {"hit_rate": self.hit_rate(), "accuracy": self.accuracy()}
