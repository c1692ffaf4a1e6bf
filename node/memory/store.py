"""Resident weight blocks: programmed once, kept in memory and in the data directory.

"Active storage": a block of W stays where it was programmed, and requests bring X to it.
Each block's programmed state is written to ``blocks/<name>/<idx>.blk`` (temp file, fsync,
rename, fsync of the directory) *before* its row is committed to SQLite, so after a crash a
committed row always has its file; files without a row are orphans and are removed at
start. The store enforces its budgets before anything is programmed.

Tiers: every block's file is tier 1 (within ``--disk-limit``); the blocks worth it also
have a RAM copy, tier 0 (within ``--memory-limit``), chosen by :mod:`node.memory.tiers`
from the dual memory's per-block use and the prefetcher's predictions. A tier-1 read loads
the file with :class:`~node.memory.blockio.BlockReader` (direct chunked reads, several in
flight), keeping the copy in RAM when the policy admits it and dropping it after the read
otherwise; the same loader serves prefetch and demand reads, so prefetch wins only by
reading ahead and keeping the device busy, never by reading better. Every load is checked
as it was at deploy time (codec, programmed-state checks, size against the record).

Threads: blocks are added and dropped from compute threads while the event loop reads
``free`` (every second, for the advert) and lists blocks (``status``). One lock owns the
block table and the byte counters; readers get snapshots, never the live dict, so no
iteration can meet a concurrent change ("dictionary changed size during iteration" used
to kill the advert loop).
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from compute.lazynumpy import np

from compute.crossbar import LEGACY_FORMAT, STATE_FORMAT, LegacyStateError, ProgrammedMatrix
from node.memory.dualmemory import DualMemory
from node.memory.blockio import BlockReader
from node.memory.prefetch import ChainBlock, PrefetchStats
from node.errors import UserError
from node.memory.statedb import StateDB
from node.memory.tiers import BlockUse, Key, admit, decayed
from protocol import codec
from protocol.errors import ProtocolError

log = logging.getLogger("sedma.store")

LOAD_WAIT_S = 30.0   # a read waits this long at most for a prefetch of its block
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class StoreError(UserError):
    """A block cannot be stored or found; the message says why."""


def check_name(name: str) -> str:
    """Matrix names become directory names: keep them short and boring."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise StoreError(f"invalid matrix name {name!r}: use 1-64 of A-Z a-z 0-9 _ . - "
                         "(not starting with . _ or -)")
    return name


@dataclass
class Resident:
    """One programmed block held by this node, in RAM (tier 0) or on disk only (tier 1).

    ``matrix`` is the RAM copy for tier 0 and ``None`` for tier 1 (a read then loads the
    file). Tier, matrix, pins and the prefetch mark change only under the store's lock.
    """

    name: str
    index: int
    row_start: int
    device: str | None
    seed: int
    matrix: ProgrammedMatrix | None
    size: int = 0
    tier: int = 0
    pins: int = 0
    loading: bool = False
    loaded: threading.Event | None = None   # set when a load in flight ends
    prefetched: bool = False     # loaded by prefetch and not read since

    def __post_init__(self) -> None:
        if not self.size and self.matrix is not None:
            self.size = int(self.matrix.nbytes)

    @property
    def nbytes(self) -> int:
        return self.size

    @property
    def key(self) -> Key:
        return self.name, self.index


