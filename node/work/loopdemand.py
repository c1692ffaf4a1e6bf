"""How much of the time this daemon's event loop wanted to run (the rebalancer's view of
per-request work).

Why: a small block's requests cost its holder little compute and much event-loop work
(receiving, decrypting and decoding X, encoding the reply). The compute load (tasks per
core) and the block's compute time miss that, so a hot small block whose holder's loop
was saturated looked cool and its replica was retired (bench/README, skew). Profiling the
static skew mesh showed the hot holder's loop thread ~90 % busy while its compute
threads were ~25 % busy.

Measured as the loop thread's *runnable* fraction: time on a CPU plus time waiting in
the run queue for one (``/proc/self/task/TID/schedstat``, Linux), over wall time. Only
CPU time would read low on a machine whose cores are shared (a starved loop gets little
CPU although it never idles); runnable time counts the demand. Without schedstat it
falls back to the thread's CPU time. Smoothed over a few samples (one a second).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

ALPHA = 0.3     # weight of one sample (about 3 s of memory at one sample a second)


class LoopDemand:
    """Runnable fraction of one thread (create it on that thread), smoothed."""

    def __init__(self, clock=time.monotonic) -> None:
        self._clock = clock
        self._path = Path(f"/proc/self/task/{threading.get_native_id()}/schedstat")
        self._last = (clock(), self._runnable_s())
        self.value = 0.0

    def _runnable_s(self) -> float:
        try:
            run_ns, wait_ns = self._path.read_text().split()[:2]
            return (int(run_ns) + int(wait_ns)) / 1e9
        except (OSError, ValueError):
            return time.thread_time()      # same thread: it is the caller's

    def sample(self) -> float:
        """Fold in the time since the last sample; the smoothed fraction (0..1)."""
        now, busy = self._clock(), self._runnable_s()
        wall = now - self._last[0]
        if wall > 0:
            frac = min(max((busy - self._last[1]) / wall, 0.0), 1.0)
            self.value = ALPHA * frac + (1 - ALPHA) * self.value
        self._last = (now, busy)
        return self.value
