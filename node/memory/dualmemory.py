"""The node's dual memory: short-term workload statistics and long-term performance patterns.

*Short-term* memory is a sliding window of what just happened: every share a peer computed
(work, time, success) and every request a matrix served. *Long-term* memory is what the
node has learned: per peer, an exponentially weighted estimate of its achieved speed
(GFLOP/s, transfer included) and of its reliability; per matrix, how often it is used.
Consolidation folds the window into the long-term estimates at a fixed cadence, and both
are persisted in SQLite so a restarted node keeps what it learned. Placement reads the
long-term estimates before it trusts a peer's self-advertised capacity: this is how the
mesh gets better at its own workload over time.

For the self-evolving memory it also keeps, long-term: per block, an aged read count (the
tier policy's frequency and recency) and the smoothed seconds a read takes here; which
block follows which (the prefetcher's successor model); this node's own serving speed and
the measured speed of block copies to each peer (what a migration costs); and the last
reconfiguration decisions with their reasons, predicted gain and what was measured
before and after. Short-term: bytes and seconds read per tier (how much slower tier 1 is).
Block reads are recorded from compute threads, under the same lock.

The class is a plain state machine fed with observations and a clock; persistence is two
small methods the daemon calls.

Threads: observations arrive on the event loop while ``save`` runs on the database
thread. One lock owns every container; ``save`` copies under it and encodes outside it, so
neither side ever iterates a deque the other is appending to ("deque mutated during
iteration" used to kill the memory loop), and the loop waits at most for a copy.
"""

from __future__ import annotations

import collections
import math
import sqlite3
import threading
import time
from dataclasses import asdict, dataclass, field

import msgpack

from node.memory.prefetch import Key, SuccessorModel
from node.memory.tiers import HALF_LIFE_S, decayed

SHORT_WINDOW = 300.0      # seconds of history in short-term memory
MAX_BLOCK_STATS = 65536   # per-block read counts kept (the least used are forgotten)
MAX_DECISIONS = 200       # reconfiguration decisions kept
FORGET_AFTER = 24 * 3600.0  # a departed peer's patterns are dropped after this long unseen
ALPHA = 0.3               # weight of one consolidation period in the long-term estimate
SERVED_ALPHA = 0.05       # weight of one read in this node's own speed (~20-read memory)


@dataclass
class Sample:
    at: float
    flops: float
    seconds: float
    ok: bool


@dataclass
class PeerPattern:
    """What the node has learned about one peer."""

    speed_gflops: float | None = None
    reliability: float = 1.0
    samples: int = 0
    failures: int = 0
    last_seen: float = 0.0   # newest sample folded in (wall clock)


@dataclass
class MatrixPattern:
    requests: int = 0
    mean_latency_ms: float = 0.0
    last_used: float = 0.0


