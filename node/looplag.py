"""Event-loop lag: how late a timer that should fire every ``interval`` actually fires.

Anything heavy run on the event loop (numpy over GiBs, a big file read) shows up here as
lag, and lag is what makes peers suspect a node that is merely busy. The daemon runs
:meth:`LagMonitor.run` as a supervised loop and ``status`` reports the numbers, so a test
(or an operator) can see that a 1 GiB job does not stall the loop.

Two numbers per tick. *Wall lag* is what peers feel, but on a loaded machine it also counts
time the OS did not run the process at all. *Loop CPU* is the CPU time the loop thread
itself spent between two ticks: every callback in between ran inside it, so if it stays
under X ms, no single callback (numpy on the loop, a big copy, a page-faulting read) took
X ms of CPU -- which is what this code controls, whatever else the machine is doing.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import sys
import threading
import time
import traceback
from typing import Callable

log = logging.getLogger("sedma.looplag")

INTERVAL = 0.02   # seconds between ticks (short: a tick's CPU then bounds one callback's)
WINDOW = 60.0     # max lag reported over this many seconds


class LagMonitor:
    """Ticks on the loop and keeps the recent lag samples."""

    def __init__(self, interval: float = INTERVAL, window: float = WINDOW,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.window = window
        self._clock = clock
        self._samples: collections.deque[tuple[float, float, float]] = collections.deque()
        self.worst = 0.0   # since start, seconds
        self.worst_cpu = 0.0
        self.last_tick = clock()

    def observe(self, expected: float, actual: float, cpu: float = 0.0) -> None:
        """Record one tick due at ``expected`` that ran at ``actual``, the loop thread having
        used ``cpu`` seconds of CPU since the previous tick."""
        self.last_tick = actual
        lag = max(0.0, actual - expected)
        self._samples.append((actual, lag, cpu))
        self.worst = max(self.worst, lag)
        self.worst_cpu = max(self.worst_cpu, cpu)
        while self._samples and self._samples[0][0] < actual - self.window:
            self._samples.popleft()

    async def run(self) -> None:
        self.last_tick = self._clock()   # the watchdog measures from here, not from start-up
        while True:
            expected = self._clock() + self.interval
            cpu = time.thread_time()
            await asyncio.sleep(self.interval)
            self.observe(expected, self._clock(), time.thread_time() - cpu)

    def report(self) -> dict:
        lags = [lag for _, lag, _ in self._samples]
        cpus = [cpu for _, _, cpu in self._samples]
        return {"last_ms": lags[-1] * 1000 if lags else 0.0,
                "max_ms": max(lags, default=0.0) * 1000, "window_s": self.window,
                "worst_ms": self.worst * 1000,
                "max_cpu_ms": max(cpus, default=0.0) * 1000,
                "worst_cpu_ms": self.worst_cpu * 1000}


class StallReporter:
    """A watchdog thread that logs where the loop thread is stuck when it stops ticking.

    Lag numbers say *that* the loop stalled; this says *where*, which is what a fix needs.
    It only reads the monitor's last tick time and the loop thread's current stack.
    """

    def __init__(self, monitor: LagMonitor, threshold: float = 0.25,
                 loop_thread: int | None = None) -> None:
        self.monitor = monitor
        self.threshold = threshold
        self.loop_thread = loop_thread or threading.get_ident()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="sedma-stall-watch",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _watch(self) -> None:
        reported = None
        while not self._stop.wait(self.threshold / 2):
            stuck_since = self.monitor.last_tick
            if time.monotonic() - stuck_since - self.monitor.interval < self.threshold:
                continue
            if reported == stuck_since:
                continue
            reported = stuck_since
            frame = sys._current_frames().get(self.loop_thread)
            if frame is not None:
                stack = "".join(traceback.format_stack(frame)[-8:])
                log.warning("event loop stuck for over %.0f ms in:\n%s",
                            self.threshold * 1000, stack)
