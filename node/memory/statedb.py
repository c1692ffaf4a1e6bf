"""The node's SQLite database: one file, WAL journal, every commit durable.

Why SQLite: it gives atomic, crash-safe commits (``synchronous=FULL`` with WAL survives
``kill -9`` and power loss for committed transactions) with no server to run. All access goes
through one dedicated thread so the event loop never blocks on ``fsync``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import sqlite3
from pathlib import Path
from typing import Any, Callable, TypeVar

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS blocks (
    name TEXT NOT NULL, idx INTEGER NOT NULL, row_start INTEGER NOT NULL,
    rows INTEGER NOT NULL, cols INTEGER NOT NULL, device TEXT, seed INTEGER NOT NULL,
    file TEXT NOT NULL, nbytes INTEGER NOT NULL, created REAL NOT NULL,
    PRIMARY KEY (name, idx));
CREATE TABLE IF NOT EXISTS plans (
    name TEXT PRIMARY KEY, plan BLOB NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, kind TEXT NOT NULL, state TEXT NOT NULL, submitted REAL NOT NULL,
    finished REAL, error TEXT, detail BLOB);
CREATE TABLE IF NOT EXISTS short_term (
    key TEXT PRIMARY KEY, value BLOB NOT NULL, updated REAL NOT NULL);
CREATE TABLE IF NOT EXISTS long_term (
    key TEXT PRIMARY KEY, value BLOB NOT NULL, updated REAL NOT NULL);
"""


class StateDB:
    """A serialised connection to ``state.db`` in the data directory."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="sedma-db")
        self._conn: sqlite3.Connection = self._pool.submit(self._open).result()

    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.executescript(SCHEMA)
        return conn

    def call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(conn)`` on the database thread and wait (for startup and shutdown)."""
        return self._pool.submit(self._txn, fn).result()

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(conn)`` in one transaction on the database thread."""
        return await asyncio.wrap_future(self._pool.submit(self._txn, fn))

    def _txn(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = fn(conn)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return result

    def close(self) -> None:
        self._pool.submit(self._conn.close).result()
        self._pool.shutdown(wait=True)


def rows(conn: sqlite3.Connection, sql: str, *args: Any) -> list[tuple]:
    return conn.execute(sql, args).fetchall()
