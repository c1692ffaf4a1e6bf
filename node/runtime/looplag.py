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

The ticker is adaptive (issue 13: idle cost). A 20 ms ticker is 50 wake-ups a second, most
of an idle daemon's CPU, spent watching a loop that has nothing to do. It ticks every
``interval`` while the loop is working -- a tick used more than ``active_cpu`` of CPU --
and for ``linger`` seconds after, then every ``idle_interval``. A slow tick's CPU is the
sum of everything in it, so it still bounds every callback from above; when that sum
exceeds ``idle_max_cpu`` work has started, the sample's CPU is dropped (counted in
``unmeasured``: it says nothing about a single callback) and the ticker goes fast. What
this gives up: a callback that blocks for long in the very first second of work after
``linger`` seconds of quiet is seen as wall lag (and by the stall watchdog when it spans
the tick) but not as loop CPU.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import sys
import threading
import time
import linecache
import traceback
from typing import Callable

from node.runtime.beat import next_beat, process_phase

log = logging.getLogger("sedma.looplag")

INTERVAL = 0.02   # seconds between ticks (short: a tick's CPU then bounds one callback's)
IDLE_INTERVAL = 1.0   # seconds between ticks while the loop has had nothing to do
LINGER = 10.0     # keep ticking fast this long after the last busy tick
ACTIVE_CPU = 0.005    # a tick that used more loop CPU than this means work is under way
IDLE_MAX_CPU = 0.05   # a slow tick above this: work started; its CPU sample is dropped
WINDOW = 60.0     # max lag reported over this many seconds


class LagMonitor:
    """Ticks on the loop and keeps the recent lag samples."""

    def __init__(self, interval: float = INTERVAL, window: float = WINDOW,
                 clock: Callable[[], float] = time.monotonic,
                 idle_interval: float = IDLE_INTERVAL, linger: float = LINGER) -> None:
        self.interval = interval
        self.idle_interval = max(idle_interval, interval)
        self.linger = linger
        self.window = window
        self._clock = clock
        self._samples: collections.deque[tuple[float, float, float | None]] = \
            collections.deque()
        self.worst = 0.0   # since start, seconds
        self.worst_cpu = 0.0
        self.unmeasured = 0   # slow ticks whose CPU was dropped (work started in them)
        self.last_tick = clock()
        self.last_active = self.last_tick   # start fast: start-up is work
        self.due = self.last_tick + interval  # when the pending tick should run

    def next_interval(self, now: float) -> float:
        """Fast while the loop works and ``linger`` seconds after, slow when idle."""
        return self.interval if now - self.last_active < self.linger else self.idle_interval

    def observe(self, expected: float, actual: float, cpu: float | None = 0.0) -> None:
        """Record one tick due at ``expected`` that ran at ``actual``, the loop thread having
        used ``cpu`` seconds of CPU since the previous tick (None: not a bound, dropped)."""
        self.last_tick = actual
        lag = max(0.0, actual - expected)
        self._samples.append((actual, lag, cpu))
        self.worst = max(self.worst, lag)
        if cpu is not None:
            self.worst_cpu = max(self.worst_cpu, cpu)
        while self._samples and self._samples[0][0] < actual - self.window:
            self._samples.popleft()

    def tick(self, interval: float, expected: float, actual: float, cpu: float) -> None:
        """One tick of the ticker that slept ``interval``: record it, pick the pace."""
        slow = interval > self.interval
        if slow and cpu > IDLE_MAX_CPU:
            self.unmeasured += 1
            self.observe(expected, actual, None)
        else:
            self.observe(expected, actual, cpu)
        if cpu > (IDLE_MAX_CPU if slow else ACTIVE_CPU):
            self.last_active = actual

    async def run(self) -> None:
        self.last_tick = self.last_active = self._clock()   # the watchdog measures from here
        loop = asyncio.get_running_loop()
        while True:
            now = self._clock()
            interval = self.next_interval(now)
            delay = interval
            if interval > self.interval:   # idle: tick on the daemon's shared beat
                at = loop.time()
                delay = next_beat(at, interval, process_phase()) - at
            self.due = now + delay
            cpu = time.thread_time()
            await asyncio.sleep(delay)
            self.tick(interval, self.due, self._clock(), time.thread_time() - cpu)

    def report(self) -> dict:
        lags = [lag for _, lag, _ in self._samples]
        cpus = [cpu for _, _, cpu in self._samples if cpu is not None]
        return {"last_ms": lags[-1] * 1000 if lags else 0.0,
                "max_ms": max(lags, default=0.0) * 1000, "window_s": self.window,
                "worst_ms": self.worst * 1000,
                "max_cpu_ms": max(cpus, default=0.0) * 1000,
                "worst_cpu_ms": self.worst_cpu * 1000,
                "interval_ms": self.next_interval(self._clock()) * 1000,
                "unmeasured": self.unmeasured}


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

    def _late(self) -> float:
        """How long past its due time the loop's pending tick is (negative: not due)."""
        due = max(self.monitor.due, self.monitor.last_tick + self.monitor.interval)
        return time.monotonic() - due

    def _pause(self) -> float:
        """Sleep until the pending tick would be ``threshold`` late, checking at least
        every half threshold: one wake-up per slow tick when idle, not eight a second."""
        return max(self.threshold / 2, -self._late() + self.threshold / 2)

    def stop(self) -> None:
        self._stop.set()

    def _watch(self) -> None:
        reported = None
        while not self._stop.wait(self._pause()):
            stuck_since = self.monitor.last_tick
            if self._late() < self.threshold:
                continue
            if reported == stuck_since:
                continue
            reported = stuck_since
            frame = sys._current_frames().get(self.loop_thread)
            if frame is not None:
                # Only the 8 innermost frames are looked up: formatting the whole stack
                # read every file on it (asyncio, runpy, the cli...) into linecache for
                # good, ~0.8 MB on a daemon that reported stalls in a start-up storm.
                cached = set(linecache.cache)
                stack = "".join(traceback.format_list(traceback.extract_stack(frame, limit=8)))
                # and the files read for it leave the cache again: each report kept up
                # to ~0.6 MB of source lines for the daemon's life (issue 13)
                for name in set(linecache.cache) - cached:
                    linecache.cache.pop(name, None)
                log.warning("event loop stuck for over %.0f ms in:\n%s",
                            self.threshold * 1000, stack)
