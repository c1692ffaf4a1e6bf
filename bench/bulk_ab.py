"""The bulk path of two source trees side by side: deploy MB/s and oneshot latency (issue 13).

Each tree (a checkout or worktree of sedma, e.g. main and a branch) gets its own fresh
2-daemon loopback mesh per round, started from that tree (the daemons run the tree's
code); rounds alternate which tree goes first, so load swings hit both. Per round and
tree: two deploys of the same W (replicas 1; the first pays the first link between the
daemons), the MB/s of writing W once with fsync to the same disk right after, and
optionally `submit matmul` N x N against in-process numpy (median of 3).

Run by hand:  python bench/bulk_ab.py --trees /work/main . [--n 4096] [--rounds 3] [--oneshot-n 2048]
Prints one line per round and tree; medians at the end. Needs no daemon of its own.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

CHILD = r'''
import json, os, sys, tempfile, time
from pathlib import Path
sys.path.insert(0, os.getcwd())
import numpy as np
from node.client import Client
from node.localmesh import LocalMesh
n, m = int(sys.argv[1]), int(sys.argv[2])
w = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
out = {}
with tempfile.TemporaryDirectory(prefix="sedma-ab-") as tmp, LocalMesh(Path(tmp)) as mesh:
    mesh.start(2)
    mesh.wait_converged(alive=1)
    with Client(mesh.nodes[0].socket) as c:
        times = []
        for i in range(2):
            t = time.perf_counter()
            c.deploy(f"w{i}", w, replicas=1)
            times.append(time.perf_counter() - t)
            c.undeploy(f"w{i}")
        out["deploy"] = [w.nbytes / t / 1e6 for t in times]
        probe = Path(tmp) / "probe.bin"
        t = time.perf_counter()
        with open(probe, "wb") as f:
            f.write(memoryview(w).cast("B"))
            f.flush()
            os.fsync(f.fileno())
        out["fsync"] = w.nbytes / (time.perf_counter() - t) / 1e6
        probe.unlink()
        if m:
            rng = np.random.default_rng(1)
            a = rng.standard_normal((m, m), dtype=np.float32)
            b = rng.standard_normal((m, m), dtype=np.float32)
            assert np.allclose(c.matmul(a, b), a @ b, rtol=1e-4, atol=1e-3)
            mine, ref = [], []
            for _ in range(3):
                t = time.perf_counter(); a @ b; ref.append(time.perf_counter() - t)
                t = time.perf_counter(); c.matmul(a, b); mine.append(time.perf_counter() - t)
            out["oneshot_ms"] = sorted(mine)[1] * 1e3
            out["numpy_ms"] = sorted(ref)[1] * 1e3
print(json.dumps(out))
'''


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trees", nargs="+", required=True, help="source trees to compare")
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--oneshot-n", type=int, default=2048, help="0: no oneshot")
    args = ap.parse_args()
    trees = [os.path.abspath(t) for t in args.trees]
    got: dict[str, list[dict]] = {t: [] for t in trees}
    for r in range(args.rounds):
        for tree in trees if r % 2 == 0 else trees[::-1]:
            load = os.getloadavg()[0]
            res = subprocess.run([sys.executable, "-c", CHILD, str(args.n), str(args.oneshot_n)],
                                 cwd=tree, capture_output=True, text=True, timeout=1800)
            if res.returncode:
                print(f"round {r} {tree}: failed\n{res.stderr[-1500:]}", flush=True)
                continue
            d = json.loads(res.stdout.strip().splitlines()[-1])
            d["load"] = load
            got[tree].append(d)
            print(f"round {r} {tree} (load {load:.1f}): deploy "
                  f"{', '.join(f'{v:.0f}' for v in d['deploy'])} MB/s, fsync'd write "
                  f"{d['fsync']:.0f} MB/s" + (f", oneshot {d['oneshot_ms']:.0f} ms vs numpy "
                                              f"{d['numpy_ms']:.0f} ms"
                                              if "oneshot_ms" in d else ""), flush=True)
    print(f"\nmedians, W = {args.n ** 2 * 4 / 2**20:.0f} MiB, 2 daemons, replicas 1:")
    for tree, rows in got.items():
        if not rows:
            continue
        med = lambda xs: statistics.median(xs)   # noqa: E731
        line = (f"- {tree}: first deploy {med([d['deploy'][0] for d in rows]):.0f} MB/s, "
                f"second {med([d['deploy'][1] for d in rows]):.0f} MB/s, fsync'd write "
                f"{med([d['fsync'] for d in rows]):.0f} MB/s")
        if "oneshot_ms" in rows[0]:
            line += (f", oneshot {med([d['oneshot_ms'] for d in rows]):.0f} ms = "
                     f"{med([d['numpy_ms'] / d['oneshot_ms'] for d in rows]):.2f}x numpy")
        print(line + f" ({len(rows)} rounds, load {min(d['load'] for d in rows):.1f}-"
                     f"{max(d['load'] for d in rows):.1f})")


if __name__ == "__main__":
    main()
