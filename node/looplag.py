"""Event-loop lag: how late a timer that should fire every ``interval`` actually fires.

Anything heavy run on the event loop (numpy over GiBs, a big file read) shows up here as
lag, and lag is what makes peers suspect a node that is merely busy. The daemon runs
:meth:`LagMonitor.run` as a supervised loop and ``status`` reports the numbers, so a test
(or an operator) can see that a 1 GiB job does not stall the loop.
"""

from __future__ import annotations

import asyncio
import collections
import time
from typing import Callable

INTERVAL = 0.05   # seconds between ticks
WINDOW = 60.0     # max lag reported over this many seconds


class LagMonitor:
    """Ticks on the loop and keeps the recent lag samples."""

    def __init__(self, interval: float = INTERVAL, window: float = WINDOW,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.window = window
        self._clock = clock
        self._samples: collections.deque[tuple[float, float]] = collections.deque()
        self.worst = 0.0   # since start, seconds

    def observe(self, expected: float, actual: float) -> None:
        """Record one tick that was due at ``expected`` and ran at ``actual``."""
        lag = max(0.0, actual - expected)
        self._samples.append((actual, lag))
        self.worst = max(self.worst, lag)
        while self._samples and self._samples[0][0] < actual - self.window:
            self._samples.popleft()

    async def run(self) -> None:
        while True:
            expected = self._clock() + self.interval
            await asyncio.sleep(self.interval)
            self.observe(expected, self._clock())

    def report(self) -> dict:
        lags = [lag for _, lag in self._samples]
        return {"last_ms": lags[-1] * 1000 if lags else 0.0,
                "max_ms": max(lags, default=0.0) * 1000, "window_s": self.window,
                "worst_ms": self.worst * 1000}
