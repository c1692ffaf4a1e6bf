"""What a restarted daemon reads back of its dual memory: saved to and loaded from a fresh
state database, as the daemon does at stop and start."""

from __future__ import annotations

from pathlib import Path

from node.memory.dualmemory import DualMemory
from node.memory.statedb import StateDB


def restarted(mem: DualMemory, path: Path) -> DualMemory:
    """``mem`` saved to the state database at ``path`` and loaded into a new DualMemory."""
    db = StateDB(path)
    try:
        db.call(mem.save)
        again = DualMemory()
        db.call(again.load)
    finally:
        db.close()
    return again
