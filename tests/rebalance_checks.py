"""What the real-daemon rebalance tests watch while blocks move: a background client that
checks every answer, how many live nodes hold each block, and whether a node was left;
and the set-up the kill-mid-copy tests share."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from node.client import Client
from node.localmesh import DaemonProc


def rand(shape, seed):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def half_copies(node: DaemonProc) -> list[Path]:
    """Block files a copy is still writing on ``node`` (temp files, before the rename)."""
    return sorted((node.data_dir / "blocks").glob("*/*.blk.tmp"))


def fast_control(tmp_path: Path, dwell_s: float) -> list[str]:
    """Daemon flags for a control loop that acts within seconds (a pass every 2 s, the
    given dwell) and the same advertised capacity on every node."""
    conf = tmp_path / "fast.toml"
    conf.write_text(f"reconfigure_every = 2.0\nrebalance_dwell_s = {dwell_s}\n")
    return ["--capacity", "10", "--config", str(conf)]


def pausing_copies(cluster, name: str, entry: DaemonProc, flags: list[str],
                   pause_s: float) -> DaemonProc:
    """A daemon whose received copies pause half-written for ``pause_s`` (the testing aid
    ``SEDMA_TEST_PAUSE_COPY_S``), joined through ``entry``."""
    node = DaemonProc(cluster.root / name, name, [entry.address], flags,
                      prefix=["env", f"SEDMA_TEST_PAUSE_COPY_S={pause_s:g}"])
    cluster.nodes.append(node.start())
    return node


class ExactLoad:
    """A thread sending ``infer(name, X)`` through ``node`` until stopped, checking each
    answer against ``W @ X``; failures are kept for the test's final assert."""

    def __init__(self, node, name: str, w: np.ndarray, rows: int, cols: int = 8) -> None:
        self.node, self.name, self.w = node, name, w
        self.shape = (rows, cols)
        self.served = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "ExactLoad":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(60)

    def _run(self) -> None:
        with Client(self.node.socket) as c:
            i = 0
            while not self._stop.is_set():
                x = np.random.default_rng(i).standard_normal(self.shape).astype(np.float32)
                try:
                    np.testing.assert_allclose(c.infer(self.name, x), self.w @ x,
                                               rtol=1e-4, atol=1e-3)
                    self.served += 1
                except Exception as exc:  # reported by the test's assert on failures
                    self.failures.append(repr(exc))
                i += 1


def held(nodes, name: str) -> dict[int, int]:
    """How many of ``nodes`` hold each block of ``name``."""
    out: dict[int, int] = {}
    for node in nodes:
        for idx in node.status()["blocks"].get(name, []):
            out[int(idx)] = out.get(int(idx), 0) + 1
    return out


def migrated_off(nodes, source: str) -> bool:
    """Whether any node recorded a migration away from ``source``."""
    for node in nodes:
        with Client(node.socket) as c:
            if any(d["kind"] == "migrate" and d["source"] == source
                   for d in c.memory()["decisions"]):
                return True
    return False
