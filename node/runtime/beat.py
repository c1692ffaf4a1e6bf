"""One shared beat for the daemon's periodic loops (issue 13: idle cost).

Each background loop (advert check, RTT ping, dashboard sampler, the idle lag ticker,
reconciliation, consolidation, ...) used to sleep its own period from whenever it last
ran, so their wake-ups drifted apart: every one was an event-loop wake-up of its own.
Sleeping until the next multiple of the period on the loop's clock puts every loop whose
period divides another's on the same instants, so the loop runs them in one wake-up (a
timer wheel with a one-second slot, for free). The loops stay separate tasks, each
supervised and failing on its own. The membership's probes run on the same grid
(:mod:`protocol.grid`), so an idle node's probe costs no wake-up of its own.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Callable, Generic, TypeVar

from protocol.grid import MIN_GAP, next_beat   # noqa: F401  (the grid rule, shared)

T = TypeVar("T")


async def sleep_to_beat(period: float) -> None:
    """Sleep until the next beat of ``period`` seconds on the running loop's clock."""
    loop = asyncio.get_running_loop()
    now = loop.time()
    await asyncio.sleep(next_beat(now, period) - now)


class Every(Generic[T]):
    """A value recomputed at most once per ``period`` by a loop that runs more often.

    The advertise loop runs every beat so that load reaches placement within a second,
    but the figures only ``status`` reads (RSS, throughput, utilisation, RTT
    percentiles) need no such resolution: recomputing them every beat was about a third
    of the loop's work (issue 13: idle cost).
    """

    def __init__(self, period: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.period = period
        self._clock = clock
        self._at = -math.inf
        self._value: T | None = None

    def get(self, compute: Callable[[], T]) -> T:
        """The remembered value, or ``compute()`` when a period has passed since it was
        computed (or it never was)."""
        now = self._clock()
        if now - self._at >= self.period:
            self._value = compute()
            self._at = now
        return self._value   # type: ignore[return-value]
