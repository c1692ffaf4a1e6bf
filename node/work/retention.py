"""Which finished jobs to forget: a pure decision over a snapshot of job records.

Job records and their ``results/*.npy`` files used to be kept forever, so a busy node
filled its disk. A finished job is kept while it is younger than ``max_age`` seconds *and*
among the ``max_count`` most recently finished; running jobs are never forgotten.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_MAX_AGE = 24 * 3600.0
DEFAULT_MAX_COUNT = 1000


@dataclass(frozen=True)
class JobStamp:
    """What the retention rule needs to know about one job."""

    id: str
    finished: float | None   # None while the job runs


@dataclass(frozen=True)
class Retention:
    max_age: float = DEFAULT_MAX_AGE
    max_count: int = DEFAULT_MAX_COUNT

    def __post_init__(self) -> None:
        if self.max_age <= 0 or self.max_count < 1:
            raise ValueError("job retention needs a positive age and a count of at least 1")


def expired(jobs: list[JobStamp], now: float, rule: Retention) -> list[str]:
    """Ids of finished jobs to forget: too old, or beyond the newest ``max_count``."""
    finished = sorted((j for j in jobs if j.finished is not None),
                      key=lambda j: j.finished, reverse=True)
    out = []
    for rank, job in enumerate(finished):
        if rank >= rule.max_count or now - job.finished > rule.max_age:
            out.append(job.id)
    return out
