"""How a fresh two-daemon mesh splits a run of one-shot matmul jobs (issue 13, oneshot5).

Each job's split as the coordinator chose it (``by``: capacity, measure or transfer), the
rows per node, the model's predicted finish and the measured figures it used (from the
coordinator's log: GFLOP/s per node, the peer's path and hand-over MB/s, and this node's
speed beside peers' shares), with the job's wall time. Why a script of its own: the split
is chosen from measurements, so what it does on a given machine is a measurement too.

Run by hand:  python bench/oneshot_splits.py [--n 2048] [--jobs 12] [--slowdown F]
(``--slowdown F``: the coordinator's compute threads held F times longer, a slower
machine, as in tests/test_oneshot_split_daemons.py.)
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from node.client import Client  # noqa: E402
from node.localmesh import LocalMesh  # noqa: E402

FIGURES = re.compile(r"measured GFLOP/s, path and hand-over MB/s: (\{.*?\})(?:; this node "
                     r"beside peers' shares ([0-9.]+) GFLOP/s)?")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2048)
    ap.add_argument("--jobs", type=int, default=12)
    ap.add_argument("--slowdown", type=float, default=0.0)
    args = ap.parse_args()
    rng = np.random.default_rng(1)
    a = rng.standard_normal((args.n, args.n), dtype=np.float32)
    b = rng.standard_normal((args.n, args.n), dtype=np.float32)
    load = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory(prefix="sedma-splits-") as tmp:
        with LocalMesh(Path(tmp)) as mesh:
            extra = ["--compute-slowdown", str(args.slowdown)] if args.slowdown else []
            coord = mesh.add("n1", extra=extra)
            peer = mesh.add("n2")
            mesh.wait_converged(alive=1)
            cid, pid = coord.id, peer.id
            names = {cid: "coordinator", pid: "peer"}
            with Client(coord.socket) as c:
                for _ in range(args.jobs):
                    t = time.perf_counter()
                    c.matmul(a, b)
                    rows.append((time.perf_counter() - t, c.jobs()[-1]))
            mesh.stop()
        log = coord.log_path.read_text(errors="replace")
    figures = {m.start(): m.groups() for m in FIGURES.finditer(log)}
    ids = [job["id"] for _, job in rows]
    print(f"oneshot_splits: N={args.n}, {args.jobs} jobs on a fresh 2-daemon mesh; load "
          f"{load:.2f} -> {os.getloadavg()[0]:.2f}\n")
    print("| job | by | rows (coordinator / peer) | predicted ms | wall ms | measured figures "
          "(GFLOP/s, path MB/s, hand-over MB/s; this node beside peers, GFLOP/s) |")
    print("|---:|---|---|---|---:|---|")
    for i, (wall, job) in enumerate(rows, 1):
        split = job.get("split", {})
        placed = job.get("placement", {})
        cells = " / ".join(str(placed.get(nid, 0)) for nid in (cid, pid))
        predicted = ", ".join(f"{names.get(n, n[:8])} {t:.0f}"
                              for n, t in split.get("predicted_ms", {}).items())
        pos = log.find(f"job {ids[i - 1]}: transfer-aware split")
        got = next((g for start, g in figures.items() if start >= pos), None) if pos >= 0 else None
        measured = "" if got is None else re.sub(
            "|".join(re.escape(f"'{n[:8]}'") for n in names),
            lambda m: names[next(n for n in names if m.group(0) == f"'{n[:8]}'")],
            got[0]) + (f"; {got[1]}" if got[1] else "")
        print(f"| {i} | {split.get('by', '?')} | {cells} | {predicted} | {wall * 1e3:.0f} | "
              f"{measured} |")


if __name__ == "__main__":
    main()
