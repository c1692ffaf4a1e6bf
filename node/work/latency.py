"""What a request to each block holder costs right now, as this coordinator measured it.

Why: the replica choice ranks a block's holders by predicted finish time. The inputs it
had were the long-term learned speed (an average over minutes) and the holder's
advertised load (a snapshot taken once a second, a second old when it arrives). With
several coordinators in the mesh all of them read the same snapshot and send their next
requests to the same replica while the others idle (herding on stale load information);
with ~1 ms computes the snapshot is mostly noise anyway.

What every coordinator does see, per request, is how long its last requests to each
holder took end to end: the holder's queue (everyone's requests, not only ours), its
compute and the transfer. This is the "peak EWMA" cost of Finagle's and linkerd's load
balancers: an exponentially weighted moving average over time that jumps up at once to
a slower observation (a queue building up shows immediately) and decays slowly, times
the requests this coordinator already has in flight there plus one.

Exploration (why :meth:`PeakEwma.costs` and :func:`order_holders`, not the raw figures):
a holder this coordinator never tried has no estimate. It used to be ranked by the
long-term score plus a hop, a different quantity (a minutes-long average over every kind
of share, divided by the advertised load, against one request's end-to-end time), and
ranked behind the holder already in use, so it was never tried, so it never got an
estimate (a hot block's new replica took 12 of 64 reads/s, bench/README). Now, as in
Finagle's PeakEWMA, an estimate relaxes with its age (toward the best fresh estimate,
not toward zero: a slow holder is not mistaken for a fast one), and a holder without a
fresh estimate counts as a little faster than the best known one, so it is tried on the
next request. The exploration is bounded: a holder that is not the best gets at most one
probe per ``stale_s`` from each coordinator (after a probe its estimate is fresh again),
and a failed request marks the holder last for ``stale_s``. When no holder has a fresh
estimate the long-term scores rank them, never mixed with the per-request figures.

An estimate not refreshed for ``stale_s`` counts as unknown. Sans I/O: observations and
a clock in, seconds per GFLOP out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from node.work.placement import by_predicted_finish

DECAY_S = 1.0     # time constant of the moving average (several requests on a busy mesh)
STALE_S = 5.0     # an estimate older than this is not used
EXPLORE = 0.1     # a holder without a fresh estimate counts as this much faster than the best
NOMINAL_FLOPS = 1e8   # a request whose work the caller did not give (ranking is per GFLOP)

#: Above this many holders remembered, each observation drops the stale ones.
PRUNE_ABOVE = 64


@dataclass
class PeakEwma:
    """Seconds per GFLOP of recent requests to each holder (end to end)."""

    decay_s: float = DECAY_S
    stale_s: float = STALE_S
    _cost: dict[str, float] = field(default_factory=dict)
    _at: dict[str, float] = field(default_factory=dict)

    def observe(self, node: str, flops: float, seconds: float, now: float) -> None:
        """A request of ``flops`` to ``node`` took ``seconds`` (success only)."""
        if flops <= 0 or seconds <= 0:
            return
        x = seconds / (flops / 1e9)
        prev, at = self._cost.get(node), self._at.get(node, now)
        if prev is None or x > prev or now - at > self.stale_s:
            self._cost[node] = x                   # peak: a slower request counts at once
        else:
            w = math.exp(-max(now - at, 0.0) / self.decay_s)
            self._cost[node] = w * prev + (1 - w) * x
        self._at[node] = now
        if len(self._at) > PRUNE_ABOVE:
            self.prune(now)

    def prune(self, now: float) -> None:
        """Drop holders not heard from within ``stale_s``: :meth:`speeds` ignores them
        anyway, and nodes that left the mesh must not grow this for the daemon's life."""
        for n in [n for n, at in self._at.items() if now - at > self.stale_s]:
            self.forget(n)

    def failed(self, node: str, now: float) -> None:
        """A request to ``node`` failed: it ranks last until its estimate goes stale (then
        it is probed again, like a holder never tried)."""
        self._cost[node] = math.inf
        self._at[node] = now

    def costs(self, nodes: list[str], now: float) -> dict[str, float]:
        """Seconds per GFLOP to rank each of ``nodes`` by now; {} when none has a fresh
        estimate (the caller then ranks by long-term figures).

        A fresh estimate relaxes toward the best fresh one with its age (time constant
        ``decay_s``): a holder whose last reply was slow is tried again once the others'
        replies, kept fresh by use, grow slower than that relaxed figure; it never looks
        better than the best, so it is not tried just for being idle. A holder without a
        fresh estimate counts as ``EXPLORE`` faster than the best: the next request probes it.
        """
        fresh = {n: self._cost[n] for n in nodes
                 if n in self._cost and now - self._at[n] <= self.stale_s}
        finite = [c for c in fresh.values() if c < math.inf]
        if not finite:
            return {}
        best = min(finite)
        out = {}
        for n in nodes:
            if n not in fresh:
                out[n] = best * (1 - EXPLORE)
            elif fresh[n] == math.inf:
                out[n] = math.inf
            else:
                w = math.exp(-max(now - self._at[n], 0.0) / self.decay_s)
                out[n] = best + (fresh[n] - best) * w
        return out

    def speeds(self, nodes: list[str], now: float) -> dict[str, float]:
        """GFLOP/s of each of ``nodes`` with a fresh estimate (the others are left out)."""
        return {n: 1.0 / self._cost[n] for n in nodes
                if n in self._cost and now - self._at[n] <= self.stale_s
                and 0 < self._cost[n] < math.inf}

    def forget(self, node: str) -> None:
        self._cost.pop(node, None)
        self._at.pop(node, None)


def order_holders(live: list[str], costs: dict[str, float], long_term: dict[str, float],
                  inflight: dict[str, int], flops: float,
                  hop_s: dict[str, float] | None = None) -> list[str]:
    """``live`` holders by predicted finish time, soonest first.

    ``costs``: :meth:`PeakEwma.costs` (seconds per GFLOP, end to end, exploration folded
    in); when it is empty, ``long_term`` (the scorer's GFLOP/s) and ``hop_s`` (a remote
    holder's round trip, which the long-term speed of a share does not separate out)
    rank them instead. The two are never mixed: they are not the same quantity.
    ``inflight``: this coordinator's requests outstanding per holder.
    """
    flops = flops if flops > 0 else NOMINAL_FLOPS
    if not costs:
        return by_predicted_finish(live, long_term, inflight, flops, hop_s)
    # costs are > 0 (observe ignores zero times); a failed holder's inf ranks it last
    speeds = {n: 1.0 / c for n, c in costs.items()}
    return by_predicted_finish(live, speeds, inflight, flops)
