"""Traffic totals of every link, including closed ones (the dashboard and /metrics).

Kept apart from :mod:`node.http.collector` so the dashboard's once-a-second sampler can
fold closed links in without importing prometheus_client: an idle daemon whose dashboard
nobody opened never loads it (issue 13: idle memory).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class LinkTotals:
    """Traffic of every link seen, by link kind, including links that have since closed.

    Sessions count their own traffic and vanish when they close; this keeps a reference
    to each live session's counters and folds them into ``retired`` once it is gone, so
    the exported byte and message totals never go backwards. (The daemon's HTTP server
    calls :meth:`update` every second, so only a link that opens and closes within one
    second can be missed.)
    """

    retired: dict[str, list[int]] = field(default_factory=dict)
    _live: dict[int, tuple[str, Any]] = field(default_factory=dict)

    def update(self, sessions: list[Any]) -> dict[str, list[int]]:
        """Fold closed sessions in; return kind -> [sent bytes, recv bytes, sent msgs,
        recv msgs]."""
        current = {id(s.stats): (s.link.kind, s.stats) for s in sessions}
        for key, (kind, stats) in list(self._live.items()):
            if key not in current:
                _add(self.retired.setdefault(kind, [0, 0, 0, 0]), stats)
                del self._live[key]
        self._live.update(current)
        totals = {kind: list(v) for kind, v in self.retired.items()}
        for kind, stats in self._live.values():
            _add(totals.setdefault(kind, [0, 0, 0, 0]), stats)
        return totals


def _add(into: list[int], stats: Any) -> None:
    for i, v in enumerate(_stats_tuple(stats)):
        into[i] += v


def _stats_tuple(stats: Any) -> tuple[int, int, int, int]:
    return (stats.sent_bytes, stats.recv_bytes, stats.sent_messages, stats.recv_messages)