class BlockStore:
    """The blocks this node holds: RAM within ``budget`` bytes, disk within ``disk_budget``.

    Every block is persisted in the data dir (that is what makes it crash-safe), so the disk
    budget counts every block and the RAM budget only the tier-0 copies. Which blocks are in
    RAM is :mod:`node.memory.tiers`' decision over the dual memory's per-block use; a block
    being read is pinned and never leaves RAM under its reader.
    """

    def __init__(self, root: Path, db: StateDB, budget: int, disk_budget: int | None = None,
                 memory: DualMemory | None = None, reader: BlockReader | None = None) -> None:
        self.root = root / "blocks"
        self.root.mkdir(parents=True, exist_ok=True)
        self.db = db
        self.budget = budget
        self.disk_budget = max(disk_budget or budget, budget)
        self.memory = memory
        self.stats = PrefetchStats()                           # guarded by _lock
        #: The prefetcher's chain, block -> rank (0: being read); replaced, never mutated.
        self.predicted: dict[Key, int] = {}
        self.reader = reader or BlockReader()
        self._prefetch_loads = 0      # prefetch loads in flight, guarded by _lock
        self._blocks: dict[Key, Resident] = {}                # guarded by _lock
        self._resident = 0            # bytes in RAM (tier 0), guarded by _lock
        self._held = 0                # bytes of every block (tiers 0 and 1), by _lock
        self._reserved = 0            # RAM claimed for blocks being loaded, by _lock
        self._reserved_disk = 0       # disk claimed for blocks being stored, by _lock
        self._lock = threading.Lock()

    # accounting ---------------------------------------------------------------------
    @property
    def used(self) -> int:
        """Tier-0 bytes: RAM copies plus RAM claimed for loads in flight."""
        with self._lock:
            return self._resident + self._reserved

    @property
    def resident_bytes(self) -> int:
        """Bytes of programmed blocks in RAM (reservations for blocks in flight excluded)."""
        with self._lock:
            return self._resident

    @property
    def free(self) -> int:
        return max(0, self.budget - self.used)

    @property
    def disk_used(self) -> int:
        """Tier-1 bytes: every held block's file plus claims for blocks being stored."""
        with self._lock:
            return self._held + self._reserved_disk

    @property
    def disk_free(self) -> int:
        return max(0, self.disk_budget - self.disk_used)

    def reserve(self, nbytes: int, what: str) -> None:
        """Claim room before programming, so two concurrent deploys cannot overcommit.

        A block needs room on disk (every block is persisted); it lands in RAM only if the
        tier policy finds room there. A node without tier 1 (disk budget = RAM budget)
        therefore refuses exactly when its RAM is full, as before.
        """
        with self._lock:
            used = self._held + self._reserved_disk
            if used + nbytes > self.disk_budget:
                raise StoreError(
                    f"{what} needs {nbytes} bytes but only {max(0, self.disk_budget - used)} "
                    f"of the {self.disk_budget}-byte block budget (memory + disk tiers) "
                    "are free")
            self._reserved_disk += nbytes

    def release(self, nbytes: int) -> None:
        with self._lock:
            self._reserved_disk -= nbytes

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

    def tiers(self) -> dict[str, dict[int, int]]:
        """Matrix -> block index -> tier, for ``sedma memory``."""
        with self._lock:
            return _nest({k: b.tier for k, b in self._blocks.items()})

    def path(self, name: str, index: int) -> Path:
        return self.root / name / f"{index}.blk"

    def persist(self, block: Resident, pause_s: float = 0.0) -> None:
        """Write the block's file and commit its row (called from a worker thread).

        ``pause_s`` (a testing aid, see :func:`copy_pause_s`) holds the write with half
        the file on disk, so a test can kill the node in the middle of a copy.
        """
        path = self.path(block.name, block.index)
        path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(path, codec.encode(block.matrix.to_state()), pause_s)
        rows, cols = block.matrix.shape
        self.db.call(lambda c: c.execute(
            "INSERT OR REPLACE INTO blocks VALUES (?,?,?,?,?,?,?,?,?,?)",
            (block.name, block.index, block.row_start, rows, cols, block.device, block.seed,
             str(path.relative_to(self.root)), block.nbytes, time.time())))

    def add(self, block: Resident, now: float | None = None) -> None:
        """Make a persisted block available for requests (any thread).

        It keeps its RAM copy when that fits (evicting colder blocks if the tier policy
        says so); otherwise it is served from its file (tier 1).
        """
        now = time.time() if now is None else now
        with self._lock:
            old = self._blocks.pop(block.key, None)
            if old is not None:
                self._forget(old)
            self._held += block.nbytes
            self._blocks[block.key] = block
            block.tier = 1
            ram, block.matrix = block.matrix, None
            victims = self._admit_locked(block, now, predicted=False) if ram is not None else None
            if victims is not None:
                block.matrix, block.tier = ram, 0
                self._resident += block.nbytes
        self._drop_cache([v.key for v in victims or ()] + ([block.key] if block.tier else []))

    def _forget(self, block: Resident) -> None:
        """Take ``block``'s bytes out of the counters (lock held)."""
        self._held -= block.nbytes
        if block.tier == 0:
            self._resident -= block.nbytes
            if block.prefetched:
                self.stats.wasted += 1
                self.stats.bytes_wasted += block.nbytes
        block.tier, block.matrix = 1, None

    def drop(self, name: str) -> int:
        """Forget every block of ``name``, on disk too; return how many were dropped.

        Runs on a compute thread: the row goes first (a crash then leaves only orphan
        files, removed at start), then the blocks leave the table under the lock. A reader
        that holds one of them keeps its arrays (mapped pages stay valid after unlink).
        """
        self.db.call(lambda c: c.execute("DELETE FROM blocks WHERE name = ?", (name,)))
        with self._lock:
            keys = [k for k in self._blocks if k[0] == name]
            for key in keys:
                self._forget(self._blocks.pop(key))
        self.reader.trim()      # their RAM copies' buffers go back to the system
        directory = self.root / name
        if directory.is_dir():
            for f in directory.iterdir():
                f.unlink(missing_ok=True)
            try:
                directory.rmdir()
            except OSError as exc:  # a block being written right now; its row is gone
                log.warning("could not remove %s: %s", directory, exc)
        return len(keys)

    def drop_block(self, name: str, index: int) -> bool:
        """Forget one block (a retired replica, or the source of a finished migration)."""
        self.db.call(lambda c: c.execute(
            "DELETE FROM blocks WHERE name = ? AND idx = ?", (name, index)))
        with self._lock:
            block = self._blocks.pop((name, index), None)
            if block is not None:
                self._forget(block)
        self.path(name, index).unlink(missing_ok=True)
        return block is not None

    # reads and tiers -------------------------------------------------------------------
    @contextlib.contextmanager
    def reading(self, name: str, index: int, now: float | None = None) -> Iterator[Resident]:
        """Pin a block for one read and yield it with a usable ``matrix``.

        A tier-1 block is brought into RAM when the tier policy admits it (its aged read
        count beats what it would displace), else read into a buffer dropped after the read.
        Runs on a worker thread (it may read the file); the pin keeps the block in RAM
        until the read is over.
        """
        now = time.time() if now is None else now
        started = time.perf_counter()
        if self.memory is not None:
            self.memory.record_block_read((name, index), now)
        with self._lock:
            block = self._blocks.get((name, index))
            if block is None:
                raise StoreError(f"block {index} of {name!r} is not resident on this node")
            block.pins += 1
            tier, matrix = block.tier, block.matrix
            self.stats.reads += 1
            if tier == 0:
                self.stats.tier0_reads += 1
                if block.prefetched:
                    block.prefetched = False
                    self.stats.used += 1
        try:
            if matrix is None:
                matrix = self._await_load(block)
                if matrix is not None:      # a prefetch was under way: late, but used
                    with self._lock:
                        self.stats.late += 1
                        if block.prefetched:
                            block.prefetched = False
                            self.stats.used += 1
                else:                       # a miss: load on demand, kept in RAM or not
                    matrix = self._load(block, now, prefetch=False) or self._transient(block)
            yield Resident(block.name, block.index, block.row_start, block.device,
                           block.seed, matrix, block.size, tier)
        finally:
            with self._lock:
                block.pins -= 1
                transient = block.tier == 1
            if transient:       # a buffered (no O_DIRECT) read must leave no cached copy
                self._drop_cache([block.key])
            if self.memory is not None:
                self.memory.record_tier_read(tier, block.size, time.perf_counter() - started,
                                             block.key)

    def _await_load(self, block: Resident) -> ProgrammedMatrix | None:
        """A prefetch of this block is under way: wait for it rather than read twice."""
        with self._lock:
            event = block.loaded if block.loading else None
        if event is None or not event.wait(LOAD_WAIT_S):
            return None
        with self._lock:
            return block.matrix if block.tier == 0 else None

    def prefetch(self, name: str, index: int, now: float | None = None) -> bool:
        """Bring a predicted block into RAM before it is read; True if it was loaded."""
        now = time.time() if now is None else now
        with self._lock:
            block = self._blocks.get((name, index))
            if block is None or block.tier == 0 or block.loading:
                return False
            block.pins += 1
        try:
            return self._load(block, now, prefetch=True) is not None
        finally:
            with self._lock:
                block.pins -= 1

    def chain_state(self, keys: list[Key], pending: set[Key] | frozenset[Key] = frozenset()
                    ) -> tuple[list[ChainBlock], int]:
        """The prefetcher's snapshot: ``keys``' tiers (``pending`` loads count as in
        flight), and the bytes other readers pin in RAM (they cannot make room)."""
        with self._lock:
            chain = [ChainBlock(k, b.nbytes, b.tier, b.loading or k in pending)
                     for k in keys if (b := self._blocks.get(k)) is not None]
            wanted = set(keys)
            pinned = sum(b.nbytes for k, b in self._blocks.items()
                         if b.tier == 0 and b.pins > 0 and k not in wanted)
        return chain, pinned

    def set_prediction(self, ranks: dict[Key, int], depth: int) -> None:
        """The prefetcher's latest chain (block -> rank) and the depth the budget allowed."""
        self.predicted = ranks
        with self._lock:
            self.stats.depth = depth

    def state_bytes(self, name: str, index: int) -> memoryview | bytes:
        """The block's persisted programmed state, to ship a copy to another node."""
        self.get(name, index)
        return self.path(name, index).read_bytes()

    def _load(self, block: Resident, now: float, prefetch: bool) -> ProgrammedMatrix | None:
        """Copy a tier-1 block into RAM if admitted (evicting colder blocks); else None."""
        with self._lock:
            if block.tier == 0 and block.matrix is not None:
                return block.matrix
            victims = None if block.loading else self._admit_locked(block, now, prefetch)
            if victims is None:
                return None
            block.loading = True
            block.loaded = threading.Event()
            self._reserved += block.nbytes
            if prefetch:
                self._prefetch_loads += 1
                self.stats.max_in_flight = max(self.stats.max_in_flight, self._prefetch_loads)
        self._drop_cache([v.key for v in victims])
        matrix = None
        try:
            matrix = self._read_file(block)
        except (OSError, ValueError, ProtocolError) as exc:
            log.error("cannot load block %s/%d into memory: %s", block.name, block.index, exc)
        finally:
            with self._lock:
                block.loading = False
                self._reserved -= block.nbytes
                if prefetch:
                    self._prefetch_loads -= 1
                if matrix is not None and self._blocks.get(block.key) is block:
                    block.matrix, block.tier, block.prefetched = matrix, 0, prefetch
                    self._resident += block.nbytes
                    self.stats.bytes_loaded += block.nbytes
                    if prefetch:
                        self.stats.issued += 1
                        self.stats.bytes_prefetched += block.nbytes
                block.loaded.set()
        self._drop_cache([block.key])      # RAM has its copy now
        return matrix

    def _read_file(self, block: Resident) -> ProgrammedMatrix:
        """Load ``block``'s file and check it as a deploy would (OSError/ValueError if not)."""
        data = self.reader.read(self.path(block.name, block.index), expect=block.size)
        matrix = ProgrammedMatrix.from_state(codec.decode(data))
        if matrix.nbytes != block.size:
            raise ValueError(f"holds {matrix.nbytes} bytes, its record says {block.size}")
        return matrix

    def _transient(self, block: Resident) -> ProgrammedMatrix:
        """A read the tier policy did not admit into RAM: the same loader, copy not kept.

        The buffer lives as long as the read (the block is pinned), as a mapped read's pages
        did before; it is not tier 0 and is gone when the read ends.
        """
        try:
            matrix = self._read_file(block)
        except LegacyStateError:
            raise
        except (OSError, ValueError, ProtocolError) as exc:
            raise StoreError(f"block {block.index} of {block.name!r} cannot be read from "
                             f"disk: {exc}") from None
        with self._lock:
            self.stats.bytes_transient += block.nbytes
        return matrix

    def _drop_cache(self, keys: list[Key]) -> None:
        """Tell the kernel to drop the page cache of these files.

        Why: the RAM budget bounds what this node keeps in memory; if evicted blocks stayed
        in the page cache, tier 1 would silently be RAM and the budget a fiction. Files are
        fsynced when written, so their pages are clean and the advice takes effect.
        """
        for name, index in keys:
            try:
                fd = os.open(self.path(name, index), os.O_RDONLY)
            except OSError:
                continue
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            except OSError:
                pass
            finally:
                os.close(fd)

    def _map(self, block: Resident) -> ProgrammedMatrix:
        """The programmed state as views into a read-only map of its file (start-up
        checks: a map parses the header without reading the weights)."""
        path = self.path(block.name, block.index)
        try:
            with open(path, "rb") as f:
                mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            return ProgrammedMatrix.from_state(codec.decode(mapped))
        except LegacyStateError:
            raise
        except (OSError, ValueError, ProtocolError) as exc:
            raise StoreError(f"block {block.index} of {block.name!r} cannot be read from "
                             f"disk: {exc}") from None

    def _admit_locked(self, block: Resident, now: float, predicted: bool) -> list | None:
        """Make RAM room for ``block`` if the tier policy admits it; evictions done (lock held)."""
        free = self.budget - self._resident - self._reserved
        use = self._use(block, now, predicted)
        if block.nbytes <= free:
            return []
        if block.nbytes > self.budget:
            return None
        victims = admit(use, [self._use(b, now) for b in self._blocks.values()
                              if b is not block], free, now)
        for v in victims or ():
            evicted = self._blocks[v.key]
            self._resident -= evicted.nbytes
            evicted.tier, evicted.matrix = 1, None
            if evicted.prefetched:
                evicted.prefetched = False
                self.stats.wasted += 1
                self.stats.bytes_wasted += evicted.nbytes
            log.debug("tier 0 -> 1: %s/%d (%s)", v.key[0], v.key[1], v.reason)
        return victims

    def _use(self, b: Resident, now: float, predicted: bool = False) -> BlockUse:
        """``b`` as the tier policy sees it: use counts, pins, place in the predicted chain."""
        hits, last = self.memory.block_use(b.key) if self.memory is not None else (0.0, 0.0)
        rank = self.predicted.get(b.key)
        return BlockUse(b.key, b.nbytes, b.tier, b.pins > 0 or b.loading, hits, last,
                        predicted or rank is not None, rank)

    # start-up ----------------------------------------------------------------------
    def load_all(self) -> int:
        """Reload every committed block after a restart; drop orphans and broken files.

        Blocks the dual memory says were used most come back into RAM first, up to the
        budget; the rest stay on disk (tier 1) until they are read or predicted.
        """
        records = self.db.call(lambda c: c.execute(
            "SELECT name, idx, row_start, device, seed, file, nbytes FROM blocks").fetchall())
        known = set()
        legacy: dict[str, list[int]] = {}
        now = time.time()
        def worth(r):
            hits, last = self.memory.block_use((r[0], r[1])) if self.memory else (0.0, 0.0)
            return -decayed(hits, last, now)
        for name, idx, row_start, device, seed, file, nbytes in sorted(records, key=worth):
            path = self.root / file
            known.add(path)
            try:
                if nbytes <= self.free:
                    matrix = ProgrammedMatrix.from_state(codec.decode(
                        self.reader.read(path, expect=nbytes)))
                else:   # stays on disk (tier 1); check now that it parses
                    matrix = None
                    mapped = self._map(Resident(name, idx, row_start, device, seed, None, nbytes))
                    if mapped.nbytes != nbytes:
                        raise ValueError(f"holds {mapped.nbytes} bytes, its record says {nbytes}")
                old = (matrix or mapped).converted_from
                if old is not None:  # lossless: write it back in today's format, once
                    _atomic_write(path, codec.encode((matrix or mapped).to_state()))
                    log.warning("block %s/%d converted from %s to %s (ideal device: weights "
                                "unchanged)", name, idx, old, STATE_FORMAT)
            except LegacyStateError:
                legacy.setdefault(name, []).append(idx)
                self.db.call(lambda c: c.execute(
                    "DELETE FROM blocks WHERE name=? AND idx=?", (name, idx)))
                continue
            except (OSError, ValueError, ProtocolError, KeyError, TypeError, StoreError) as exc:
                log.error("block %s/%d unreadable (%s); forgetting it", name, idx, exc)
                self.db.call(lambda c: c.execute(
                    "DELETE FROM blocks WHERE name=? AND idx=?", (name, idx)))
                continue
            self.add(Resident(name, idx, row_start, device, seed, matrix, nbytes), now)
        for name, idxs in sorted(legacy.items()):
            log.error("matrix %r: block(s) %s were programmed by an older sedma (%s) on a "
                      "non-ideal device, whose state cannot be converted to per-device codes; "
                      "they are dropped: deploy it again (sedma deploy %s FILE --device ...)",
                      name, ",".join(map(str, sorted(idxs))), LEGACY_FORMAT, name)
        for path in self.root.glob("*/*"):
            if path not in known:
                log.warning("removing orphaned block file %s", path)
                path.unlink(missing_ok=True)
        for directory in self.root.iterdir():
            if directory.is_dir() and not any(directory.iterdir()):
                directory.rmdir()
        if self.disk_used > self.disk_budget:
            log.warning("held blocks use %d bytes, over the %d-byte disk budget; no new "
                        "blocks are accepted until some are dropped", self.disk_used,
                        self.disk_budget)
        with self._lock:
            return len(self._blocks)


