"""Real ``python -m node daemon`` processes inside lab namespaces, and their CLI.

The local API is a Unix socket in the daemon's data directory; Unix sockets live in the file
system, not in a network namespace, so the test process talks to every daemon directly.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from tests.natlab.lab import REPO, Lab


def daemon_unavailable() -> str:
    """Why real daemons cannot run from this tree ('' if they can)."""
    try:
        import node.daemon  # noqa: F401
    except ImportError as exc:
        return f"the daemon (node/daemon.py) is not runnable on this branch yet: {exc}"
    return ""


@dataclass
class Daemon:
    name: str
    ns: str
    data_dir: Path
    proc: subprocess.Popen

    @property
    def socket(self) -> str:
        return str(self.data_dir / "sedma.sock")

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "node", *args, "--socket", self.socket],
                              cwd=REPO, capture_output=True, text=True, timeout=timeout)

    def json(self, command: str) -> Any:
        out = self.cli(command, "--json")
        if out.returncode != 0:
            raise AssertionError(f"{self.name}: sedma {command} failed: {out.stderr}")
        return json.loads(out.stdout)

    def log(self) -> str:
        path = self.data_dir.parent / f"{self.name}.log"
        return path.read_text(errors="replace") if path.exists() else ""


def lab_key(lab: Lab) -> Path:
    """The lab mesh's cluster key (daemons on public addresses must be keyed)."""
    path = lab.workdir / "cluster.key"
    if not path.exists():
        from node.net.identity import new_cluster_key, write_private
        write_private(path, new_cluster_key())
    return path


def start_daemon(lab: Lab, name: str, ns: str, listen: str, *flags: str) -> Daemon:
    """Start one daemon in ``ns``; its output goes to ``<workdir>/<name>.log``."""
    data_dir = lab.workdir / name
    data_dir.mkdir(parents=True, exist_ok=True)
    log = open(lab.workdir / f"{name}.log", "wb")
    argv = lab.python_argv(ns, "node", "daemon", "--name", name, "--listen", listen,
                           "--data-dir", str(data_dir), "--log-level", "DEBUG",
                           "--cluster-key", str(lab_key(lab)), *flags)
    proc = subprocess.Popen(argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    lab.track(proc)
    daemon = Daemon(name, ns, data_dir, proc)
    wait_until(lambda: Path(daemon.socket).exists(), 30, f"{name} to open its socket",
               daemon)
    return daemon


def wait_until(check: Callable[[], Any], timeout: float, what: str, *daemons: Daemon) -> Any:
    """Poll ``check`` until it returns something truthy; AssertionError (with logs) if not."""
    deadline = time.monotonic() + timeout
    while True:
        for d in daemons:
            if d.proc.poll() is not None:
                raise AssertionError(f"{d.name} exited ({d.proc.returncode}): {d.log()[-3000:]}")
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {d.name}\n{d.log()[-3000:]}" for d in daemons)
            raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{tails}")
        time.sleep(0.5)


def links(daemon: Daemon) -> dict[str, dict]:
    """This daemon's view of its peers, by name."""
    return {p["name"]: p for p in daemon.json("peers")}
