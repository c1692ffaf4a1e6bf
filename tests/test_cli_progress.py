"""Progress of long transfers: the client reports every chunk it sends and receives, and
the CLI draws a bar from it only for a person at a terminal (never for --json or a pipe)."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import struct
import subprocess
import sys
import termios

import numpy as np

from node.client import CHUNK, Client
from tests.daemons import ROOT, run_cli, sedma_env


def rand(shape, seed):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, int, int]] = []

    def __call__(self, phase: str, done: int, total: int) -> None:
        self.events.append((phase, done, total))

    def phase(self, name: str) -> list[tuple[int, int]]:
        return [(d, t) for p, d, t in self.events if p == name]


def check_complete(points: list[tuple[int, int]], at_least: int) -> None:
    """Monotonic, one total, ending at it, reported chunk by chunk."""
    totals = {t for _, t in points}
    assert len(totals) == 1 and totals.pop() >= at_least
    done = [d for d, _ in points]
    assert done == sorted(done) and done[0] == 0 and done[-1] == points[-1][1]
    assert len(points) >= at_least // CHUNK


def test_client_reports_uploads_and_downloads_chunk_by_chunk(cluster):
    n1 = cluster.add("n1", extra=["--capacity", "10"])
    w = rand((3000, 1500), 1)                     # 18 MB up
    a, b = rand((2000, 64), 2), rand((64, 1500), 3)   # 12 MB result down
    with Client(n1.socket) as c:
        up = Recorder()
        c.deploy("big", w, replicas=1, progress=up)
        check_complete(up.phase("upload"), w.nbytes)
        job = c.submit_matmul(a, b)
        assert c.wait(job, 120)["state"] == "done"
        down = Recorder()
        got = c.result(job, progress=down)
        check_complete(down.phase("download"), a.shape[0] * b.shape[1] * 4)
        np.testing.assert_array_equal(got, c.result(job))     # same bytes either way
        x = rand((1500, 4), 4)
        np.testing.assert_array_equal(c.infer("big", x, 7, progress=Recorder()),
                                      c.infer("big", x, 7))


def run_in_terminal(*args: str, timeout: float = 120) -> tuple[int, str]:
    """Run ``sedma ARGS`` with stdout and stderr on a pseudo-terminal; return its output."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    env = sedma_env() | {"TERM": "xterm-256color", "COLUMNS": "120"}
    proc = subprocess.Popen([sys.executable, "-m", "node", *args], stdin=subprocess.DEVNULL,
                            stdout=slave, stderr=slave, env=env, cwd=ROOT)
    os.close(slave)
    out = bytearray()
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:            # EIO: the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    return proc.wait(timeout), out.decode(errors="replace")


def test_cli_draws_a_bar_only_at_a_terminal(cluster, tmp_path):
    n1 = cluster.add("n1", extra=["--capacity", "10"])
    path = tmp_path / "w.npy"
    np.save(path, rand((2048, 1024), 5))          # 8 MiB: over the bar's threshold
    sock = ["--socket", str(n1.socket)]

    code, shown = run_in_terminal("deploy", "tty", str(path), "--replicas", "1", *sock)
    assert code == 0, shown
    assert "sending to the daemon" in shown and "8.0 MiB" in shown
    assert "deployed tty (2048x1024)" in shown

    piped = run_cli("deploy", "piped", str(path), "--replicas", "1", *sock)
    assert piped.returncode == 0, piped.stderr
    assert "sending" not in piped.stdout + piped.stderr and "MiB" not in piped.stderr

    code, shown = run_in_terminal("deploy", "asjson", str(path), "--replicas", "1", "--json",
                                  *sock)
    assert code == 0 and "sending" not in shown
    assert json.loads(shown)["state"] == "done"


def test_cli_submit_shows_the_upload_and_the_result_download(cluster, tmp_path):
    n1 = cluster.add("n1", extra=["--capacity", "10"])
    a, b = tmp_path / "a.npy", tmp_path / "b.npy"
    np.save(a, rand((4096, 512), 6))              # 8 MiB up
    np.save(b, rand((512, 300), 7))               # result 4.7 MiB down
    out = tmp_path / "c.npy"
    code, shown = run_in_terminal("submit", "matmul", str(a), str(b), "-o", str(out),
                                  "--socket", str(n1.socket))
    assert code == 0, shown
    assert "sending to the daemon" in shown and "receiving the result" in shown
    assert np.load(out).shape == (4096, 300)