def _nest(flat: dict[Key, int]) -> dict[str, dict[int, int]]:
    out: dict[str, dict[int, int]] = {}
    for (name, idx), v in sorted(flat.items()):
        out.setdefault(name, {})[idx] = v
    return out


def copy_pause_s() -> float:
    """TESTING AID: seconds a node receiving a block copy (a migration, hot replica or
    repair) holds the write half done, from ``SEDMA_TEST_PAUSE_COPY_S`` (unset: 0).

    It widens the copy window so a test can kill -9 a node mid-copy deterministically;
    nothing else reads it, and no deployment should set it.
    """
    try:
        return min(max(float(os.environ.get("SEDMA_TEST_PAUSE_COPY_S", "0")), 0.0), 600.0)
    except ValueError:
        return 0.0


def _pause_halfway(f, parts: list, pause_s: float) -> list:
    """Write the first half of ``parts``' bytes to ``f`` durably, sleep; the rest to write."""
    left = sum(len(p) for p in parts) // 2
    for i, p in enumerate(parts):
        view = memoryview(p).cast("B")
        if len(view) >= left:
            f.write(view[:left])
            f.flush()
            os.fsync(f.fileno())
            time.sleep(pause_s)
            return [view[left:], *parts[i + 1:]]
        f.write(view)
        left -= len(view)
    return []


