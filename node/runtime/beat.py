"""One shared beat for the daemon's periodic loops (issue 13: idle cost).

Each background loop (advert check, RTT ping, dashboard sampler, the idle lag ticker,
reconciliation, consolidation, ...) used to sleep its own period from whenever it last
ran, so their wake-ups drifted apart: every one was an event-loop wake-up of its own.
Sleeping until the next multiple of the period on the loop's clock puts every loop whose
period divides another's on the same instants, so the loop runs them in one wake-up (a
timer wheel with a one-second slot, for free). The loops stay separate tasks, each
supervised and failing on its own.

The beats fall at ``phase + k * period``, ``phase`` being this process's own offset
(:func:`process_phase`, drawn once, uniform over the one-second base period). The
membership puts its SWIM probe on the same instants (``MembershipConfig.probe_phase``),
so a daemon wakes once a period for both; and since each daemon has its own phase, the
daemons of one machine (one monotonic clock) stay spread over the period. With a phase
shared by everyone (the multiples of the period on a clock all processes share), 100
daemons on one machine probed, acked and ran their beat work at the same instant on two
cores, and acks missed their timeout: false suspicions (bench/README.md, idle4).
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from typing import Callable, Generic, TypeVar

T = TypeVar("T")


#: A beat closer than this is skipped for the one after it.
MIN_GAP = 0.1
#: The period every other one is a multiple of (the advert, lag and dashboard loops',
#: and the SWIM probe interval's): a process's phase is drawn over it.
BASE_PERIOD = 1.0

_phase: float | None = None


def next_beat(now: float, period: float, phase: float = 0.0) -> float:
    """The next instant ``phase + k * period`` after ``now``, at least ``MIN_GAP`` (or
    half a period, if shorter) away: a timer that fires a hair early (the loop's clock
    has millisecond ticks) waits for the following beat instead of firing twice.

    Computed from ``now`` alone, never from the previous beat, so late wake-ups do not
    accumulate: the thousandth beat is still on the grid."""
    beat = phase + (math.floor((now - phase) / period) + 1) * period
    return beat + period if beat - now < min(MIN_GAP, period / 2) else beat


def pick_phase(rng: random.Random, period: float = BASE_PERIOD) -> float:
    """A phase uniform over ``period``: where in each period this process's beats fall."""
    return rng.uniform(0.0, period)


def process_phase() -> float:
    """This process's beat phase, drawn once (at first use) and the same ever after:
    the daemon's loops and its SWIM probes (``MembershipConfig.probe_phase``) share it."""
    global _phase
    if _phase is None:
        _phase = pick_phase(random.Random())
    return _phase


async def sleep_to_beat(period: float) -> None:
    """Sleep until the next beat of ``period`` seconds (at this process's phase) on the
    running loop's clock: the clock the mesh's timers run on too (``Mesh.clock``)."""
    loop = asyncio.get_running_loop()
    now = loop.time()
    await asyncio.sleep(next_beat(now, period, process_phase()) - now)


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
