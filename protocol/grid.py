"""The one-second grid that an idle daemon's timers share (issue 13: idle cost).

An idle daemon's CPU goes mostly to waking up: every wake-up runs the event loop and
Python code with caches gone cold, a few hundred microseconds before any work. Timers
that fire on the same instants cost one wake-up between them. So the daemon's periodic
loops sleep to the next multiple of their period on the loop's (monotonic) clock
(:mod:`node.runtime.beat`), and the membership schedules its probes on the same grid
(:mod:`protocol.membership`): the probe and the loops' beat are one wake-up.

It lives in ``protocol`` because the sans-I/O membership uses it; it is a pure function
of the time it is given, so the simulator's virtual clock drives it like the real one.
"""

from __future__ import annotations

import math

#: A beat closer than this is skipped for the one after it.
MIN_GAP = 0.1


def next_beat(now: float, period: float) -> float:
    """The next multiple of ``period`` after ``now``, at least ``MIN_GAP`` (or half a
    period, if shorter) away: a timer that fires a hair early (the loop's clock has
    millisecond ticks) waits for the following beat instead of firing twice."""
    beat = (math.floor(now / period) + 1) * period
    return beat + period if beat - now < min(MIN_GAP, period / 2) else beat


#: A probe period on the grid is never shorter than this fraction of the period: the
#: probe's timeout and its indirect checks must fit in it.
LEAST_PERIOD = 0.75


def grid_after(now: float, period: float, least: float = LEAST_PERIOD) -> float:
    """The first multiple of ``period`` at least ``least * period`` after ``now``.

    A timer re-armed with this from its own firing (a few milliseconds past a grid
    point) stays on the grid with a period of ``period`` instead of drifting by its
    lateness every round; one started off the grid joins it after one period of
    ``least`` to ``1 + least`` periods."""
    return math.ceil((now + least * period) / period - 1e-9) * period
