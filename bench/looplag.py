"""Event-loop lag of two daemons while one coordinates a ~1 GB matmul.

Each daemon reports, in ``status['loop_lag']``, the worst wall-clock lag of a 20 ms ticker
and the worst CPU time its loop thread spent between two ticks (which bounds the longest
callback, whatever the rest of the machine is doing). This script prints both, measured
idle and over the job, with the host's load average, so the two can be told apart.

Run by hand:  python bench/looplag.py [--mb 1000] [--runs 2]
Prints a markdown table and writes it to bench/out/looplag.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from node.client import Client  # noqa: E402
from node.localmesh import LocalMesh  # noqa: E402
from node.work.jobs import MAX_JOB_BYTES  # noqa: E402

OUT = Path(__file__).resolve().parent / "out"


def lag(node) -> dict:
    return node.status()["loop_lag"]


def one_run(mb: int) -> list[tuple]:
    k, n = 10_000, 4
    m = min(mb * 1_000_000 // 4 // k, (MAX_JOB_BYTES // 4 - k * n) // (k + n))
    rng = np.random.default_rng(7)
    a = rng.standard_normal((m, k), dtype=np.float32)
    b = rng.standard_normal((k, n), dtype=np.float32)
    rows = []
    with tempfile.TemporaryDirectory() as tmp, LocalMesh(Path(tmp)) as mesh:
        mesh.start(2, extra=["--capacity", "10"])
        mesh.wait_converged(alive=1)
        time.sleep(2)
        idle = {nd.name: lag(nd) for nd in mesh.nodes}
        load_idle = os.getloadavg()[0]
        start = time.perf_counter()
        with Client(mesh.nodes[0].socket) as c:
            c.matmul(a, b, device="ideal", timeout=900)
        took = time.perf_counter() - start
        load_job = os.getloadavg()[0]
        for nd in mesh.nodes:
            after = lag(nd)
            suspect = sum(p["state"] != "alive" for p in nd.peers())
            rows.append((nd.name, a.nbytes / 1e6, took, idle[nd.name]["worst_ms"],
                         idle[nd.name]["worst_cpu_ms"], after["worst_ms"],
                         after["worst_cpu_ms"], load_idle, load_job, suspect))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=1000, help="size of A in MB (capped by the job limit)")
    ap.add_argument("--runs", type=int, default=2)
    args = ap.parse_args()
    lines = ["| run | node | A (MB) | job (s) | idle wall lag (ms) | idle loop CPU (ms) | "
             "job wall lag (ms) | job loop CPU (ms) | load idle | load job | peers not alive |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for run in range(args.runs):
        for r in one_run(args.mb):
            lines.append(f"| {run + 1} | {r[0]} | {r[1]:.0f} | {r[2]:.1f} | {r[3]:.0f} | "
                         f"{r[4]:.1f} | {r[5]:.0f} | {r[6]:.1f} | {r[7]:.1f} | {r[8]:.1f} | "
                         f"{r[9]} |")
    table = "\n".join(lines)
    print(table)
    OUT.mkdir(exist_ok=True)
    (OUT / "looplag.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
