"""Test-side helpers around :mod:`node.localmesh` (real daemon processes)."""

from __future__ import annotations

import subprocess
import sys

from node.localmesh import ROOT, DaemonProc, LocalMesh, sedma_env, wait_for  # noqa: F401


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``sedma ARGS`` as a user would; returns the finished process."""
    return subprocess.run([sys.executable, "-m", "node", *args], capture_output=True,
                          text=True, timeout=timeout, env=sedma_env(), cwd=ROOT)


class Cluster(LocalMesh):
    """A LocalMesh that a test owns: killed outright at the end (no grace needed)."""

    def cleanup(self) -> None:
        for node in self.nodes:
            if node.proc is not None and node.proc.poll() is None:
                node.proc.kill()
                node.proc.wait(10)
            node.stop()
