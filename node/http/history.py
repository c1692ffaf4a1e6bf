"""A short time series of throughput and latency, sampled once a second for the plot.

The sampler only reads the running totals in :class:`~node.metrics.Metrics`; a point is
the requests finished since the previous point and their median latency. Five minutes of
points are kept (a fixed-size ring), so memory does not grow.
"""

from __future__ import annotations

import collections
import time
from itertools import takewhile
from dataclasses import asdict, dataclass
from typing import Any

POINTS = 300


def _median(values: list[float]) -> float:
    """The median of a non-empty list, as ``statistics.median`` computes it.

    Not numpy: ``np.median``'s first call imports ``numpy.ma`` (0.1-0.3 s) and this runs on
    the event loop each second. Not ``statistics`` either: it imports ``decimal`` and
    ``fractions`` (~0.7 MB of RSS in every idle daemon, issue 13) for a sort and a mean of
    two middle values."""
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


@dataclass
class Point:
    at: float                    # wall-clock seconds (the page labels the axis)
    requests_per_s: float
    completions_per_s: float     # shares and reads this node computed (for itself or peers)
    latency_p50_ms: float | None


class History:
    """Ring of :class:`Point`; :meth:`sample` appends one from the metrics' totals."""

    def __init__(self, points: int = POINTS) -> None:
        self.points: collections.deque[Point] = collections.deque(maxlen=points)
        self._last_mono: float | None = None

    def sample(self, metrics: Any, now_mono: float | None = None,
               now_wall: float | None = None) -> Point:
        now_mono = time.monotonic() if now_mono is None else now_mono
        now_wall = time.time() if now_wall is None else now_wall
        since = self._last_mono if self._last_mono is not None else now_mono - 1.0
        span = max(now_mono - since, 1e-3)
        # Newest first, stopping at the previous point: O(new items), not O(ring).
        fresh = [r.seconds for r in takewhile(lambda r: r.at > since,
                                              reversed(metrics.recent_requests))]
        done = sum(1 for _ in takewhile(lambda t: t > since, reversed(metrics.completions)))
        p50 = _median(fresh) * 1000 if fresh else None
        point = Point(now_wall, len(fresh) / span, done / span, p50)
        self.points.append(point)
        self._last_mono = now_mono
        return point

    def as_list(self) -> list[dict]:
        return [asdict(p) for p in self.points]
