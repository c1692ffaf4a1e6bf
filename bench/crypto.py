"""What link encryption costs: a loopback link carrying 64 MiB messages, plaintext vs Noise.

    python bench/crypto.py [--runs 5] [--messages 4] [--mib 64]

Both ends run in this process on one event loop over a real TCP connection on loopback,
exactly as two daemons' sessions do (fragmentation, reassembly, the session's writer), so
the table shows the whole per-byte cost of one link: ``plaintext`` is a session straight
on the TCP link (what links carried before encryption), ``noise`` is the same after the
Noise handshake (AES-256-GCM records of at most 65,535 bytes, a frame's records sent
together). Wall-clock MB/s and MB per CPU second of this process (both ends' work; far
steadier than wall time on a shared machine). It also prints the raw cipher rate
(encrypt + decrypt of 64 KiB records) and what the difference
means for one `stream` B=64 request (N=4096 on 3 nodes moves X, 1 MiB, to the two remote
holders and their partial outputs back: ~2.7 MB of link traffic per request).
Prints a markdown table of medians.

    python bench/crypto.py --baseline-tree DIR [--requests 20] [--runs 3]

adds the end-to-end check: stream B=64 (N=4096, 1 client) on two 3-node loopback meshes
started side by side, one from this tree (encrypted links) and one from DIR, a checkout
from before link encryption (e.g. ``git worktree add /tmp/plain 3b5f0fb``), measured in
alternation so both see the same machine load.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nat.tcp import dial_tcp, listen_tcp  # noqa: E402
from node.net.session import Session, handshake  # noqa: E402
from protocol import PROTOCOL_VERSION  # noqa: E402
from protocol.handshake import MAX_RECORD_PLAINTEXT, Hello, NoiseHandshake  # noqa: E402
from protocol.identity import Identity  # noqa: E402
from protocol.messages import message  # noqa: E402

MiB = 1 << 20
KEY = b"bench-cluster-key-0123456789abcdef"
#: Link bytes of one stream B=64 request, N=4096, 3 nodes (X to 2 holders, 2 partial Y back).
STREAM_B64_BYTES = 2 * 4096 * 64 * 4 + 2 * (4096 // 3) * 64 * 4
#: stream B=64 requests/s with 1 client on a quiet machine (bench/README.md, peers.py table).
STREAM_B64_REQ_S = 36.9


@message("bench.blob")
class Blob:
    data: np.ndarray


async def link_pair(encrypted: bool) -> tuple[Session, Session]:
    accepted: asyncio.Queue = asyncio.Queue()
    ida, idb = Identity.generate(), Identity.generate()

    async def on_link(link):
        if encrypted:
            await accepted.put(await handshake(link, idb, "b", [], [KEY], initiator=False))
        else:
            await accepted.put(Session(link, _hello(idb), _hello(ida), initiator=False))
    server = await listen_tcp("127.0.0.1", 0, on_link)
    port = server.sockets[0].getsockname()[1]
    link = await dial_tcp("127.0.0.1", port)
    if encrypted:
        a = await handshake(link, ida, "a", [], [KEY], initiator=True)
    else:
        a = Session(link, _hello(ida), _hello(idb), initiator=True)
    b = await accepted.get()
    server.close()
    return a, b


def _hello(identity: Identity) -> Hello:
    return Hello(PROTOCOL_VERSION, identity.node_id, "x", [], identity.public_key, b"")


async def throughput(encrypted: bool, messages: int, size: int) -> tuple[float, float]:
    """(MB/s of wall time, MB per CPU second of this process) of ``messages`` messages of
    ``size`` bytes, first send to last delivery. CPU time counts both ends' work and is
    far less sensitive than wall time to other load on a shared machine."""
    a, b = await link_pair(encrypted)
    got: asyncio.Queue = asyncio.Queue()

    async def sink(_s, msg):
        await got.put(msg.data.nbytes)
    a.start(sink)
    b.start(sink)
    blob = Blob(np.ones(size // 4, np.float32))
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(messages):
        await a.send(blob)
    for _ in range(messages):
        assert await got.get() == size
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    await a.close("done")
    await b.close("done")
    return messages * size / elapsed / 1e6, messages * size / cpu / 1e6


def cipher_rate(size: int) -> float:
    """MB per CPU second of encrypt + decrypt alone, in records of one Noise message."""
    ida, idb = Identity.generate(), Identity.generate()
    x = NoiseHandshake(ida, "a", [], [KEY], initiator=True)
    y = NoiseHandshake(idb, "b", [], [KEY], initiator=False)
    y.on_final(x.on_response(y.on_first(x.first())))
    enc, dec = x.cipher(), y.cipher()
    data = memoryview(bytes(size))
    start = time.process_time()
    for i in range(0, size, MAX_RECORD_PLAINTEXT):
        dec.decrypt(enc.encrypt(data[i:i + MAX_RECORD_PLAINTEXT]))
    return size / (time.process_time() - start) / 1e6


async def bench(runs: int, messages: int, size: int) -> dict[str, list[tuple[float, float]]]:
    out: dict[str, list[tuple[float, float]]] = {"plaintext": [], "noise": []}
    for _ in range(runs):           # interleaved: the shared machine's load drifts
        out["plaintext"].append(await throughput(False, messages, size))
        out["noise"].append(await throughput(True, messages, size))
    return out


def _mesh(root: Path, tree: Path | None, nodes: int = 3) -> list:
    """``nodes`` daemons on loopback from ``tree`` (None: this tree), joined to the first."""
    from node.localmesh import DaemonProc, sedma_env

    class TreeProc(DaemonProc):
        def spawn(self) -> "TreeProc":
            if tree is None:
                return super().spawn()
            self.data_dir.parent.mkdir(parents=True, exist_ok=True)
            self._log = open(self.log_path, "ab")
            env = sedma_env() | {"PYTHONPATH": str(tree)}
            self.proc = subprocess.Popen(self.command(), stdout=self._log,
                                         stderr=subprocess.STDOUT, env=env, cwd=tree)
            return self
    procs = [TreeProc(root / "n1", "n1").start()]
    for i in range(2, nodes + 1):
        procs.append(TreeProc(root / f"n{i}", f"n{i}", [procs[0].address]).start())
    return procs


def stream_ab(baseline: Path, requests: int, runs: int, n: int = 4096) -> dict[str, float]:
    """Median stream B=64 requests/s, 1 client: this tree vs ``baseline``, alternating."""
    from bench.stream import mesh_stream
    from node.client import Client
    from node.localmesh import wait_for

    rng = np.random.default_rng(0)
    w = rng.standard_normal((n, n), dtype=np.float32)
    xs = [rng.standard_normal((n, 64), dtype=np.float32) for _ in range(requests)]
    out: dict[str, list[float]] = {"plaintext": [], "noise": []}
    with tempfile.TemporaryDirectory(prefix="sedma-crypto-") as tmp:
        meshes = {}
        try:
            meshes["noise"] = _mesh(Path(tmp) / "noise", None)
            meshes["plaintext"] = _mesh(Path(tmp) / "plain", baseline)
            for procs in meshes.values():
                for p in procs:
                    wait_for(lambda p=p: sum(x["state"] == "alive" for x in p.peers()) == 2,
                             60, f"{p.name} to see the mesh")
                with Client(procs[0].socket) as c:
                    c.deploy("w", w)
            for i in range(runs):        # ABBA order: a load trend favours neither
                for key in ("plaintext", "noise")[::1 if i % 2 == 0 else -1]:
                    wall, lat = asyncio.run(mesh_stream(meshes[key][0].socket, "w", xs, 1))
                    out[key].append(len(lat) / wall)
        finally:
            for procs in meshes.values():
                for p in procs:
                    p.stop()
    for key, values in out.items():
        print(f"stream B=64 {key}: " + " ".join(f"{v:.1f}" for v in values) + " requests/s")
    return {k: statistics.median(v) for k, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--messages", type=int, default=4)
    ap.add_argument("--mib", type=int, default=64)
    ap.add_argument("--baseline-tree", type=Path, help="a checkout without link encryption: "
                    "also compare stream B=64 end to end against it")
    ap.add_argument("--requests", type=int, default=20)
    args = ap.parse_args()
    size = args.mib * MiB
    rates = asyncio.run(bench(args.runs, args.messages, size))
    wall = {k: statistics.median(r[0] for r in v) for k, v in rates.items()}
    cpu = {k: statistics.median(r[1] for r in v) for k, v in rates.items()}
    cipher = statistics.median(cipher_rate(size) for _ in range(args.runs))
    print(f"| link (loopback, {args.messages} x {args.mib} MiB messages, median of "
          f"{args.runs}) | MB/s (wall) | MB per CPU-s (both ends) | relative (CPU) |")
    print("|---|---:|---:|---:|")
    for key, label in (("plaintext", "plaintext session on TCP"),
                       ("noise", "Noise (XXpsk0, AES-256-GCM) session on TCP")):
        print(f"| {label} | {wall[key]:.0f} | {cpu[key]:.0f} | "
              f"{cpu[key] / cpu['plaintext']:.2f} |")
    print(f"| cipher alone: encrypt + decrypt | - | {cipher:.0f} | - |")
    extra_ms = STREAM_B64_BYTES / 1e6 * (1 / cpu["noise"] - 1 / cpu["plaintext"]) * 1e3
    print(f"\nstream B=64 (N=4096, 3 nodes): {STREAM_B64_BYTES / 1e6:.1f} MB on links per "
          f"request -> encryption costs {extra_ms:.2f} CPU-ms per request, spread over the "
          f"sender's and the receivers' processes; at the README's quiet-machine "
          f"{STREAM_B64_REQ_S} requests/s (1 client) that is "
          f"{extra_ms / (1000 / STREAM_B64_REQ_S):.1%} of a request's time")

    if args.baseline_tree:
        req = stream_ab(args.baseline_tree.resolve(), args.requests, args.runs)
        print(f"\n| stream B=64, N=4096, 3 nodes, 1 client ({args.requests} requests, median "
              f"of {args.runs}, alternating) | requests/s | relative |")
        print("|---|---:|---:|")
        print(f"| plaintext links ({args.baseline_tree}) | {req['plaintext']:.1f} | 1.00 |")
        print(f"| Noise links (this tree) | {req['noise']:.1f} | "
              f"{req['noise'] / req['plaintext']:.2f} |")


if __name__ == "__main__":
    main()
