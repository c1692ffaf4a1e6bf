"""A mesh of real daemon processes on loopback: for ``sedma demo``, benchmarks and tests.

Each daemon is a ``sedma daemon`` subprocess with its own data dir and an ephemeral port;
the first is the bootstrap of the others. Waits are bounded and poll the daemon's own
socket (another process: there is nothing to await). ``stop()`` sends SIGTERM and
escalates to SIGKILL, so nothing outlives its owner.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from compute.executor import BLAS_THREAD_VARS
from node.client import Client, DaemonError

ROOT = Path(__file__).resolve().parent.parent


def wait_for(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.1):
    """Poll ``predicate`` until it returns a truthy value; raise after ``timeout`` seconds."""
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
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}"
                       + (f" (last error: {last_exc})" if last_exc else ""))


#: Several daemons share one machine here, so each gets a single BLAS thread: OpenBLAS
#: threads spin while idle, and N processes x cores spinning threads starve each other.
BLAS_ENV = {k: os.environ.get("SEDMA_BLAS_THREADS", "1") for k in BLAS_THREAD_VARS}


def sedma_env() -> dict[str, str]:
    """Environment for child daemons: this source tree importable, no inherited socket."""
    env = dict(os.environ)
    env.update(BLAS_ENV)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("SEDMA_SOCKET", None)
    return env


class DaemonProc:
    """One ``sedma daemon`` subprocess with its own data dir."""

    def __init__(self, data_dir: Path, name: str, bootstrap: list[str] = (),
                 extra: list[str] = (), listen: str = "127.0.0.1:0",
                 prefix: list[str] = ()) -> None:
        self.data_dir = data_dir
        self.name = name
        self.bootstrap = list(bootstrap)
        self.extra = list(extra)
        self.listen = listen
        self.prefix = list(prefix)   # e.g. ["ip", "netns", "exec", "ns1"]
        self.proc: subprocess.Popen | None = None
        self.log_path = data_dir.parent / f"{name}.log"
        self._log = None

    @property
    def socket(self) -> Path:
        return self.data_dir / "sedma.sock"

    def command(self) -> list[str]:
        # Each daemon gets its own dashboard port (port 0), so meshes on one machine do not
        # compete for the default; an --http in ``extra`` comes later and wins.
        cmd = [*self.prefix, sys.executable, "-m", "node", "daemon", "--listen", self.listen,
               "--data-dir", str(self.data_dir), "--name", self.name, "--http", "127.0.0.1:0",
               *self.extra]
        for b in self.bootstrap:
            cmd += ["--bootstrap", b]
        return cmd

    def start(self, timeout: float = 60) -> "DaemonProc":
        """Spawn and wait until the socket answers; a daemon that never does is killed."""
        self.spawn()
        try:
            return self.wait_ready(timeout)
        except BaseException:
            self.stop(timeout=5)
            raise

    def spawn(self) -> "DaemonProc":
        """Start the process without waiting for it (see :meth:`wait_ready`)."""
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.command(), stdout=self._log, stderr=subprocess.STDOUT,
                                     env=sedma_env(), cwd=ROOT)
        return self

    def wait_ready(self, timeout: float = 60) -> "DaemonProc":
        wait_for(self._ready, timeout, f"daemon {self.name} to serve its socket")
        return self

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"daemon {self.name} exited with {self.proc.returncode}:\n"
                               + self.log_path.read_text()[-3000:])
        return self.socket.exists() and bool(self.status())

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
        """SIGTERM and wait; returns the exit status."""
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def stop(self, timeout: float = 20) -> None:
        """Graceful stop, escalating to SIGKILL; always reaps the process."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.terminate(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self._log is not None:
            self._log.close()
            self._log = None


class LocalMesh:
    """Daemons on loopback joined through the first one."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.nodes: list[DaemonProc] = []

    def add(self, name: str | None = None, extra: list[str] = (),
            bootstrap: "bool | DaemonProc" = True) -> DaemonProc:
        """Start one more daemon joining through the first node (or through ``bootstrap``,
        or through nobody when it is False)."""
        name = name or f"n{len(self.nodes) + 1}"
        if isinstance(bootstrap, DaemonProc):
            boot = [bootstrap.address]
        else:
            boot = [self.nodes[0].address] if bootstrap and self.nodes else []
        node = DaemonProc(self.root / name, name, boot, extra).start()
        self.nodes.append(node)
        return node

    def start(self, n: int, extra: list[str] = ()) -> "LocalMesh":
        for _ in range(n):
            self.add(extra=extra)
        return self

    def start_parallel(self, n: int, extra: list[str] = (), timeout: float = 120) -> "LocalMesh":
        """Start a bootstrap, then ``n - 1`` joiners at once (faster for big meshes)."""
        if not self.nodes:
            self.add(extra=extra)
        boot = [self.nodes[0].address]
        fresh = [DaemonProc(self.root / f"n{len(self.nodes) + i + 1}", f"n{len(self.nodes) + i + 1}",
                            boot, extra).spawn() for i in range(n - len(self.nodes))]
        self.nodes += fresh
        for node in fresh:
            node.wait_ready(timeout)
        return self

    def wait_converged(self, alive: int, nodes: list[DaemonProc] | None = None,
                       timeout: float = 30) -> None:
        """Every given node sees exactly ``alive`` other members alive."""
        for node in nodes or self.nodes:
            wait_for(lambda: sum(p["state"] == "alive" for p in node.peers()) == alive,
                     timeout, f"{node.name} to see {alive} alive peers")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> "LocalMesh":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def logs(self, tail: int = 4000) -> str:
        return "\n".join(f"--- {n.name}\n" + n.log_path.read_text()[-tail:]
                         for n in self.nodes if n.log_path.exists())
