"""Real daemons as subprocesses, for tests: start, wait until ready, kill, clean up.

Every wait is bounded and polls the daemon's own socket (the daemon is another process,
so there is nothing to await); every process started is killed when the test ends.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from node.client import Client, DaemonError

ROOT = Path(__file__).resolve().parent.parent


def wait_for(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.1):
    """Poll ``predicate`` until it returns a truthy value; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except (DaemonError, OSError, KeyError) as exc:
            last_exc = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}"
                         + (f" (last error: {last_exc})" if last_exc else ""))


def sedma_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("SEDMA_SOCKET", None)
    return env


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``sedma ARGS`` as a user would; returns the finished process."""
    return subprocess.run([sys.executable, "-m", "node", *args], capture_output=True,
                          text=True, timeout=timeout, env=sedma_env(), cwd=ROOT)


class DaemonProc:
    """One ``sedma daemon`` subprocess with its own data dir."""

    def __init__(self, data_dir: Path, name: str, bootstrap: list[str] = (), extra: list[str] = (),
                 listen: str = "127.0.0.1:0") -> None:
        self.data_dir = data_dir
        self.name = name
        self.bootstrap = list(bootstrap)
        self.extra = list(extra)
        self.listen = listen
        self.proc: subprocess.Popen | None = None
        self.log_path = data_dir.parent / f"{name}.log"

    @property
    def socket(self) -> Path:
        return self.data_dir / "sedma.sock"

    def start(self, timeout: float = 30) -> "DaemonProc":
        cmd = [sys.executable, "-m", "node", "daemon", "--listen", self.listen,
               "--data-dir", str(self.data_dir), "--name", self.name, *self.extra]
        for b in self.bootstrap:
            cmd += ["--bootstrap", b]
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT,
                                     env=sedma_env(), cwd=ROOT)
        wait_for(self._ready, timeout, f"daemon {self.name} to serve its socket")
        return self

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"daemon {self.name} exited with {self.proc.returncode}:\n"
                                 + self.log_path.read_text()[-3000:])
        return self.socket.exists() and bool(self.status())

    def client(self) -> Client:
        return Client(self.socket).__enter__()

    def status(self) -> dict:
        with Client(self.socket) as c:
            return c.status()

    def peers(self) -> list[dict]:
        with Client(self.socket) as c:
            return c.peers()

    @property
    def address(self) -> str:
        return self.status()["addresses"][0]

    @property
    def id(self) -> str:
        return self.status()["id"]

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self, timeout: float = 30) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if getattr(self, "log", None):
            self.log.close()


class Cluster:
    """A set of daemons on loopback joined through the first one."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.nodes: list[DaemonProc] = []

    def add(self, name: str | None = None, extra: list[str] = (), bootstrap: bool = True) -> DaemonProc:
        name = name or f"n{len(self.nodes) + 1}"
        boot = [self.nodes[0].address] if bootstrap and self.nodes else []
        node = DaemonProc(self.root / name, name, boot, extra).start()
        self.nodes.append(node)
        return node

    def start(self, n: int, extra: list[str] = ()) -> "Cluster":
        for _ in range(n):
            self.add(extra=extra)
        return self

    def wait_converged(self, alive: int, nodes: list[DaemonProc] | None = None,
                       timeout: float = 30) -> None:
        """Every given node sees exactly ``alive`` other members alive."""
        for node in nodes or self.nodes:
            wait_for(lambda: sum(p["state"] == "alive" for p in node.peers()) == alive,
                     timeout, f"{node.name} to see {alive} alive peers")

    def cleanup(self) -> None:
        for node in self.nodes:
            node.cleanup()

    def logs(self) -> str:
        return "\n".join(f"--- {n.name}\n" + n.log_path.read_text()[-4000:]
                         for n in self.nodes if n.log_path.exists())