def _atomic_write(path: Path, parts: list, pause_s: float = 0.0) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "wb") as f:
        if pause_s > 0:                        # testing aid (copy_pause_s): half, then wait
            parts = _pause_halfway(f, parts, pause_s)
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


#: Rows of an operand checked for NaN/Inf at a time: bounds the temporary mask.
_FINITE_CHUNK_BYTES = 16 << 20


def as_matrix(value: object, what: str, ndim: int = 2) -> np.ndarray:
    """Validate an operand from a client or peer: a finite float32-convertible array.

    Touches every element (conversion, NaN/Inf scan): up to GiBs, so callers on the event
    loop run it on the executor. The scan goes in slices so its mask stays small.
    """
    if not isinstance(value, np.ndarray) or value.ndim != ndim:
        raise StoreError(f"{what} must be a {ndim}-D array")
    if value.dtype.kind not in "fiu":
        raise StoreError(f"{what} has dtype {value.dtype}; expected numbers")
    if 0 in value.shape:   # accepted, it failed later inside planning as an internal error
        raise StoreError(f"{what} is empty (shape {value.shape})")
    arr = value.astype(np.float32, copy=False)
    rows = max(1, _FINITE_CHUNK_BYTES // max(1, arr[:1].nbytes))
    for start in range(0, max(1, arr.shape[0]), rows):
        if not np.isfinite(arr[start:start + rows]).all():
            raise StoreError(f"{what} contains NaN or infinity")
    return arr


def validate_pair(a: object, b: object, a_name: str = "A") -> tuple[np.ndarray, np.ndarray]:
    """Both operands of a matmul, validated in one executor hop."""
    return as_matrix(a, a_name), as_matrix(b, "B")
