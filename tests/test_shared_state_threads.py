"""Block store and dual memory are shared by the event loop and worker threads.

Compute threads add and drop blocks while the loop reads ``free`` for its advert; the
database thread saves the dual memory while the loop appends observations. Each test
hammers one side from a thread while the other side iterates, with a tiny GIL switch
interval so a switch lands mid-iteration; an unguarded container raises
``RuntimeError: ... changed size during iteration`` within a few thousand rounds.
"""

from __future__ import annotations

import sqlite3
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from node.memory.dualmemory import DualMemory
from node.memory.statedb import StateDB
from node.memory.store import BlockStore, Resident

HAMMER_SECONDS = 1.5


@dataclass
class FakeMatrix:
    """Stands in for a ProgrammedMatrix: the store only reads ``nbytes``."""

    nbytes: int


class NullDB:
    """The store's drop commits a delete; these tests are about the in-memory table."""

    def call(self, fn):
        return None


@pytest.fixture
def tiny_switch_interval():
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(old)


def _run_against(hammer, reader, seconds: float = HAMMER_SECONDS) -> list[BaseException]:
    """Run ``hammer`` in a thread and ``reader`` here until time is up; return errors."""
    stop = threading.Event()
    errors: list[BaseException] = []

    def loop():
        try:
            while not stop.is_set():
                hammer()
        except BaseException as exc:  # report, do not hide, a failure of the hammer side
            errors.append(exc)

    t = threading.Thread(target=loop)
    t.start()
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline and not errors:
            reader()
    except RuntimeError as exc:
        errors.append(exc)
    finally:
        stop.set()
        t.join()
    return errors


def test_free_and_listing_survive_blocks_dropped_from_a_thread(tmp_path: Path,
                                                               tiny_switch_interval):
    store = BlockStore(tmp_path, NullDB(), budget=1 << 40)
    for i in range(2000):
        store.add(Resident("keep", i, 0, None, 0, FakeMatrix(10)))
    counter = iter(range(10**9))

    def hammer():   # a compute thread: deploys and drops (as holder.drop does)
        name = f"m{next(counter) % 7}"
        for i in range(50):
            store.add(Resident(name, i, 0, None, 0, FakeMatrix(1)))
        store.drop(name)

    def reader():   # the event loop: advert and status
        store.free
        store.names()
        for _ in store.blocks():
            pass

    assert _run_against(hammer, reader) == []
    assert store.resident_bytes == sum(b.nbytes for b in store.blocks())


def test_byte_accounting_stays_exact_under_concurrent_add_and_drop(tmp_path: Path):
    store = BlockStore(tmp_path, NullDB(), budget=1 << 40)

    def worker(k: int):
        for round_ in range(200):
            name = f"w{k}"
            for i in range(5):
                store.add(Resident(name, i, 0, None, 0, FakeMatrix(100 + i)))
            store.drop(name)
        store.add(Resident(f"w{k}", 0, 0, None, 0, FakeMatrix(7)))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.resident_bytes == 4 * 7
    assert store.free == (1 << 40) - 28


def test_dual_memory_saves_from_the_db_thread_while_the_loop_records(tmp_path: Path,
                                                                     tiny_switch_interval):
    mem = DualMemory()
    conn = sqlite3.connect(":memory:", check_same_thread=False)
    conn.executescript("CREATE TABLE short_term (key TEXT PRIMARY KEY, value BLOB, updated REAL);"
                       "CREATE TABLE long_term (key TEXT PRIMARY KEY, value BLOB, updated REAL);")
    for i in range(3000):
        mem.record_share(f"p{i % 5}", 1e9, 0.1, True, now=i)
        mem.record_request(f"m{i % 3}", 0.01, now=i)
    counter = iter(range(10**9))

    def hammer():   # the event loop: observations and consolidation keep coming
        i = next(counter)
        mem.record_share(f"p{i % 11}", 1e9, 0.1, i % 3 != 0)
        mem.record_request(f"m{i % 13}", 0.01)
        if i % 500 == 0:
            mem.consolidate()

    def reader():   # the database thread's save
        mem.save(conn)

    assert _run_against(hammer, reader) == []
    restored = DualMemory()
    restored.load(conn)
    assert set(restored.peers) >= {f"p{i}" for i in range(5)}


def test_statedb_save_runs_on_its_own_thread_and_round_trips(tmp_path: Path):
    db = StateDB(tmp_path / "state.db")
    try:
        mem = DualMemory()
        mem.record_share("p", 2e9, 1.0, True, now=1)
        mem.consolidate(now=2)
        db.call(mem.save)
        again = DualMemory()
        db.call(again.load)
        assert again.peer_speed("p") == pytest.approx(2.0)
    finally:
        db.close()
