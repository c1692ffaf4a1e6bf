"""Infer latency of two source trees in lockstep, for an A/B on a shared, noisy machine.

Alternating whole benchmark runs (A, then B, then A...) compares minutes, and on this
2-core machine other people's work changes from one minute to the next by more than the
difference being measured. Here each tree gets its own two-daemon mesh (N x N W deployed
once, one row block per daemon, replicas 1) and its own client process, started from
that tree, and the requests alternate one by one: A's request, then B's, then A's... So
both see the same machine within a few tens of milliseconds, and the ratio of their
medians is what the trees differ by. Only one mesh works at a time (the other is idle).

    python bench/infer_ab.py --a /work/main --b /work/wt/loop5 [--n 4096] [--batch 64]
                             [--requests 300] [--shm | --socket]

Prints p50/p90 latency of each tree, the ratio, and each mesh's CPU per request (all
threads and the event loop) and its client's.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

#: Runs in a child process with one tree first on sys.path: starts that tree's mesh and
#: answers "go" lines with one request's latency (ms); "cpu" with CPU ms so far
#: (coordinator all, coordinator loop, peer all, peer loop, this client).
CHILD = r"""
import asyncio, os, sys, tempfile, time
from pathlib import Path
tree, n, b, use_shm = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "shm"
sys.path.insert(0, tree)
import numpy as np
from node.client import AsyncClient, Client
from node.localmesh import LocalMesh

def cpu(pid, tid=None):
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    f = Path(path).read_text().rpartition(")")[2].split()
    return (int(f[11]) + int(f[12])) * 1e3 / os.sysconf("SC_CLK_TCK")

async def serve(sock, x, pids):
    async with AsyncClient(sock, use_shm=use_shm) as c:
        for _ in range(5):
            await c.infer("w", x)
        print("ready", flush=True)
        for line in sys.stdin:
            if line.startswith("go"):
                t = time.perf_counter()
                await c.infer("w", x)
                print(f"{(time.perf_counter() - t) * 1e3:.3f}", flush=True)
            elif line.startswith("cpu"):
                vals = [f(p) for p in pids for f in (lambda p: cpu(p), lambda p: cpu(p, p))]
                print(" ".join(f"{v:.1f}" for v in vals + [time.process_time() * 1e3]), flush=True)
            else:
                return

rng = np.random.default_rng(0)
w = rng.standard_normal((n, n), dtype=np.float32)
x = rng.standard_normal((n, b), dtype=np.float32)
with tempfile.TemporaryDirectory(prefix="sedma-ab-") as tmp, LocalMesh(Path(tmp)) as mesh:
    coord = mesh.add("n1"); peer = mesh.add("n2"); mesh.wait_converged(alive=1)
    with Client(coord.socket) as c:
        c.deploy("w", w, device="ideal", replicas=1)
    asyncio.run(serve(coord.socket, x, [coord.proc.pid, peer.proc.pid]))
    mesh.stop()
"""


class Side:
    """One tree's mesh and client, driven line by line."""

    def __init__(self, tree: str, n: int, b: int, transport: str) -> None:
        self.tree = tree
        self.proc = subprocess.Popen([sys.executable, "-c", CHILD, tree, str(n), str(b),
                                      transport], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, cwd=tree)
        if self._read() != "ready":
            raise RuntimeError(f"{tree}: the mesh did not start")
        self.lat: list[float] = []

    def _read(self) -> str:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.tree}: the client process ended")
        return line.strip()

    def ask(self, what: str) -> str:
        self.proc.stdin.write(what + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        try:
            self.proc.stdin.write("stop\n")
            self.proc.stdin.close()
            self.proc.wait(60)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait(10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--a", required=True, help="source tree A (its own node/ package)")
    ap.add_argument("--b", required=True, help="source tree B")
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--socket", action="store_true", help="operands through the socket")
    args = ap.parse_args()
    transport = "socket" if args.socket else "shm"
    load0 = os.getloadavg()[0]
    sides = [Side(args.a, args.n, args.batch, transport)]
    try:
        sides.append(Side(args.b, args.n, args.batch, transport))
        cpu0 = [list(map(float, s.ask("cpu").split())) for s in sides]
        for _ in range(args.requests):
            for s in sides:
                s.lat.append(float(s.ask("go")))
        cpu1 = [list(map(float, s.ask("cpu").split())) for s in sides]
    finally:
        for s in sides:
            s.close()
    print(f"infer_ab: N={args.n}, B={args.batch}, {args.requests} requests each, {transport}, "
          f"alternating one by one; load {load0:.2f} -> {os.getloadavg()[0]:.2f}\n")
    print("| tree | p50 ms | p90 ms | coordinator CPU/req ms (loop) | peer CPU/req ms (loop) "
          "| client CPU/req ms |\n|---|---:|---:|---:|---:|---:|")
    p50 = []
    for s, c0, c1 in zip(sides, cpu0, cpu1):
        d = [(y - x) / args.requests for x, y in zip(c0, c1)]
        lat = sorted(s.lat)
        p50.append(statistics.median(lat))
        print(f"| {s.tree} | {p50[-1]:.2f} | {lat[int(0.9 * len(lat))]:.2f} | {d[0]:.2f} ({d[1]:.2f}) "
              f"| {d[2]:.2f} ({d[3]:.2f}) | {d[4]:.2f} |")
    print(f"\np50 B / A: {p50[1] / p50[0]:.3f}")


if __name__ == "__main__":
    main()
