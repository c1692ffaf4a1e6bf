"""Supervision of the daemon's background loops.

A background loop (advert, memory consolidation, pings, repairs, the loop-lag ticker) that
raises used to end silently: the node kept answering while its advert froze or its memory
stopped being saved. The supervisor runs each loop as a task, logs every failure with its
traceback, restarts the loop after a bounded exponential backoff, and keeps per-loop
health that ``sedma status`` shows, so a loop that keeps failing is visible.

The backoff rule is a pure function (:func:`backoff_delay`); the clock and the sleep are
injectable so tests drive failures without waiting.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Awaitable, Callable

log = logging.getLogger("sedma.supervise")

BASE_DELAY = 0.5      # first restart after this many seconds
MAX_DELAY = 60.0      # restarts never wait longer than this
HEALTHY_AFTER = 60.0  # a run this long resets the backoff: the loop had recovered

LoopFactory = Callable[[], Awaitable[None]]


def backoff_delay(consecutive: int, base: float = BASE_DELAY, cap: float = MAX_DELAY) -> float:
    """Seconds before restart number ``consecutive`` (1-based): doubling, capped at ``cap``."""
    if consecutive < 1:
        return 0.0
    return min(cap, base * 2.0 ** min(consecutive - 1, 62))


@dataclass
class LoopHealth:
    """What ``status`` shows about one supervised loop."""

    failures: int = 0          # every failure since start
    consecutive: int = 0       # failures without a healthy run in between
    last_error: str = ""
    last_failure_at: float | None = None   # wall clock
    running: bool = False
    run_started: float = 0.0               # supervisor clock

    def public(self) -> dict:
        return {"failures": self.failures, "consecutive": self.consecutive,
                "last_error": self.last_error, "last_failure_at": self.last_failure_at,
                "running": self.running}


class Supervisor:
    """Runs named loops forever, restarting each after a failure with backoff."""

    def __init__(self, *, base: float = BASE_DELAY, cap: float = MAX_DELAY,
                 healthy_after: float = HEALTHY_AFTER,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.base = base
        self.cap = cap
        self.healthy_after = healthy_after
        self._clock = clock
        self._sleep = sleep
        self.health: dict[str, LoopHealth] = {}
        self._tasks: dict[str, asyncio.Task] = {}

    def start(self, name: str, factory: LoopFactory) -> asyncio.Task:
        """Run ``factory()`` as loop ``name`` until :meth:`stop` (names are unique)."""
        if name in self._tasks:
            raise ValueError(f"loop {name!r} is already supervised")
        self.health[name] = LoopHealth()
        task = asyncio.get_running_loop().create_task(self._supervise(name, factory),
                                                      name=f"loop:{name}")
        self._tasks[name] = task
        return task

    async def _supervise(self, name: str, factory: LoopFactory) -> None:
        health = self.health[name]
        while True:
            started = health.run_started = self._clock()
            health.running = True
            try:
                await factory()
                error = "returned (loops must run until cancelled)"
                log.error("loop %s %s; restarting it", name, error)
            except asyncio.CancelledError:
                health.running = False
                raise
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
                log.exception("loop %s failed; restarting it", name)
            health.running = False
            if self._clock() - started >= self.healthy_after:
                health.consecutive = 0
            health.failures += 1
            health.consecutive += 1
            health.last_error = error[:500]
            health.last_failure_at = time.time()
            await self._sleep(backoff_delay(health.consecutive, self.base, self.cap))

    def report(self) -> dict[str, dict]:
        """Per-loop health for ``status`` (a long healthy run clears ``consecutive``)."""
        now = self._clock()
        for h in self.health.values():
            if h.running and now - h.run_started >= self.healthy_after:
                h.consecutive = 0
        return {name: h.public() for name, h in sorted(self.health.items())}

    def failing(self) -> list[str]:
        """Loops that failed and have not had a healthy run since."""
        self.report()
        return sorted(n for n, h in self.health.items() if h.consecutive)

    async def stop(self, keep: tuple[str, ...] = ()) -> None:
        """Cancel every loop (but those named in ``keep``) and wait for them to end."""
        names = [n for n in self._tasks if n not in keep]
        tasks = [self._tasks.pop(n) for n in names]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
