"""Yardsticks `stream` and `oneshot` (docs/yardsticks.md) on a loopback mesh vs in-process numpy.

stream:  W (N x N float32) deployed once, then requests X (N x B), B in {1, 64}: requests/s,
         p50/p99 latency, deploy time. The mesh moves only X and Y; W stays put. Each sedma
         row is measured twice: operands and results through shared memory (the default for
         a local client, node/shm.py) and through the socket (SEDMA_NO_SHM, what a remote or
         untrusted client gets).
oneshot: `submit matmul` with both operands shipped, N=2048, both transports.
memory:  memory efficiency = bytes of W, X and Y / RSS of every daemon (after the stream
         runs), next to numpy's (a fresh process holding W, X, Y after W @ X); the same over
         PSS (shared library pages divided among the processes mapping them), and each
         daemon's RSS by mapping (bench/rssmap.py: blocks, heap, anonymous, each large
         library); and the RSS again after the daemons' periodic heap trim.
deploy:  MB/s of `deploy`, next to writing the same bytes to the data dir's disk with fsync.

Run by hand:  python bench/stream.py [--n 4096] [--requests 40] [--runs 3] [--nodes 2 --replicas 1]
Prints a markdown table and writes it to bench/out/stream.md. Medians over --runs runs of
--requests requests each; every system is measured in this one run of the script.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from node.client import AsyncClient, Client  # noqa: E402
from node.localmesh import LocalMesh  # noqa: E402

import rssmap  # noqa: E402  (bench/rssmap.py, beside this script)

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


async def mesh_stream(socket: Path, name: str, xs: list[np.ndarray], concurrency: int,
                      use_shm: bool) -> tuple[float, list[float]]:
    """Closed loop with ``concurrency`` clients; returns (wall seconds, latencies)."""
    queue = list(xs)
    lat: list[float] = []

    async def worker() -> None:
        async with AsyncClient(socket, use_shm=use_shm) as c:
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


NUMPY_MEMORY = """
import sys, numpy as np
n, b = int(sys.argv[1]), int(sys.argv[2])
rng = np.random.default_rng(0)
w = rng.standard_normal((n, n), dtype=np.float32)
x = rng.standard_normal((n, b), dtype=np.float32)
y = w @ x
useful = w.nbytes + x.nbytes + y.nbytes
fields = {l.split()[0]: int(l.split()[1]) * 1024 for l in open("/proc/self/smaps_rollup")
          if l.split()[0] in ("Rss:", "Pss:")}
