"""The queue of membership updates waiting to be piggybacked (memberlist's ``queue.go``).

Every change a node learns is re-gossiped a bounded number of times: ``retransmit_mult *
ceil(log10(n + 1))``, the ``lambda * log(N)`` of the SWIM paper. That is enough for an
epidemic to reach everyone with high probability while total traffic stays
``O(N log N)`` per change. Updates about the same subject replace each other (only the
newest state of a node is worth sending), and the least-sent, newest updates go first so
fresh news overtakes news most peers already have.

Updates live in tiers by transmit count; taking ``limit`` updates touches only the
updates taken, so the cost per message does not grow with the cluster.
"""

from __future__ import annotations

import math
from typing import Any


def retransmit_limit(mult: int, n: int) -> int:
    """How many times one update is sent before it is dropped from the queue."""
    return mult * math.ceil(math.log10(n + 1))


class BroadcastQueue:
    """Transmit-limited updates keyed by subject; a newer update for a key replaces the old."""

    def __init__(self) -> None:
        self._tiers: dict[int, dict[str, Any]] = {}
        self._tier_of: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._tier_of)

    def queue(self, key: str, item: Any) -> None:
        """Queue ``item`` as the current news about ``key``, dropping older news about it."""
        self.remove(key)
        self._tiers.setdefault(0, {})[key] = item
        self._tier_of[key] = 0

    def take(self, limit: int, n_nodes: int, mult: int) -> list[Any]:
        """Up to ``limit`` items, fewest-sent and newest first; each counts as one transmit."""
        picked: list[tuple[str, int, Any]] = []
        for tier in sorted(self._tiers):
            bucket = self._tiers[tier]
            for key in reversed(bucket):
                if len(picked) >= limit:
                    break
                picked.append((key, tier, bucket[key]))
            if len(picked) >= limit:
                break
        cap = retransmit_limit(mult, n_nodes)
        for key, tier, item in reversed(picked):  # oldest first: keeps newest-first order
            self.remove(key)
            if tier + 1 < cap:
                self._tiers.setdefault(tier + 1, {})[key] = item
                self._tier_of[key] = tier + 1
        return [item for _, _, item in picked]

    def clear(self) -> None:
        """Forget every queued update (e.g. once this node has left)."""
        self._tiers.clear()
        self._tier_of.clear()

    def remove(self, key: str) -> None:
        """Drop the news about ``key``, if any (it was superseded)."""
        tier = self._tier_of.pop(key, None)
        if tier is None:
            return
        bucket = self._tiers[tier]
        del bucket[key]
        if not bucket:
            del self._tiers[tier]
