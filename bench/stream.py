"""Yardsticks `stream` and `oneshot` (docs/yardsticks.md) on a 3-node loopback mesh vs in-process numpy.

stream:  W (N x N float32) deployed once, then requests X (N x B), B in {1, 64}: requests/s,
         p50/p99 latency, deploy time. The mesh moves only X and Y; W stays put.
oneshot: `submit matmul` with both operands shipped, N=2048.

Run by hand:  python bench/stream.py [--n 4096] [--requests 40] [--runs 3]
Prints a markdown table and writes it to bench/out/stream.md. Medians over --runs runs of
--requests requests each; every system is measured in this one run of the script.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from node.client import AsyncClient, Client  # noqa: E402
from node.localmesh import LocalMesh  # noqa: E402

OUT = Path(__file__).resolve().parent / "out"


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def numpy_stream(w: np.ndarray, xs: list[np.ndarray]) -> list[float]:
    lat = []
    for x in xs:
        t = time.perf_counter()
        w @ x
        lat.append(time.perf_counter() - t)
    return lat


async def mesh_stream(socket: Path, name: str, xs: list[np.ndarray], concurrency: int) -> tuple[float, list[float]]:
    """Closed loop with ``concurrency`` clients; returns (wall seconds, latencies)."""
    queue = list(xs)
    lat: list[float] = []

    async def worker() -> None:
        async with AsyncClient(socket) as c:
            while queue:
                x = queue.pop()
                t = time.perf_counter()
                await c.infer(name, x)
                lat.append(time.perf_counter() - t)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - start, lat


def row(system: str, case: str, wall: float, lat: list[float], extra: str = "") -> dict:
    return {"system": system, "case": case, "req_s": len(lat) / wall,
            "p50": percentile(lat, 50) * 1e3, "p99": percentile(lat, 99) * 1e3, "extra": extra}


def median_row(rows: list[dict]) -> dict:
    out = dict(rows[0])
    for k in ("req_s", "p50", "p99"):
        out[k] = statistics.median(r[k] for r in rows)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--oneshot-n", type=int, default=2048)
    ap.add_argument("--requests", type=int, default=40)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--nodes", type=int, default=3)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    n = args.n
    w = rng.standard_normal((n, n), dtype=np.float32)
    results: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="sedma-bench-") as tmp, LocalMesh(Path(tmp)) as mesh:
        mesh.start(args.nodes)
        mesh.wait_converged(alive=args.nodes - 1)
        sock = mesh.nodes[0].socket
        with Client(sock) as c:
            t = time.perf_counter()
            c.deploy("w", w)
            deploy_s = time.perf_counter() - t
        for b in (1, 64):
            xs = [rng.standard_normal((n, b), dtype=np.float32) for _ in range(args.requests)]
            np_rows, mesh_rows, mesh2_rows = [], [], []
            for _ in range(args.runs):
                lat = numpy_stream(w, xs)
                np_rows.append(row("numpy (in-process)", f"stream B={b}", sum(lat), lat))
                wall, lat = asyncio.run(mesh_stream(sock, "w", xs, 1))
                mesh_rows.append(row(f"sedma {args.nodes} nodes, 1 client", f"stream B={b}", wall, lat,
                                     f"deploy {deploy_s:.2f}s"))
                wall, lat = asyncio.run(mesh_stream(sock, "w", xs, 4))
                mesh2_rows.append(row(f"sedma {args.nodes} nodes, 4 clients", f"stream B={b}", wall, lat,
                                      f"deploy {deploy_s:.2f}s"))
            base = median_row(np_rows)
            results.append(base)
            for rows in (mesh_rows, mesh2_rows):
                r = median_row(rows)
                r["ratio"] = r["req_s"] / base["req_s"]
                results.append(r)
        m = args.oneshot_n
        a = rng.standard_normal((m, m), dtype=np.float32)
        bmat = rng.standard_normal((m, m), dtype=np.float32)
        np_lat, mesh_lat = [], []
        with Client(sock) as c:
            for _ in range(args.runs):
                t = time.perf_counter()
                a @ bmat
                np_lat.append(time.perf_counter() - t)
                t = time.perf_counter()
                c.matmul(a, bmat)
                mesh_lat.append(time.perf_counter() - t)
        base = row("numpy (in-process)", f"oneshot N={m}", sum(np_lat), np_lat)
        results.append(base)
        r = row(f"sedma {args.nodes} nodes", f"oneshot N={m}", sum(mesh_lat), mesh_lat)
        r["ratio"] = r["req_s"] / base["req_s"]
        results.append(r)
    table = render(results, n)
    print(table)
    OUT.mkdir(exist_ok=True)
    (OUT / "stream.md").write_text(table + "\n")


def render(results: list[dict], n: int) -> str:
    lines = [f"stream: N={n} float32, ideal device; oneshot: both operands shipped. "
             "Medians of runs; ratio = requests/s relative to in-process numpy.", "",
             "| case | system | requests/s | p50 ms | p99 ms | ratio | notes |",
             "|---|---|---:|---:|---:|---:|---|"]
    for r in results:
        ratio = f"{r['ratio']:.2f}" if "ratio" in r else "1.00"
        lines.append(f"| {r['case']} | {r['system']} | {r['req_s']:.1f} | {r['p50']:.1f} | "
                     f"{r['p99']:.1f} | {ratio} | {r['extra']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
