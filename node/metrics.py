"""The four numbers the daemon reports (docs/yardsticks.md): memory utilisation efficiency, resource
utilisation, communication latency (p50/p99) and throughput."""

from __future__ import annotations

import collections
import os
import time

import numpy as np


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


class Metrics:
    """Rolling counters; cheap to update on hot paths, summarised on demand."""

    def __init__(self, window: float = 60.0) -> None:
        self.window = window
        self.completions: collections.deque[float] = collections.deque(maxlen=100_000)
        self.latencies_ms: collections.deque[float] = collections.deque(maxlen=4096)
        self.live_bytes = 0

    def completed(self, n: int = 1) -> None:
        now = time.monotonic()
        self.completions.extend([now] * n)

    def rtt(self, ms: float) -> None:
        self.latencies_ms.append(ms)

    def throughput(self) -> float:
        lo = time.monotonic() - self.window
        return sum(1 for t in self.completions if t > lo) / self.window

    def latency(self) -> dict[str, float | None]:
        if not self.latencies_ms:
            return {"p50_ms": None, "p99_ms": None}
        arr = np.fromiter(self.latencies_ms, dtype=np.float64)
        return {"p50_ms": float(np.percentile(arr, 50)), "p99_ms": float(np.percentile(arr, 99))}

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
