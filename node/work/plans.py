"""The deployment plans this node knows: which nodes hold which row blocks of which matrix.

Every member keeps the plans it has heard of (the deployer announces each one), so any
member can route ``infer`` for any deployed matrix. Plans are small and persisted in
SQLite, so a restarted node routes again at once.
"""

from __future__ import annotations

import logging
import time

import msgpack

from compute.partition import PartitionPlan
from node.memory.statedb import StateDB

log = logging.getLogger("sedma.plans")


class PlanBook:
    """Name -> partition plan, mirrored in the ``plans`` table."""

    def __init__(self, db: StateDB) -> None:
        self.db = db
        self._plans: dict[str, PartitionPlan] = {}

    def restore(self) -> int:
        """Load persisted plans; an unreadable one is logged and skipped."""
        rows = self.db.call(lambda c: c.execute("SELECT name, plan FROM plans").fetchall())
        for name, blob in rows:
            try:
                self._plans[name] = PartitionPlan.from_dict(msgpack.unpackb(blob))
            except (ValueError, TypeError, KeyError, msgpack.UnpackException) as exc:
                log.error("plan of %s unreadable (%s); ignoring it", name, exc)
        return len(self._plans)

    def get(self, name: str) -> PartitionPlan | None:
        return self._plans.get(name)

    def items(self) -> list[tuple[str, PartitionPlan]]:
        return list(self._plans.items())

    def names(self) -> list[str]:
        return sorted(self._plans)

    def __contains__(self, name: str) -> bool:
        return name in self._plans

    async def put(self, name: str, plan: PartitionPlan) -> None:
        """Remember (and durably store) ``plan`` under ``name``."""
        self._plans[name] = plan
        blob = msgpack.packb(plan.to_dict())
        await self.db.run(lambda c: c.execute(
            "INSERT OR REPLACE INTO plans VALUES (?,?,?)", (name, blob, time.time())))

    async def forget(self, name: str) -> None:
        self._plans.pop(name, None)
        await self.db.run(lambda c: c.execute("DELETE FROM plans WHERE name=?", (name,)))
