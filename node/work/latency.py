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

An estimate not refreshed for ``stale_s`` counts as unknown: the choice then falls back
to the long-term figures, so a holder that was slow once is tried again instead of being
avoided forever. Sans I/O: observations and a clock in, seconds per GFLOP out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

DECAY_S = 1.0     # time constant of the moving average (several requests on a busy mesh)
STALE_S = 5.0     # an estimate older than this is not used

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

    def speeds(self, nodes: list[str], now: float) -> dict[str, float]:
        """GFLOP/s of each of ``nodes`` with a fresh estimate (the others are left out)."""
        return {n: 1.0 / self._cost[n] for n in nodes
                if n in self._cost and now - self._at[n] <= self.stale_s and self._cost[n] > 0}

    def forget(self, node: str) -> None:
        self._cost.pop(node, None)
        self._at.pop(node, None)
