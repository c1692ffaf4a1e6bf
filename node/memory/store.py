"""Resident weight blocks: programmed once, kept in memory and in the data directory.

"Active storage": a block of W stays where it was programmed, and requests bring X to it.
Each block's programmed state is written to ``blocks/<name>/<idx>.blk`` (temp file, fsync,
rename, fsync of the directory) *before* its row is committed to SQLite, so after a crash a
committed row always has its file; files without a row are orphans and are removed at
start. The store enforces the node's memory budget before anything is programmed.

Threads: blocks are added and dropped from compute threads while the event loop reads
``free`` (every second, for the advert) and lists blocks (``status``). One lock owns the
block table and the byte counters; readers get snapshots, never the live dict, so no
iteration can meet a concurrent change ("dictionary changed size during iteration" used
to kill the advert loop).
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from compute.crossbar import ProgrammedMatrix
from node.memory.statedb import StateDB
from protocol import codec
from protocol.errors import ProtocolError

log = logging.getLogger("sedma.store")

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class StoreError(ValueError):
    """A block cannot be stored or found; the message says why."""


def check_name(name: str) -> str:
    """Matrix names become directory names: keep them short and boring."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise StoreError(f"invalid matrix name {name!r}: use 1-64 of A-Z a-z 0-9 _ . - "
                         "(not starting with . _ or -)")
    return name


@dataclass
class Resident:
    """One programmed block held by this node."""

    name: str
    index: int
    row_start: int
    device: str | None
    seed: int
    matrix: ProgrammedMatrix

    @property
    def nbytes(self) -> int:
        return self.matrix.nbytes


class BlockStore:
    """The blocks this node holds, within ``budget`` bytes."""

    def __init__(self, root: Path, db: StateDB, budget: int) -> None:
        self.root = root / "blocks"
        self.root.mkdir(parents=True, exist_ok=True)
        self.db = db
        self.budget = budget
        self._blocks: dict[tuple[str, int], Resident] = {}   # guarded by _lock
        self._resident = 0                                    # bytes of _blocks, by _lock
        self._reserved = 0                                    # guarded by _lock
        self._lock = threading.Lock()

    # accounting ---------------------------------------------------------------------
    @property
    def used(self) -> int:
        with self._lock:
            return self._resident + self._reserved

    @property
    def resident_bytes(self) -> int:
        """Bytes of programmed blocks held (reservations for blocks in flight excluded)."""
        with self._lock:
            return self._resident

    @property
    def free(self) -> int:
        return max(0, self.budget - self.used)

    def reserve(self, nbytes: int, what: str) -> None:
        """Claim budget before programming, so two concurrent deploys cannot overcommit."""
        with self._lock:
            used = self._resident + self._reserved
            if used + nbytes > self.budget:
                raise StoreError(
                    f"{what} needs {nbytes} bytes but only {max(0, self.budget - used)} of "
                    f"the {self.budget}-byte memory budget are free")
            self._reserved += nbytes

    def release(self, nbytes: int) -> None:
        with self._lock:
            self._reserved -= nbytes

    # blocks ------------------------------------------------------------------------
    def get(self, name: str, index: int) -> Resident:
        with self._lock:
            block = self._blocks.get((name, index))
        if block is None:
            raise StoreError(f"block {index} of {name!r} is not resident on this node")
        return block

    def names(self) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        with self._lock:
            keys = sorted(self._blocks)
        for (name, idx) in keys:
            out.setdefault(name, []).append(idx)
        return out

    def blocks(self) -> list[Resident]:
        """A snapshot: safe to iterate while other threads add or drop blocks."""
        with self._lock:
            return list(self._blocks.values())

    def persist(self, block: Resident) -> None:
        """Write the block's file and commit its row (called from a worker thread)."""
        path = self.root / block.name / f"{block.index}.blk"
        path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(path, codec.encode(block.matrix.to_state()))
        rows, cols = block.matrix.shape
        self.db.call(lambda c: c.execute(
            "INSERT OR REPLACE INTO blocks VALUES (?,?,?,?,?,?,?,?,?,?)",
            (block.name, block.index, block.row_start, rows, cols, block.device, block.seed,
             str(path.relative_to(self.root)), block.nbytes, time.time())))

    def add(self, block: Resident) -> None:
        """Make a persisted block available for requests (any thread)."""
        with self._lock:
            old = self._blocks.get((block.name, block.index))
            self._blocks[(block.name, block.index)] = block
            self._resident += block.nbytes - (old.nbytes if old is not None else 0)

    def drop(self, name: str) -> int:
        """Forget every block of ``name``, on disk too; return how many were dropped.

        Runs on a compute thread: the row goes first (a crash then leaves only orphan
        files, removed at start), then the blocks leave the table under the lock.
        """
        self.db.call(lambda c: c.execute("DELETE FROM blocks WHERE name = ?", (name,)))
        with self._lock:
            keys = [k for k in self._blocks if k[0] == name]
            for key in keys:
                self._resident -= self._blocks.pop(key).nbytes
        directory = self.root / name
        if directory.is_dir():
            for f in directory.iterdir():
                f.unlink(missing_ok=True)
            try:
                directory.rmdir()
            except OSError as exc:  # a block being written right now; its row is gone
                log.warning("could not remove %s: %s", directory, exc)
        return len(keys)

    def load_all(self) -> int:
        """Reload every committed block after a restart; drop orphans and broken files."""
        records = self.db.call(lambda c: c.execute(
            "SELECT name, idx, row_start, device, seed, file FROM blocks").fetchall())
        known = set()
        for name, idx, row_start, device, seed, file in records:
            path = self.root / file
            known.add(path)
            try:
                state = codec.decode(path.read_bytes())
                matrix = ProgrammedMatrix.from_state(state)
            except (OSError, ValueError, ProtocolError, KeyError, TypeError) as exc:
                log.error("block %s/%d unreadable (%s); forgetting it", name, idx, exc)
                self.db.call(lambda c: c.execute(
                    "DELETE FROM blocks WHERE name=? AND idx=?", (name, idx)))
                continue
            self.add(Resident(name, idx, row_start, device, seed, matrix))
        for path in self.root.glob("*/*"):
            if path not in known:
                log.warning("removing orphaned block file %s", path)
                path.unlink(missing_ok=True)
        for directory in self.root.iterdir():
            if directory.is_dir() and not any(directory.iterdir()):
                directory.rmdir()
        with self._lock:
            return len(self._blocks)


def _atomic_write(path: Path, parts: list) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "wb") as f:
        for p in parts:
            f.write(p)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def as_matrix(value: object, what: str, ndim: int = 2) -> np.ndarray:
    """Validate an operand from a client or peer: a finite float32-convertible array."""
    if not isinstance(value, np.ndarray) or value.ndim != ndim:
        raise StoreError(f"{what} must be a {ndim}-D array")
    if value.dtype.kind not in "fiu":
        raise StoreError(f"{what} has dtype {value.dtype}; expected numbers")
    arr = value.astype(np.float32, copy=False)
    if not np.isfinite(arr).all():
        raise StoreError(f"{what} contains NaN or infinity")
    return arr
