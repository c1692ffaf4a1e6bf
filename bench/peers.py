"""The `stream` yardstick (docs/yardsticks.md) for sedma next to its peers, all in one run.

Systems, each holding W (N x N float32) once and then serving requests X (N x B):

- numpy (in-process): ``W @ X`` in this process with its default BLAS threads; the limit
  on this machine.
- sedma, 3 daemons on loopback (``LocalMesh``): ``deploy`` once, then ``infer``; reuses
  bench/stream.py's closed-loop clients.
- Ray: 3 actors, each holding one row block of W; a request puts X in the object store
  once, calls every actor and concatenates the partial outputs.
- Dask distributed: a ``LocalCluster`` of 3 single-threaded worker processes; W's row
  blocks are scattered once (one per worker); a request submits one task per block
  against the scattered futures (pinned to the worker holding it) and concatenates.

Fairness: sedma's daemons run with one BLAS thread each (``BLAS_ENV`` in
node/localmesh.py); Ray workers and Dask workers get the same environment. Each system is
driven by 1 client and by 4 concurrent clients (threads for Ray/Dask, asyncio clients for
sedma), closed loop. Ray and Dask run local-only: no dashboard, no usage stats, loopback.

Run by hand:  python bench/peers.py [--n 4096] [--requests 40] [--runs 3] [--skip ray,dask]
Prints a markdown table (medians over --runs runs; ratio = requests/s relative to numpy) and
writes it to bench/out/peers.md. Ray and Dask come from the optional ``bench`` extra; a
system whose package is missing is reported and skipped.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.stream import mesh_stream, median_row, numpy_stream, row  # noqa: E402
from node.client import AsyncClient, Client  # noqa: E402
from node.localmesh import BLAS_ENV, LocalMesh  # noqa: E402

OUT = Path(__file__).resolve().parent / "out"
BATCHES = (1, 64)
CONCURRENCY = (1, 4)
RAY_TIMEOUT = 120.0    # every Ray/Dask wait is bounded by this many seconds
DASK_TIMEOUT = 120.0
SEDMA_RUN_TIMEOUT = 600.0  # one closed-loop run of --requests requests against the mesh


def row_blocks(n: int, parts: int) -> list[tuple[int, int]]:
    edges = np.linspace(0, n, parts + 1).astype(int)
    return [(int(a), int(b)) for a, b in zip(edges, edges[1:])]


def threaded_stream(request: Callable[[np.ndarray], np.ndarray], xs: list[np.ndarray],
                    concurrency: int) -> tuple[float, list[float]]:
    """Closed loop with ``concurrency`` threads calling ``request``; (wall s, latencies)."""
    queue = list(xs)
    lock = threading.Lock()
    lat: list[float] = []
    errors: list[BaseException] = []

    def worker() -> None:
        while True:
            with lock:
                if not queue or errors:
                    return
                x = queue.pop()
            t = time.perf_counter()
            try:
                request(x)
            except BaseException as exc:  # surfaced below, after every thread stopped
                errors.append(exc)
                return
            with lock:
                lat.append(time.perf_counter() - t)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    start = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - start
    if errors:
        raise errors[0]
    return wall, lat


# --- Ray ---------------------------------------------------------------------------------

class RaySystem:
    name = "Ray, 3 actors"

    def __init__(self, w: np.ndarray, parts: int = 3) -> None:
        os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
        import ray

        self.ray = ray
        try:
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                     object_store_memory=1 << 30, _node_ip_address="127.0.0.1",
                     runtime_env={"env_vars": dict(BLAS_ENV)})
            @ray.remote(num_cpus=0.5)
            class Block:
                def __init__(self) -> None:
                    self.w: np.ndarray | None = None

                def ready(self) -> bool:
                    return True

                def load(self, w_block: np.ndarray) -> int:
                    self.w = np.ascontiguousarray(w_block)
                    return self.w.shape[0]

                def blas_threads(self) -> str:
                    return os.environ.get("OPENBLAS_NUM_THREADS", "unset")

                def matmul(self, x: np.ndarray) -> np.ndarray:
                    return self.w @ x

            # Actor processes are started first (like sedma's daemons and Dask's workers, which
            # exist before their deploy/scatter is timed); deploy = moving the row blocks in.
            t = time.perf_counter()
            self.actors = [Block.remote() for _ in range(parts)]
            ray.get([act.ready.remote() for act in self.actors], timeout=RAY_TIMEOUT)
            self.start_s = time.perf_counter() - t
            t = time.perf_counter()
            ray.get([act.load.remote(ray.put(w[a:b]))
                     for act, (a, b) in zip(self.actors, row_blocks(w.shape[0], parts))], timeout=RAY_TIMEOUT)
            self.deploy_s = time.perf_counter() - t
            self.env_note = f"actors started in {self.start_s:.2f}s (not in deploy); worker OPENBLAS_NUM_THREADS=" + ",".join(
                ray.get([act.blas_threads.remote() for act in self.actors], timeout=RAY_TIMEOUT))
        except BaseException:
            ray.shutdown()  # never leave a half-started Ray behind
            raise

    def request(self, x: np.ndarray) -> np.ndarray:
        ref = self.ray.put(x)
        parts = self.ray.get([act.matmul.remote(ref) for act in self.actors], timeout=RAY_TIMEOUT)
        return np.concatenate(parts, axis=0)

    def close(self) -> None:
        self.ray.shutdown()


# --- Dask --------------------------------------------------------------------------------

def _dask_matmul(w_block: np.ndarray, x: np.ndarray) -> np.ndarray:
    return w_block @ x


def _dask_blas_threads() -> str:
    return os.environ.get("OPENBLAS_NUM_THREADS", "unset")


class DaskSystem:
    name = "Dask, 3 workers"

    def __init__(self, w: np.ndarray, parts: int = 3) -> None:
        from dask.distributed import Client as DaskClient, LocalCluster

        self.cluster = None
        self.client = None
        try:
            self.cluster = LocalCluster(n_workers=parts, threads_per_worker=1, processes=True,
                                        host="127.0.0.1", dashboard_address=None,
                                        worker_dashboard_address=None, env=dict(BLAS_ENV),
                                        silence_logs=40)
            self.client = DaskClient(self.cluster, timeout=DASK_TIMEOUT)
            self.client.wait_for_workers(parts, timeout=DASK_TIMEOUT)
            self.workers = sorted(self.client.scheduler_info()["workers"])
            t = time.perf_counter()
            self.blocks = [self.client.scatter(w[a:b], workers=[addr], broadcast=False, direct=True)
                           for (a, b), addr in zip(row_blocks(w.shape[0], parts), self.workers)]
            self.client.wait_for_workers(parts, timeout=DASK_TIMEOUT)
            from dask.distributed import wait
            wait(self.blocks, timeout=DASK_TIMEOUT)
            self.deploy_s = time.perf_counter() - t
            envs = self.client.run(_dask_blas_threads)
            self.env_note = "worker OPENBLAS_NUM_THREADS=" + ",".join(envs[a] for a in self.workers)
        except BaseException:
            self.close()
            raise

    def request(self, x: np.ndarray) -> np.ndarray:
        futs = [self.client.submit(_dask_matmul, blk, x, workers=[addr], pure=False)
                for blk, addr in zip(self.blocks, self.workers)]
        return np.concatenate([f.result(timeout=DASK_TIMEOUT) for f in futs], axis=0)

    def close(self) -> None:
        if self.client is not None:
            self.client.close(timeout=30)
            self.client = None
        if self.cluster is not None:
            self.cluster.close(timeout=30)
            self.cluster = None


# --- driver ------------------------------------------------------------------------------

def start_peer(kind: str, w: np.ndarray):
    """Start Ray or Dask; returns (system or None, note)."""
    try:
        if kind == "ray":
            import ray  # noqa: F401
            return RaySystem(w), ""
        import dask.distributed  # noqa: F401
        return DaskSystem(w), ""
    except ImportError as exc:
        return None, f"{kind} not importable ({exc}); skipped (pip install '.[bench]')"


async def sedma_infer(sock: Path, x: np.ndarray) -> np.ndarray:
    async with AsyncClient(sock) as c:
        return await c.infer("w", x)


def check(y: np.ndarray, w: np.ndarray, x: np.ndarray, what: str) -> None:
    ref = w @ x
    err = float(np.linalg.norm(y - ref) / np.linalg.norm(ref))
    if y.shape != ref.shape or err > 1e-4:
        raise AssertionError(f"{what}: wrong result (shape {y.shape}, rel. error {err:.2e})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--requests", type=int, default=40)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--skip", default="", help="comma-separated: ray,dask,sedma")
    args = ap.parse_args()
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    rng = np.random.default_rng(0)
    n = args.n
    w = rng.standard_normal((n, n), dtype=np.float32)
    xs = {b: [rng.standard_normal((n, b), dtype=np.float32) for _ in range(args.requests)]
          for b in BATCHES}
    notes: list[str] = [f"load before: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} "
                        f"{os.getloadavg()[2]:.2f} (1/5/15 min), {os.cpu_count()} cores"]
    # rows[(b, system, concurrency)] -> per-run rows
    runs: dict[tuple[int, str, int], list[dict]] = {}
    deploy: dict[str, float] = {}

    def record(b: int, system: str, conc: int, wall: float, lat: list[float]) -> None:
        runs.setdefault((b, system, conc), []).append(row(system, f"stream B={b}", wall, lat))

    systems: list[tuple[str, Callable[[np.ndarray], np.ndarray] | None]] = []
    peers: list = []
    with tempfile.TemporaryDirectory(prefix="sedma-peers-") as tmp, LocalMesh(Path(tmp)) as mesh:
        try:
            sedma_name = f"sedma, {args.nodes} nodes"
            if "sedma" not in skip:
                mesh.start(args.nodes)
                mesh.wait_converged(alive=args.nodes - 1)
                sock = mesh.nodes[0].socket
                with Client(sock) as c:
                    t = time.perf_counter()
                    c.deploy("w", w, timeout=SEDMA_RUN_TIMEOUT)
                    deploy[sedma_name] = time.perf_counter() - t
                check(asyncio.run(asyncio.wait_for(sedma_infer(sock, xs[64][0]), RAY_TIMEOUT)),
                      w, xs[64][0], "sedma")
            for kind in ("ray", "dask"):
                if kind in skip:
                    notes.append(f"{kind}: skipped by --skip")
                    continue
                system, note = start_peer(kind, w)
                if system is None:
                    print(note)
                    notes.append(note)
                    continue
                peers.append(system)
                deploy[system.name] = system.deploy_s
                notes.append(f"{system.name}: {system.env_note}")
                req = system.request
                check(req(xs[64][0]), w, xs[64][0], system.name)
                systems.append((system.name, req))
            # Interleave systems within each run so that machine noise hits all alike.
            for b in BATCHES:
                for _ in range(args.runs):
                    lat = numpy_stream(w, xs[b])
                    record(b, "numpy (in-process)", 1, sum(lat), lat)
                    if "sedma" not in skip:
                        for conc in CONCURRENCY:
                            wall, lat = asyncio.run(asyncio.wait_for(
                                mesh_stream(sock, "w", xs[b], conc), SEDMA_RUN_TIMEOUT))
                            record(b, sedma_name, conc, wall, lat)
                    for name, req in systems:
                        for conc in CONCURRENCY:
                            wall, lat = threaded_stream(req, xs[b], conc)
                            record(b, name, conc, wall, lat)
        finally:
            for system in peers:
                system.close()
    notes.append(f"load after: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} "
                 f"{os.getloadavg()[2]:.2f}")
    table = render(runs, deploy, n, args, notes)
    print(table)
    OUT.mkdir(exist_ok=True)
    (OUT / "peers.md").write_text(table + "\n")


def render(runs: dict, deploy: dict[str, float], n: int, args, notes: list[str]) -> str:
    lines = [f"stream: W {n}x{n} float32 (ideal device for sedma), {args.requests} requests per run, "
             f"medians of {args.runs} runs; ratio = requests/s relative to in-process numpy. "
             "Daemons, Ray actors and Dask workers run with one BLAS thread each; numpy uses "
             "its default threads.", "",
             "| case | system | clients | requests/s | p50 ms | p99 ms | ratio | deploy s |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for b in BATCHES:
        base = median_row(runs[(b, "numpy (in-process)", 1)])
        for (bb, system, conc), rows in runs.items():
            if bb != b:
                continue
            r = median_row(rows)
            dep = f"{deploy[system]:.2f}" if system in deploy else "-"
            lines.append(f"| stream B={b} | {system} | {conc} | {r['req_s']:.1f} | {r['p50']:.1f} | "
                         f"{r['p99']:.1f} | {r['req_s'] / base['req_s']:.2f} | {dep} |")
    lines += [""] + [f"- {note}" for note in notes]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
