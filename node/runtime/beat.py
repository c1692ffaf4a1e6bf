"""One shared beat for the daemon's periodic loops (issue 13: idle cost).

Each background loop (advert check, RTT ping, dashboard sampler, the idle lag ticker,
reconciliation, consolidation, ...) used to sleep its own period from whenever it last
ran, so their wake-ups drifted apart: every one was an event-loop wake-up of its own.
Sleeping until the next multiple of the period on the loop's clock puts every loop whose
period divides another's on the same instants, so the loop runs them in one wake-up (a
timer wheel with a one-second slot, for free). The loops stay separate tasks, each
supervised and failing on its own.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Callable, Generic, TypeVar

T = TypeVar("T")


#: A beat closer than this is skipped for the one after it.
MIN_GAP = 0.1


def next_beat(now: float, period: float) -> float:
    """The next multiple of ``period`` after ``now``, at least ``MIN_GAP`` (or half a
    period, if shorter) away: a timer that fires a hair early (the loop's clock has
    millisecond ticks) waits for the following beat instead of firing twice."""
    beat = (math.floor(now / period) + 1) * period
    return beat + period if beat - now < min(MIN_GAP, period / 2) else beat


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
