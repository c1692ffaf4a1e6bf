"""The four numbers the daemon reports (docs/yardsticks.md): memory utilisation efficiency,
resource utilisation, communication latency (p50/p99) and throughput; plus the running
totals the Prometheus collector (:mod:`node.http.collector`) and the dashboard read at
scrape time.

Everything here is updated on the event loop only (callers hop back from compute threads
before they record), so no lock is needed.
"""

from __future__ import annotations

import bisect
import collections
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable


def resident_memory() -> int:
    """Resident set size of this process in bytes (Linux /proc; 0 where unavailable)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def total_memory() -> int:
    """Physical memory of the machine in bytes."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 0


def percentile(ordered: list[float], q: float) -> float:
    """The ``q``-th percentile of ascending ``ordered`` (non-empty), bit for bit what
    ``np.percentile`` returns with its default linear method (including its choice of
    end to interpolate from), without numpy: the RTT percentiles are the only numbers an
    idle daemon computes, and importing numpy for them cost ~10 MB of RSS (issue 13)."""
    last = len(ordered) - 1
    virtual = last * (q / 100)
    if virtual >= last:
        return ordered[last]
    lo = math.floor(virtual)
    gamma = virtual - lo
    a, b = ordered[lo], ordered[lo + 1]
    diff = b - a
    return b - diff * (1 - gamma) if gamma >= 0.5 else a + diff * gamma


#: Requests that carry work (the dashboard's rate and latency plot); status polls and
#: job waits are counted in the totals but would only blur those.
WORK_REQUESTS = frozenset({"infer", "submit", "deploy"})

#: Upper bounds (seconds) of the request latency histogram buckets.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0, 30.0, 60.0, 300.0)


@dataclass
class Histogram:
    """Cumulative-bucket latency histogram in Prometheus' shape (last bucket is +Inf)."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    total: float = 0.0

    def observe(self, seconds: float) -> None:
        for i, bound in enumerate(LATENCY_BUCKETS):
            if seconds <= bound:
                self.counts[i] += 1
                break
        else:
            self.counts[-1] += 1
        self.total += seconds

    def cumulative(self) -> list[tuple[str, int]]:
        """``[(le, count <= le), ...]`` ending with ``+Inf``."""
        out, running = [], 0
        for bound, n in zip([*map(str, LATENCY_BUCKETS), "+Inf"], self.counts):
            running += n
            out.append((bound, running))
        return out


@dataclass
class RequestSample:
    """One finished local API request, for the dashboard's recent-latency views."""

    at: float
    kind: str
    seconds: float
    ok: bool


@dataclass
class CrossbarTotals:
    """Programming and reads of this node's crossbars since start."""

    programs: int = 0
    program_seconds: float = 0.0
    programmed_bytes: int = 0
    reads: int = 0


class Metrics:
    """Rolling counters; cheap to update on hot paths, summarised on demand."""

    def __init__(self, window: float = 60.0) -> None:
        self.window = window
        self.completions: collections.deque[float] = collections.deque(maxlen=100_000)
        self.latencies_ms: collections.deque[float] = collections.deque(maxlen=4096)
        self._rtt_sorted: list[float] = []   # the same samples in order: percentiles in O(1)
        self._rtt_samples = 0           # samples ever added (the latency cache's key)
        self._latency_at = -1
        self._latency: dict[str, float | None] = {}
        self.live_bytes = 0
        #: (request kind, "ok" | "error") -> count, since start
        self.request_totals: collections.Counter[tuple[str, str]] = collections.Counter()
        self.request_latency: dict[str, Histogram] = {}
        self.recent_requests: collections.deque[RequestSample] = collections.deque(maxlen=4096)
        #: membership event kind (joined, suspect, dead, ...) -> count, since start
        self.member_events: collections.Counter[str] = collections.Counter()
        self.crossbar = CrossbarTotals()

    def request_done(self, kind: str, seconds: float, ok: bool) -> None:
        """A local API request finished (``ok`` False: it answered with an error)."""
        self.request_totals[(kind, "ok" if ok else "error")] += 1
        self.request_latency.setdefault(kind, Histogram()).observe(seconds)
        if kind in WORK_REQUESTS:
            self.recent_requests.append(RequestSample(time.monotonic(), kind, seconds, ok))

    def timed(self, dispatch: Callable[[Any], Awaitable[Any]]) -> Callable[[Any], Awaitable[Any]]:
        """Wrap the local API's dispatcher so every request is counted and timed."""
        async def dispatch_timed(request: Any) -> Any:
            start = time.perf_counter()
            ok = False
            try:
                value = await dispatch(request)
                ok = True
                return value
            finally:
                kind = getattr(type(request), "TAG", type(request).__name__)
                self.request_done(kind.removeprefix("api."), time.perf_counter() - start, ok)
        return dispatch_timed

    def member_event(self, event: object) -> None:
        """Membership hook: count each change by kind (suspicions, deaths, joins)."""
        self.member_events[getattr(event, "kind", "unknown")] += 1

    def programmed(self, nbytes: int, seconds: float) -> None:
        self.crossbar.programs += 1
        self.crossbar.program_seconds += seconds
        self.crossbar.programmed_bytes += nbytes

    def read(self, n: int = 1) -> None:
        self.crossbar.reads += n

    def completed(self, n: int = 1) -> None:
        """Count ``n`` completions now; stamps older than the window are dropped here, so
        the deque holds one window's worth, not 100,000 stamps kept for hours (the soak's
        slow RSS growth) and scanned on every ``throughput()`` call."""
        now = time.monotonic()
        self.completions.extend([now] * n)
        horizon = now - self.window
        while self.completions and self.completions[0] <= horizon:
            self.completions.popleft()

    def rtt(self, ms: float) -> None:
        # Kept sorted as samples come and go (a bisect and a short memmove, microseconds):
        # sorting 4096 samples in Python on every recompute took ~1 ms a second.
        if len(self.latencies_ms) == self.latencies_ms.maxlen:
            del self._rtt_sorted[bisect.bisect_left(self._rtt_sorted, self.latencies_ms[0])]
        self.latencies_ms.append(ms)
        bisect.insort(self._rtt_sorted, ms)
        self._rtt_samples += 1

    def throughput(self) -> float:
        lo = time.monotonic() - self.window
        return sum(1 for t in self.completions if t > lo) / self.window

    def latency(self) -> dict[str, float | None]:
        """p50 and p99 of the RTT samples; recomputed only when a sample came in (the
        advert reads this every second, and percentiles over 4096 samples were most of
        an idle daemon's advert check)."""
        if not self.latencies_ms:
            return {"p50_ms": None, "p99_ms": None}
        if self._latency_at != self._rtt_samples:
            p50, p99 = percentile(self._rtt_sorted, 50), percentile(self._rtt_sorted, 99)
            self._latency = {"p50_ms": float(p50), "p99_ms": float(p99)}
            self._latency_at = self._rtt_samples
        return dict(self._latency)

    def summary(self, useful_bytes: int, utilisation: float) -> dict:
        rss = resident_memory()
        return {
            "memory_utilisation_efficiency": (useful_bytes + self.live_bytes) / rss if rss else None,
            "resource_utilisation": utilisation,
            "communication_latency": self.latency(),
            "throughput_per_s": self.throughput(),
            "resident_bytes": rss,
            "useful_bytes": useful_bytes + self.live_bytes,
        }
