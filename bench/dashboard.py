"""What the dashboard costs: /metrics and /api/snapshot latency on a busy-ish node, and the
overhead of observing a transfer in chunks (the CLI's progress bar) vs one write.

Run by hand:  python bench/dashboard.py [--scrapes 200] [--mb 64] [--runs 5]
Starts a 2-node loopback mesh, deploys a few matrices and runs jobs so every view has
content, then prints a markdown table (medians; p99 for the scrapes).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from node import api  # noqa: E402
from node.client import Client  # noqa: E402
from node.localmesh import LocalMesh  # noqa: E402


def timed_get(url: str) -> tuple[float, int]:
    start = time.perf_counter()
    with urllib.request.urlopen(url, timeout=10) as r:
        size = len(r.read())
    return time.perf_counter() - start, size


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scrapes", type=int, default=200)
    ap.add_argument("--mb", type=int, default=64)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp, LocalMesh(Path(tmp)) as mesh:
        mesh.start(2, extra=["--capacity", "10"])
        n1 = mesh.nodes[0]
        url = n1.status()["dashboard"]
        with Client(n1.socket) as c:
            for i in range(8):
                c.deploy(f"m{i}", rng.standard_normal((512, 256), dtype=np.float32))
            for i in range(200):
                c.infer(f"m{i % 8}", np.ones((256, 4), np.float32))
            for _ in range(20):
                c.matmul(np.ones((128, 64), np.float32), np.ones((64, 64), np.float32))
        rows = []
        for path in ("metrics", "api/snapshot"):
            times, size = zip(*(timed_get(url + path) for _ in range(args.scrapes)))
            ms = sorted(t * 1000 for t in times)
            rows.append((f"GET /{path} ({size[0] // 1024} KiB)", statistics.median(ms),
                         ms[int(0.99 * (len(ms) - 1))]))
        x = rng.standard_normal(((args.mb << 20) // 4 // 1024, 1024), dtype=np.float32)
        b = np.ones((1024, 1), np.float32)
        req = api.SubmitRequest("matmul", x, b)
        with Client(n1.socket) as c:
            for label, progress in (("submit, one write", None),
                                    ("submit, 1 MiB chunks + progress", lambda *a: None)):
                secs = []
                for _ in range(args.runs):
                    start = time.perf_counter()
                    job = c.call(req, progress)
                    secs.append(time.perf_counter() - start)
                    c.wait(job["id"], 600)       # the next upload does not race this job
                med = statistics.median(secs)
                rows.append((f"{label} ({x.nbytes >> 20} MiB)", med * 1000, args.mb / med))
    print("| what | median ms | p99 ms / MiB/s |\n|---|---:|---:|")
    for name, a, b in rows:
        print(f"| {name} | {a:.2f} | {b:.1f} |")


if __name__ == "__main__":
    main()
