"""Lifeguard local health: how much a node should distrust its own failure verdicts.

A node that is itself slow (overloaded, GC pauses, a congested uplink) misses acks from
healthy peers and would wrongly suspect them. Lifeguard (Dadgar et al., 2018) has each node
keep a score: missed acks and nacks raise it, successful probes lower it, and having to
refute a suspicion about oneself raises it. Probe intervals and timeouts are multiplied by
``score + 1``, so an unhealthy node probes less often and waits longer before blaming others.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Awareness:
    """A score in ``[0, max_multiplier)`` that scales timeouts by ``score + 1``."""

    max_multiplier: int
    score: int = 0

    def apply_delta(self, delta: int) -> None:
        """Move the score by ``delta``, clamped to the allowed range."""
        self.score = min(max(self.score + delta, 0), self.max_multiplier - 1)

    def scale(self, timeout: float) -> float:
        """``timeout`` stretched by the current health score."""
        return timeout * (self.score + 1)
