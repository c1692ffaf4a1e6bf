"""Mesh-wide claims on deployment names, so two coordinators cannot deploy one name at once.

Before it programs anything, a coordinator asks every alive member to grant it the name
for its deployment id. A member grants a name to at most one deployment at a time (and
never a name it knows a plan for); the coordinator goes ahead only with grants from a
strict majority of the alive members, itself included. Two coordinators racing for one
name cannot both hold a majority, so at most one deploys; the loser releases what it got
and tells its user the name is being deployed elsewhere. A claim ends when the plan is
committed (the plan then guards the name), when its coordinator releases it, or after
``CLAIM_TTL`` seconds (a coordinator that died mid-deploy does not lock the name forever).

:class:`ClaimTable` is the sans-I/O member side; :func:`quorum` the coordinator's rule.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

#: A deploy's claim lapses after this long (the longest share timeout is 15 min).
CLAIM_TTL = 16 * 60.0


@dataclass(frozen=True)
class Claim:
    deploy: str
    owner: str
    expires: float


class ClaimRefused(Exception):
    """This member will not grant the name; the message says why."""


class ClaimTable:
    """The claims this member granted, by name."""

    def __init__(self, ttl: float = CLAIM_TTL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self._clock = clock
        self._claims: dict[str, Claim] = {}

    def grant(self, name: str, deploy: str, owner: str, planned: bool) -> None:
        """Grant ``name`` to ``deploy`` or raise :class:`ClaimRefused`; idempotent."""
        if planned:
            raise ClaimRefused(f"a matrix named {name!r} is already deployed")
        now = self._clock()
        held = self._claims.get(name)
        if held is not None and held.expires > now and held.deploy != deploy:
            raise ClaimRefused(f"{name!r} is being deployed by {held.owner[:8]}")
        self._claims[name] = Claim(deploy, owner, now + self.ttl)

    def release(self, name: str, deploy: str) -> None:
        held = self._claims.get(name)
        if held is not None and held.deploy == deploy:
            del self._claims[name]

    def settled(self, name: str) -> None:
        """A plan for ``name`` was committed: the claim has done its job."""
        self._claims.pop(name, None)

    def holder(self, name: str) -> Claim | None:
        held = self._claims.get(name)
        if held is None or held.expires <= self._clock():
            self._claims.pop(name, None)
            return None
        return held

    def expire(self) -> int:
        """Drop lapsed claims; return how many."""
        now = self._clock()
        gone = [n for n, c in self._claims.items() if c.expires <= now]
        for n in gone:
            del self._claims[n]
        return len(gone)


def quorum(alive: int) -> int:
    """Grants needed among ``alive`` members (this node included): a strict majority."""
    return alive // 2 + 1
