"""How much of the time this daemon's event loop was working (the rebalancer's view of
per-request work).

Why: a small block's requests cost its holder little compute and much event-loop work
(receiving, decrypting and decoding X, encoding the reply). The compute load (tasks per
core) and the block's compute time miss that, so a hot small block whose holder's loop
was saturated looked cool and its replica was retired (bench/README, skew). Profiling the
static skew mesh showed the hot holder's loop thread ~90 % busy while its compute
threads were ~25 % busy.

Measured as the loop thread's CPU time over wall time. Not its *runnable* time (CPU plus
run-queue wait, from schedstat), although that counts demand a starved loop could not
get: on a machine whose cores are shared by many processes every loop waits in the run
queue, so every node read 70-80 % busy at one request a second and replicas went to any
node at all, the deliberately slow one included (a real-daemon test caught it). CPU time
under-reads on such a machine, which only makes the rule act later. Smoothed over a few
samples (one a second).
"""

from __future__ import annotations

import time

ALPHA = 0.3     # weight of one sample (about 3 s of memory at one sample a second)


class LoopDemand:
    """CPU fraction of the thread that calls :meth:`sample` (the event loop's), smoothed."""

    def __init__(self, clock=time.monotonic, cpu=time.thread_time) -> None:
        self._clock, self._cpu = clock, cpu
        self._last = (clock(), cpu())
        self.value = 0.0

    def sample(self) -> float:
        """Fold in the time since the last sample; the smoothed fraction (0..1)."""
        now, busy = self._clock(), self._cpu()
        wall = now - self._last[0]
        if wall > 0:
            frac = min(max((busy - self._last[1]) / wall, 0.0), 1.0)
            self.value = ALPHA * frac + (1 - ALPHA) * self.value
        self._last = (now, busy)
        return self.value