@dataclass
class DualMemory:
    """Short-term window plus long-term patterns, for peers and matrices."""

    window: float = SHORT_WINDOW
    peers: dict[str, collections.deque] = field(default_factory=dict)
    requests: dict[str, collections.deque] = field(default_factory=dict)
    peer_patterns: dict[str, PeerPattern] = field(default_factory=dict)
    matrix_patterns: dict[str, MatrixPattern] = field(default_factory=dict)
    _consolidated_at: dict[str, float] = field(default_factory=dict)
    #: Long-term, per block ("name/idx"): [aged read count, last read] (tier policy).
    block_reads: dict[str, list[float]] = field(default_factory=dict)
    #: Long-term: which block follows which (prefetch).
    successors: SuccessorModel = field(default_factory=SuccessorModel)
    #: Long-term: the last reconfiguration decisions, with reason, predicted and measured gain.
    decisions: list[dict] = field(default_factory=list)
    #: Short-term, per tier: [bytes read, seconds] since start (how much slower tier 1 is).
    tier_io: dict[int, list[float]] = field(default_factory=lambda: {0: [0.0, 0.0], 1: [0.0, 0.0]})
    #: Long-term, per block: smoothed seconds per read here (compute included).
    block_seconds: dict[str, float] = field(default_factory=dict)
    #: Long-term: this node's own achieved GFLOP/s serving reads (slowness shows here).
    served_gflops: float | None = None
    #: Long-term, per peer: measured bytes/s of block copies (the cost of a move).
    link_bps: dict[str, float] = field(default_factory=dict)
    #: Half-life of a block's read count: request rates (hot replication, retiring) follow
    #: load over about this many seconds. A setting, not learned (``rate_half_life_s``).
    rate_half_life_s: float = HALF_LIFE_S
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    # observations (short-term) ------------------------------------------------------
    def record_share(self, peer: str, flops: float, seconds: float, ok: bool,
                     now: float | None = None) -> None:
        """A share sent to ``peer`` finished (or failed) after ``seconds``."""
        now = time.time() if now is None else now
        with self._lock:
            self.peers.setdefault(peer, collections.deque(maxlen=4096)).append(
                Sample(now, flops, seconds, ok))

    def record_request(self, matrix: str, latency_s: float, now: float | None = None) -> None:
        now = time.time() if now is None else now
        with self._lock:
            self.requests.setdefault(matrix, collections.deque(maxlen=4096)).append(
                (now, latency_s))

    def record_block_read(self, key: Key, now: float | None = None) -> None:
        """A read of block ``key`` started: its aged count and the successor model learn."""
        now = time.time() if now is None else now
        k = f"{key[0]}/{key[1]}"
        with self._lock:
            hits, last = self.block_reads.get(k, (0.0, now))
            self.block_reads[k] = [decayed(hits, last, now, self.rate_half_life_s) + 1.0, now]
            if len(self.block_reads) > MAX_BLOCK_STATS:
                del self.block_reads[min(self.block_reads, key=lambda j: self.block_reads[j][1])]
            self.successors.observe(key, now)

    def block_use(self, key: Key) -> tuple[float, float]:
        """(aged read count at the last read, time of the last read) of block ``key``."""
        with self._lock:
            hits, last = self.block_reads.get(f"{key[0]}/{key[1]}", (0.0, 0.0))
        return hits, last

    def predict_next(self, key: Key, limit: int = 2) -> list[Key]:
        """Blocks the successor model expects right after ``key``."""
        with self._lock:
            return [p.key for p in self.successors.predict(key, limit)]

    def record_tier_read(self, tier: int, nbytes: int, seconds: float,
                         key: Key | None = None) -> None:
        """A read of a tier-``tier`` block took ``seconds`` (compute included)."""
        with self._lock:
            acc = self.tier_io.setdefault(tier, [0.0, 0.0])
            acc[0] += nbytes
            acc[1] += seconds
            if key is not None:
                k = f"{key[0]}/{key[1]}"
                old = self.block_seconds.get(k)
                self.block_seconds[k] = seconds if old is None else (
                    (1 - ALPHA) * old + ALPHA * seconds)
                if len(self.block_seconds) > MAX_BLOCK_STATS:
                    self.block_seconds.pop(next(iter(self.block_seconds)))

    def block_rate(self, key: Key, now: float | None = None) -> float:
        """Reads per second of block ``key`` here: the aged count over its mean age.

        With reads at a steady rate r, the aged count settles at r x half-life / ln 2.
        """
        now = time.time() if now is None else now
        hits, last = self.block_use(key)
        half = self.rate_half_life_s
        return decayed(hits, last, now, half) * math.log(2) / half

    def block_service_s(self, key: Key) -> float | None:
        """Smoothed seconds one read of block ``key`` takes here, None before the first."""
        with self._lock:
            return self.block_seconds.get(f"{key[0]}/{key[1]}")

    def record_served(self, flops: float, seconds: float) -> None:
        """This node computed ``flops`` for a peer or itself in ``seconds`` (its own speed)."""
        if seconds <= 0:
            return
        with self._lock:
            speed = flops / seconds / 1e9
            self.served_gflops = speed if self.served_gflops is None else (
                (1 - SERVED_ALPHA) * self.served_gflops + SERVED_ALPHA * speed)

    def record_transfer(self, peer: str, nbytes: int, seconds: float) -> None:
        """A block copy to ``peer`` moved ``nbytes`` in ``seconds`` (its link speed)."""
        if seconds <= 0:
            return
        with self._lock:
            bps = nbytes / seconds
            old = self.link_bps.get(peer)
            self.link_bps[peer] = bps if old is None else (1 - ALPHA) * old + ALPHA * bps

    def link_speed(self, peer: str, default: float) -> float:
        with self._lock:
            return self.link_bps.get(peer, default)

    def tier1_speed(self) -> float:
        """Tier-1 read throughput as a fraction of tier 0's (1.0 until both were measured)."""
        with self._lock:
            (b0, s0), (b1, s1) = self.tier_io.get(0, (0, 0)), self.tier_io.get(1, (0, 0))
        if not (b0 and s0 and b1 and s1):
            return 1.0
        return min(1.0, (b1 / s1) / (b0 / s0))

    def record_decision(self, decision: dict) -> None:
        """Keep a reconfiguration decision (with its reason and predicted gain)."""
        with self._lock:
            self.decisions.append(dict(decision))
            del self.decisions[: max(0, len(self.decisions) - MAX_DECISIONS)]

    def judge_decision(self, at: float, key: Key, measured_after: dict) -> None:
        """Record what was measured after the decision made at ``at`` on block ``key``."""
        with self._lock:
            for d in self.decisions:
                if d.get("at") == at and (d.get("name"), d.get("index")) == key:
                    d["measured_after"] = measured_after

    def decided(self, limit: int = 20) -> list[dict]:
        with self._lock:
            return [dict(d) for d in self.decisions[-limit:]]

    def matrix_rate(self, name: str, now: float | None = None, span: float = 60.0) -> float:
        """Requests per second of ``name`` over the last ``span`` seconds (short-term)."""
        now = time.time() if now is None else now
        with self._lock:
            q = self.requests.get(name, ())
            return sum(1 for at, _ in q if at > now - span) / span

    def forget_matrix(self, name: str) -> None:
        """An undeployed matrix: its per-block counts and learned sequences go."""
        prefix = name + "/"
        with self._lock:
            self.block_reads = {k: v for k, v in self.block_reads.items()
                                if not k.startswith(prefix)}
            self.block_seconds = {k: v for k, v in self.block_seconds.items()
                                  if not k.startswith(prefix)}
            self.successors.forget(name)
            self.requests.pop(name, None)          # deploy churn must not grow these
            self.matrix_patterns.pop(name, None)
            self._consolidated_at.pop("m:" + name, None)

    # consolidation (short -> long) ---------------------------------------------------
    def consolidate(self, now: float | None = None) -> None:
        """Fold samples newer than the last consolidation into the long-term patterns."""
        now = time.time() if now is None else now
        with self._lock:
            self._consolidate(now)

    def _consolidate(self, now: float) -> None:
        for peer, samples in self.peers.items():
            since = self._consolidated_at.get(peer, 0.0)
            fresh = [s for s in samples if s.at > since]
            if fresh:
                self._fold_peer(self.peer_patterns.setdefault(peer, PeerPattern()), fresh)
            self._consolidated_at[peer] = now
            while samples and samples[0].at < now - self.window:
                samples.popleft()
        for name, reqs in self.requests.items():
            since = self._consolidated_at.get("m:" + name, 0.0)
            fresh = [lat for at, lat in reqs if at > since]
            if fresh:
                pat = self.matrix_patterns.setdefault(name, MatrixPattern())
                mean = sum(fresh) / len(fresh) * 1000
                pat.mean_latency_ms = mean if pat.requests == 0 else (
                    (1 - ALPHA) * pat.mean_latency_ms + ALPHA * mean)
                pat.requests += len(fresh)
                pat.last_used = now
            self._consolidated_at["m:" + name] = now
            while reqs and reqs[0][0] < now - self.window:
                reqs.popleft()

    @staticmethod
    def _fold_peer(pat: PeerPattern, fresh: list[Sample]) -> None:
        ok = [s for s in fresh if s.ok and s.seconds > 0]
        if ok:
            speed = sum(s.flops for s in ok) / sum(s.seconds for s in ok) / 1e9
            pat.speed_gflops = speed if pat.speed_gflops is None else (
                (1 - ALPHA) * pat.speed_gflops + ALPHA * speed)
        rate = len(ok) / len(fresh)
        pat.reliability = (1 - ALPHA) * pat.reliability + ALPHA * rate
        pat.samples += len(fresh)
        pat.failures += len(fresh) - len(ok)
        pat.last_seen = max(pat.last_seen, max(s.at for s in fresh))

    def forget_departed(self, members: set[str], now: float | None = None,
                        after: float = FORGET_AFTER) -> list[str]:
        """Drop what we know of peers that are not ``members`` and went unseen ``after``
        seconds: per-peer records otherwise grow with every node that ever passed by."""
        now = time.time() if now is None else now
        with self._lock:
            gone = [p for p in set(self.peers) | set(self.peer_patterns)
                    if p not in members and self._last_seen(p) < now - after]
            for p in gone:
                self.peers.pop(p, None)
                self.peer_patterns.pop(p, None)
                self._consolidated_at.pop(p, None)
        return gone

    def _last_seen(self, peer: str) -> float:
        samples = self.peers.get(peer)
        pat = self.peer_patterns.get(peer)
        return max(samples[-1].at if samples else 0.0, pat.last_seen if pat else 0.0)

    # queries (what placement reads) -------------------------------------------------
    def peer_speed(self, peer: str) -> float | None:
        pat = self.peer_patterns.get(peer)
        return pat.speed_gflops if pat else None

    def peer_reliability(self, peer: str) -> float:
        pat = self.peer_patterns.get(peer)
        return pat.reliability if pat else 1.0

    def short_term_summary(self, now: float | None = None) -> dict:
        """Counts and rates over the window, for ``status``."""
        now = time.time() if now is None else now
        lo = now - self.window
        with self._lock:
            shares = [s for q in self.peers.values() for s in q if s.at > lo]
            reqs = [lat for q in self.requests.values() for at, lat in q if at > lo]
        return {"window_s": self.window, "shares": len(shares),
                "share_failures": sum(not s.ok for s in shares), "requests": len(reqs),
                "requests_per_s": len(reqs) / self.window}

    # persistence --------------------------------------------------------------------
    def save(self, conn: sqlite3.Connection, now: float | None = None) -> None:
        """Write both memories in the caller's transaction (any thread)."""
        now = time.time() if now is None else now
        with self._lock:   # copy only; encoding happens outside the lock
            peer_patterns = {k: asdict(v) for k, v in self.peer_patterns.items()}
            matrix_patterns = {k: asdict(v) for k, v in self.matrix_patterns.items()}
            peers = {k: list(q) for k, q in self.peers.items()}
            requests = {k: list(q) for k, q in self.requests.items()}
            consolidated_at = dict(self._consolidated_at)
            blocks = {k: list(v) for k, v in self.block_reads.items()}
            successors = self.successors.to_dict()
            decisions = [dict(d) for d in self.decisions]
            extra = {"block_seconds": dict(self.block_seconds), "link_bps": dict(self.link_bps),
                     "served_gflops": self.served_gflops}
        long_term = {"peers": peer_patterns, "matrices": matrix_patterns, "blocks": blocks,
                     "successors": successors, "decisions": decisions, **extra}
        short_term = {"peers": {k: [[s.at, s.flops, s.seconds, s.ok] for s in q]
                                for k, q in peers.items()},
                      "requests": {k: [list(r) for r in q] for k, q in requests.items()},
                      "consolidated_at": consolidated_at}
        for table, value in (("long_term", long_term), ("short_term", short_term)):
            conn.execute(f"INSERT OR REPLACE INTO {table} VALUES ('memory', ?, ?)",
                         (msgpack.packb(value), now))

    def load(self, conn: sqlite3.Connection) -> None:
        """Restore both memories; a damaged record is ignored (the node relearns)."""
        for table in ("long_term", "short_term"):
            row = conn.execute(f"SELECT value FROM {table} WHERE key='memory'").fetchone()
            if row is None:
                continue
            try:
                value = msgpack.unpackb(row[0])
                with self._lock:
                    self._restore(table, value)
            except (ValueError, TypeError, KeyError, msgpack.UnpackException):
                continue

    def _restore(self, table: str, value: dict) -> None:
        if table == "long_term":
            self.peer_patterns = {k: PeerPattern(**v) for k, v in value["peers"].items()}
            self.matrix_patterns = {k: MatrixPattern(**v) for k, v in value["matrices"].items()}
            self.block_reads = {str(k): [float(v[0]), float(v[1])]
                                for k, v in value.get("blocks", {}).items()}
            if "successors" in value:
                self.successors = SuccessorModel.from_dict(value["successors"])
            self.decisions = [d for d in value.get("decisions", []) if isinstance(d, dict)]
            self.block_seconds = {str(k): float(v)
                                  for k, v in value.get("block_seconds", {}).items()}
            self.link_bps = {str(k): float(v) for k, v in value.get("link_bps", {}).items()}
            served = value.get("served_gflops")
            self.served_gflops = None if served is None else float(served)
            return
        for k, rows in value["peers"].items():
            self.peers[k] = collections.deque((Sample(*r) for r in rows), maxlen=4096)
        for k, rows in value["requests"].items():
            self.requests[k] = collections.deque((tuple(r) for r in rows), maxlen=4096)
        self._consolidated_at = {k: float(v) for k, v in value["consolidated_at"].items()}
