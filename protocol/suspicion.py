"""A suspicion timer that shrinks as independent peers confirm the suspicion (Lifeguard).

When a member is first suspected we wait up to ``max_timeout`` for it to refute. Each
*distinct* peer that independently suspects it too is evidence that the suspect really is
down (and that the suspicion is not just our own slowness), so the timeout drops
logarithmically towards ``min_timeout`` once ``k`` confirmations arrived. This is the
formula of HashiCorp memberlist's ``suspicion.go``::

    frac    = log(confirmations + 1) / log(k + 1)
    timeout = max(min, max - frac * (max - min))
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


def suspicion_timeout(mult: int, n: int, interval: float) -> float:
    """Minimum suspicion timeout: grows with log10 of the cluster size, like memberlist."""
    node_scale = max(1.0, math.log10(max(1.0, float(n))))
    return mult * node_scale * interval


@dataclass
class Suspicion:
    """Tracks confirmations for one suspected member and the resulting deadline.

    ``origin`` is the peer whose accusation started the timer; it cannot confirm itself.
    """

    start: float
    min_timeout: float
    max_timeout: float
    k: int
    origin: str = ""
    confirmers: set[str] = field(default_factory=set)

    @property
    def deadline(self) -> float:
        """The absolute time at which the suspect is declared dead."""
        n = len(self.confirmers)
        if self.k < 1 or self.max_timeout <= self.min_timeout:
            return self.start + self.min_timeout
        frac = math.log(n + 1) / math.log(self.k + 1)
        timeout = self.max_timeout - frac * (self.max_timeout - self.min_timeout)
        return self.start + max(self.min_timeout, math.floor(timeout * 1000) / 1000)

    def confirm(self, from_id: str) -> bool:
        """Count a confirmation from ``from_id``; True if it was new (worth re-gossiping)."""
        if (len(self.confirmers) >= self.k or from_id == self.origin
                or from_id in self.confirmers):
            return False
        self.confirmers.add(from_id)
        return True
