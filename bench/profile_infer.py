"""Where one B=1 ``infer`` request's time goes (issue 13): a breakdown and two profiles.

Two daemons on loopback hold one row block each of W (N x N float32, replicas 1), as in the
issue's yardstick; the coordinator runs under cProfile. The script measures, in one run:

- numpy in-process: W @ x, and one row block's GEMV (what each daemon computes);
- client encode + decode of the request and response (codec only, no socket);
- a local API round trip that does no work (an unknown job id: socket + dispatch);
- infer on the 2-node mesh, end to end (median and p99 of --requests requests);
- the coordinator's profile (main thread only: the event loop; compute runs on executor
  threads and is not in it) and the client's, top functions by own time.

Run by hand:  python bench/profile_infer.py [--n 4096] [--requests 400] [--b 1]
Prints the tables and writes them to bench/out/profile_infer.md.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import os
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from node import api  # noqa: E402
from node.client import AsyncClient, Client, DaemonError  # noqa: E402
from node.localmesh import DaemonProc, LocalMesh  # noqa: E402
from protocol.messages import decode_message, encode_message  # noqa: E402

OUT = Path(__file__).resolve().parent / "out"
ROOT = Path(__file__).resolve().parent.parent


class ProfiledDaemon(DaemonProc):
    """A daemon whose main thread runs under cProfile, written at its clean exit."""

    def __init__(self, *a, profile_path: Path, **kw) -> None:
        super().__init__(*a, **kw)
        self.profile_path = profile_path

    def command(self) -> list[str]:
        cmd = super().command()
        return [cmd[0], "-m", "cProfile", "-o", str(self.profile_path), *cmd[1:]]


def timed(fn, count: int) -> list[float]:
    out = []
    for _ in range(count):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def ms(values: list[float], q: float = 50) -> float:
    return float(np.percentile(values, q)) * 1e3


def top(stats_source, limit: int = 18, key: str = "tottime", only: str | None = None) -> str:
    """The ``limit`` heaviest functions by ``key``; ``only`` keeps paths matching a regex."""
    buf = io.StringIO()
    st = pstats.Stats(stats_source, stream=buf)
    if only is None:
        st.strip_dirs().sort_stats(key).print_stats(limit)
    else:
        st.sort_stats(key).print_stats(only, limit)
    return buf.getvalue()


async def infer_loop(sock: Path, x: np.ndarray, count: int, prof: cProfile.Profile | None) -> list[float]:
    lat = []
    async with AsyncClient(sock) as c:
        for _ in range(5):
            await c.infer("w", x)
        if prof:
            prof.enable()
        for _ in range(count):
            t = time.perf_counter()
            await c.infer("w", x)
            lat.append(time.perf_counter() - t)
        if prof:
            prof.disable()
    return lat


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--b", type=int, default=1)
    ap.add_argument("--requests", type=int, default=400)
    args = ap.parse_args()
    n, b = args.n, args.b
    rng = np.random.default_rng(0)
    w = rng.standard_normal((n, n), dtype=np.float32)
    x = rng.standard_normal((n, b), dtype=np.float32)
    half = w[: n // 2]
    rows: list[tuple[str, float, float]] = []
    load_before = os.getloadavg()

    lat = timed(lambda: w @ x, args.requests)
    rows.append(("numpy in-process W @ x", ms(lat), ms(lat, 99)))
    lat = timed(lambda: half @ x, args.requests)
    rows.append(("numpy, one row block (N/2 rows)", ms(lat), ms(lat, 99)))
    req = api.InferRequest("w", x, None)
    resp = api.Response(True, np.empty((n, b), np.float32))
    lat = timed(lambda: decode_message(b"".join(encode_message(req))), args.requests)
    rows.append(("codec: encode+decode request (joined)", ms(lat), ms(lat, 99)))
    lat = timed(lambda: decode_message(b"".join(encode_message(resp))), args.requests)
    rows.append(("codec: encode+decode response (joined)", ms(lat), ms(lat, 99)))

    with tempfile.TemporaryDirectory(prefix="sedma-prof-") as tmp, LocalMesh(Path(tmp)) as mesh:
        root = Path(tmp)
        prof_path = root / "coordinator.prof"
        coord = ProfiledDaemon(root / "n1", "n1", profile_path=prof_path).start()
        mesh.nodes.append(coord)
        mesh.add("n2")
        mesh.wait_converged(alive=1)
        with Client(coord.socket) as c:
            c.deploy("w", w, device="ideal", replicas=1)
            def nothing() -> None:
                try:
                    c.job("no-such-job")
                except DaemonError:
                    pass
            lat = timed(nothing, args.requests)
            rows.append(("API round trip doing nothing (unknown job id)", ms(lat), ms(lat, 99)))
            lat = timed(lambda: c.status(), 50)
            rows.append(("API status (for scale)", ms(lat), ms(lat, 99)))
        client_prof = cProfile.Profile()
        lat = asyncio.run(infer_loop(coord.socket, x, args.requests, client_prof))
        rows.append((f"sedma infer, 2 daemons, 1 client (profiled)", ms(lat), ms(lat, 99)))
        lat = asyncio.run(infer_loop(coord.socket, x, args.requests, None))
        rows.append((f"sedma infer, 2 daemons, 1 client", ms(lat), ms(lat, 99)))
        mesh.stop()
        coord_stats = top(str(prof_path))
        coord_cum = top(str(prof_path), 25, "cumtime", r"(node|protocol|nat|compute)/")
    client_stats = top(client_prof)
    load_after = os.getloadavg()

    lines = [f"profile_infer: N={n}, B={b}, {args.requests} requests, 2 daemons (one row block "
             f"each, replicas 1); load {load_before[0]:.2f} -> {load_after[0]:.2f}", "",
             "| step | p50 ms | p99 ms |", "|---|---:|---:|"]
    lines += [f"| {name} | {p50:.3f} | {p99:.3f} |" for name, p50, p99 in rows]
    text = "\n".join(lines)
    text += "\n\n### coordinator daemon, main thread, by own time (whole life incl. start)\n```\n"
    text += _trim(coord_stats) + "```\n\n### coordinator, sedma's own functions by cumulative time\n```\n"
    text += _trim(coord_cum) + "```\n\n### client, the infer loop, by own time\n```\n"
    text += _trim(client_stats) + "```\n"
    print(text)
    OUT.mkdir(exist_ok=True)
    (OUT / f"profile_infer_b{b}.md").write_text(text)


def _trim(stats: str) -> str:
    keep = []
    started = False
    for line in stats.splitlines():
        if "ncalls" in line:
            started = True
        if started and line.strip():
            keep.append(line.rstrip().replace(str(ROOT) + "/", "")[:150])
        elif "function calls" in line:
            keep.append(line.strip())
    return "\n".join(keep) + "\n"


if __name__ == "__main__":
    main()
