"""kill -9 in a loop during deploys and dual-memory writes: nothing committed is lost.

One real daemon, restarted ``ROUNDS`` times on the same data dir. Each round a client
thread deploys new matrices back to back and sends infer requests (which the dual memory
records and persists every 0.2 s here), and the daemon is killed with SIGKILL at a random
moment. After every kill and restart:

- ``state.db`` passes SQLite's integrity check;
- every block row has its file, every block file its row, and no temp file is left;
- every deployment the daemon lists serves ``W @ x`` exactly, and every deploy a client
  saw finish is among them;
- no block is held for a deployment that never committed (an interrupted deploy of this
  node's is dropped at start);
- the dual memory reloads (what it learned survives).
"""

from __future__ import annotations

import random
import sqlite3
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from node.client import Client, DaemonError
from tests.daemons import DaemonProc

ROUNDS = 8


def weights(name: str) -> np.ndarray:
    seed = int.from_bytes(name.encode(), "little") % (2**32)
    return np.random.default_rng(seed).standard_normal((512, 128)).astype(np.float32)


class Workload(threading.Thread):
    """Deploys and infers until the daemon dies under it; remembers what finished."""

    def __init__(self, socket: Path, round_: int, committed: set[str]) -> None:
        super().__init__(daemon=True)
        self.socket, self.round, self.committed = socket, round_, committed
        self.errors: list[str] = []

    def run(self) -> None:
        try:
            with Client(self.socket) as c:
                for i in range(10_000):
                    name = f"r{self.round}m{i}"
                    c.deploy(name, weights(name), replicas=1)
                    self.committed.add(name)        # the client saw it finish
                    c.infer(name, np.ones((128, 2), np.float32))
        except (DaemonError, OSError, ConnectionError, EOFError) as exc:
            self.errors.append(repr(exc))          # the kill: expected
        except Exception as exc:                   # anything else is a finding
            self.errors.append(f"UNEXPECTED {exc!r}")


def check_db(data_dir: Path) -> list[tuple[str, int, str]]:
    conn = sqlite3.connect(f"file:{data_dir / 'state.db'}?mode=ro", uri=True)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        return conn.execute("SELECT name, idx, file FROM blocks").fetchall()
    finally:
        conn.close()


def check_consistent(node: DaemonProc, committed: set[str]) -> int:
    rows = check_db(node.data_dir)
    blocks_dir = node.data_dir / "blocks"
    on_disk = {str(p.relative_to(blocks_dir)) for p in blocks_dir.glob("*/*")}
    assert on_disk == {f for _, _, f in rows}, "block files and rows disagree"
    assert not list(node.data_dir.rglob("*.tmp")), "temp files left behind"
    with Client(node.socket) as c:
        status = c.status()
        deployed = set(status["deployments"])
        assert committed <= deployed, f"lost acknowledged deploys: {committed - deployed}"
        assert set(status["blocks"]) <= deployed, "blocks held for an uncommitted deploy"
        x = np.random.default_rng(0).standard_normal((128, 3)).astype(np.float32)
        for name in sorted(deployed):
            want = weights(name) @ x
            got = c.infer(name, x)
            assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max(), name
        assert status["memory_patterns"]["window_s"] > 0
    return len(deployed)


@pytest.mark.slow
def test_kill9_in_a_loop_during_deploys_and_memory_writes(tmp_path):
    cfg = tmp_path / "node.toml"
    cfg.write_text("memory_save_every = 0.2\n")
    node = DaemonProc(tmp_path / "n1", "n1", extra=["--capacity", "10", "--config", str(cfg)])
    committed: set[str] = set()
    rng = random.Random(9)
    served = []
    try:
        for round_ in range(ROUNDS):
            node.start()
            served.append(check_consistent(node, committed))
            work = Workload(node.socket, round_, committed)
            work.start()
            time.sleep(rng.uniform(0.3, 2.5))
            node.kill9()
            work.join(30)
            assert not work.is_alive()
            assert not [e for e in work.errors if e.startswith("UNEXPECTED")], work.errors
            check_db(node.data_dir)
        node.start()
        served.append(check_consistent(node, committed))
        with Client(node.socket) as c:
            learned = c.status()["memory_patterns"]
    finally:
        node.stop()
    print(f"{ROUNDS} kills; deployments served after each restart: {served}; "
          f"acknowledged deploys: {len(committed)}; memory: {learned}")
    assert served[-1] >= len(committed) > 0