print(useful / fields["Rss:"], useful / fields["Pss:"])
"""


def numpy_efficiency(n: int, b: int) -> tuple[float, float]:
    """Memory efficiency of in-process numpy, (by RSS, by PSS): a fresh process holding
    W, X and Y."""
    out = subprocess.run([sys.executable, "-c", NUMPY_MEMORY, str(n), str(b)],
                         capture_output=True, text=True, check=True, timeout=300)
    by_rss, by_pss = out.stdout.split()
    return float(by_rss), float(by_pss)


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def pss_bytes(pid: int) -> int:
    """Proportional set size: RSS with each shared page divided among the processes that
    map it (libpython, numpy, OpenBLAS, cryptography are shared by the two daemons)."""
    with open(f"/proc/{pid}/smaps_rollup") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("Pss:"))


def fsync_write_seconds(path: Path, data: np.ndarray) -> float:
    """Write ``data`` to a file under ``path`` with fsync, as a deploy persists a block."""
    t = time.perf_counter()
    with open(path, "wb") as f:
        f.write(memoryview(data).cast("B"))
        f.flush()
        os.fsync(f.fileno())
    elapsed = time.perf_counter() - t
    path.unlink()
    return elapsed


TRANSPORTS = (("shm", True), ("socket", False))
#: Seconds to wait for the daemons' periodic heap trim (consolidation every 10 s).
TRIM_WAIT_S = 11.0
_BLOCK_LINE = re.compile(r'holding block \d+ of (\S+) .* in ([\d.]+) s: validate ([\d.]+), '
                         r'program ([\d.]+), write\+commit ([\d.]+)')
_JOB_LINE = re.compile(r"job \S+ done in ([\d.]+)s")


def deploy_stages(mesh: LocalMesh, name: str) -> str:
    """Where one deploy's time went, from the daemons' per-block log lines: seconds summed
    over blocks per daemon (blocks overlap, so the sums exceed the wall time)."""
    lines = ["| daemon | blocks | validate s | program s | write+commit s | block total s |",
             "|---|---:|---:|---:|---:|---:|"]
    for node in mesh.nodes:
        rows = [m.groups() for m in _BLOCK_LINE.finditer(node.log_path.read_text())
                if m.group(1) == name]
        sums = [sum(float(r[i]) for r in rows) for i in (2, 3, 4, 1)]
        lines.append(f"| {node.name} | {len(rows)} | " + " | ".join(f"{v:.2f}" for v in sums) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--oneshot-n", type=int, default=2048)
    ap.add_argument("--requests", type=int, default=40)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--replicas", type=int, default=None, help="deploy replicas (default: the daemon's)")
    ap.add_argument("--deploy-rounds", type=int, default=2,
                    help="further deploys of W per transport (alternating), after the stream")
    ap.add_argument("--b", default="1,64", help="batch sizes of the stream, comma separated")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    n = args.n
    w = rng.standard_normal((n, n), dtype=np.float32)
    results: list[dict] = []
    notes: list[str] = [f"load before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}"]
    cfg = f"{args.nodes} nodes" + (f", replicas {args.replicas}" if args.replicas else "")
    with tempfile.TemporaryDirectory(prefix="sedma-bench-") as tmp, LocalMesh(Path(tmp)) as mesh:
        mesh.start(args.nodes)
        mesh.wait_converged(alive=args.nodes - 1)
        sock = mesh.nodes[0].socket
        with Client(sock) as c:
            t = time.perf_counter()
            info = c.deploy("w", w, replicas=args.replicas)
            deploy_s = time.perf_counter() - t
        copies = sum(len(h) for h in info["placement"].values()) / max(1, len(info["placement"]))
        fsync_s = fsync_write_seconds(Path(tmp) / "fsync-probe.bin", w)
        stages = deploy_stages(mesh, "w")
        notes.append(f"first deploy of W, shm ({w.nbytes / 2**20:.0f} MiB, {copies:.0f} cop{'y' if copies == 1 else 'ies'} "
                     f"per block): {deploy_s:.2f} s = {w.nbytes / deploy_s / 1e6:.0f} MB/s of W "
                     f"({info['finished'] - info['submitted']:.2f} s of it as the daemon's job); "
                     f"writing the same bytes once with fsync to the same disk: {fsync_s:.2f} s = "
                     f"{w.nbytes / fsync_s / 1e6:.0f} MB/s")
        for b in (int(v) for v in args.b.split(",") if v):
            xs = [rng.standard_normal((n, b), dtype=np.float32) for _ in range(args.requests)]
            np_rows: list[dict] = []
            mesh_rows: dict[tuple[str, int], list[dict]] = {}
            for _ in range(args.runs):
                lat = numpy_stream(w, xs)
                np_rows.append(row("numpy (in-process)", f"stream B={b}", sum(lat), lat))
                for label, use_shm in TRANSPORTS:
                    for conc in (1, 4):
                        wall, lat = asyncio.run(mesh_stream(sock, "w", xs, conc, use_shm))
                        mesh_rows.setdefault((label, conc), []).append(
                            row(f"sedma {cfg}, {conc} client{'s' if conc > 1 else ''}, {label}",
                                f"stream B={b}", wall, lat, f"deploy {deploy_s:.2f}s"))
            base = median_row(np_rows)
            results.append(base)
            for rows in mesh_rows.values():
                r = median_row(rows)
                r["ratio"] = r["req_s"] / base["req_s"]
                results.append(r)
        useful = w.nbytes + n * 64 * 4 * 2
        daemons = sum(rss_bytes(node.proc.pid) for node in mesh.nodes)
        pss = sum(pss_bytes(node.proc.pid) for node in mesh.nodes)
        np_rss, np_pss = numpy_efficiency(n, 64)
        notes.append(f"memory efficiency (W + X + Y of B=64) / RSS: sedma {useful / daemons:.2f} "
                     f"({daemons / 2**20:.0f} MiB RSS in {args.nodes} daemons), numpy in-process "
                     f"{np_rss:.2f}; / PSS: sedma {useful / pss:.2f} ({pss / 2**20:.0f} MiB), "
                     f"numpy {np_pss:.2f}")
        for node in mesh.nodes:
            groups = rssmap.breakdown(node.proc.pid, node.data_dir)
            notes.append(f"{node.name} RSS by mapping, MiB: " + ", ".join(
                f"{k} {v['rss'] / 2**20:.1f}" for k, v in
                sorted(groups.items(), key=lambda kv: -kv[1]["rss"]) if v["rss"] >= 2**19))
        # The daemons give freed heap pages back at their consolidation (every 10 s): the
        # same figure once that has run, i.e. what a daemon keeps, not what it just used.
        time.sleep(TRIM_WAIT_S)
        kept = sum(rss_bytes(node.proc.pid) for node in mesh.nodes)
        notes.append(f"memory efficiency / RSS {TRIM_WAIT_S:.0f} s later (after the daemons' "
                     f"heap trim): sedma {useful / kept:.2f} ({kept / 2**20:.0f} MiB)")
        deploy_times: dict[str, list[float]] = {label: [] for label, _ in TRANSPORTS}
        for i in range(args.deploy_rounds):     # more deploys of W, transports alternating
            order = TRANSPORTS if i % 2 == 0 else TRANSPORTS[::-1]
            for label, use_shm in order:
                with Client(sock, use_shm=use_shm) as c:
                    t = time.perf_counter()
                    c.deploy(f"w-{label}-{i}", w, replicas=args.replicas)
                    deploy_times[label].append(time.perf_counter() - t)
        for label, times in deploy_times.items():
            if times:
                med = statistics.median(times)
                notes.append(f"deploy through {label}, median of {len(times)}: {med:.2f} s = "
                             f"{w.nbytes / med / 1e6:.0f} MB/s (each: "
                             f"{', '.join(f'{t:.2f}' for t in times)} s)")
        m = args.oneshot_n
        if not m:
            results_done(results, notes, n, stages)
            return
        a = rng.standard_normal((m, m), dtype=np.float32)
        bmat = rng.standard_normal((m, m), dtype=np.float32)
        np_lat: list[float] = []
        mesh_lat: dict[str, list[float]] = {label: [] for label, _ in TRANSPORTS}
        for _ in range(args.runs):
            t = time.perf_counter()
            a @ bmat
            np_lat.append(time.perf_counter() - t)
            for label, use_shm in TRANSPORTS:
                with Client(sock, use_shm=use_shm) as c:
                    t = time.perf_counter()
                    c.matmul(a, bmat)
                    mesh_lat[label].append(time.perf_counter() - t)
        base = row("numpy (in-process)", f"oneshot N={m}", sum(np_lat), np_lat)
        results.append(base)
        for label, lat in mesh_lat.items():
            r = row(f"sedma {cfg}, {label}", f"oneshot N={m}", sum(lat), lat)
            r["ratio"] = r["req_s"] / base["req_s"]
            results.append(r)
    results_done(results, notes, n, stages)


def results_done(results: list[dict], notes: list[str], n: int, stages: str = "") -> None:
    notes.append(f"load after: {' '.join(f'{v:.2f}' for v in os.getloadavg())} (2 cores)")
    table = render(results, n) + "\n\n" + "\n".join(f"- {x}" for x in notes)
    if stages:
        table += "\n\nfirst deploy of W, per daemon (seconds summed over its blocks):\n\n" + stages
    print(table)
    OUT.mkdir(exist_ok=True)
    (OUT / f"stream_n{n}.md").write_text(table + "\n")


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
