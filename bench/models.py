"""Model serving (issue 9): a 4-layer 2048-wide ReLU MLP deployed from an ONNX file and run
inside a loopback mesh, against in-process numpy running the same layers and onnxruntime in
one process, all in the same run.

For B in {1, 64}: requests/s and p50 latency with 1 client and with 4 concurrent clients
(concurrent requests overlap: one request's layer 2 runs on its holders while another's
layer 1 runs on theirs), and the bytes each request moved between nodes against the
minimum (each layer's input once to each remote node that served a block). Then the same
model on 4 nodes whose --memory-limit is 1/3.3 of its size (served at all, exactly; an
in-process baseline would need the whole model within one such budget).

Run by hand:  python bench/models.py [--requests 30] [--nodes 3]
Prints a markdown table and writes it to bench/out/models.md.
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

from compute.model import DenseLayer, Model, reference_forward  # noqa: E402
from compute.modelsave import save_onnx  # noqa: E402
from node.client import AsyncClient, Client  # noqa: E402
from node.localmesh import LocalMesh  # noqa: E402

OUT = Path(__file__).resolve().parent / "out"
WIDTH, DEPTH = 2048, 4


def make_layers(seed: int = 0) -> list[DenseLayer]:
    rng = np.random.default_rng(seed)
    return [DenseLayer(rng.standard_normal((WIDTH, WIDTH), dtype=np.float32) / np.sqrt(WIDTH),
                       rng.standard_normal(WIDTH, dtype=np.float32) * 0.1,
                       "relu" if i < DEPTH - 1 else "identity") for i in range(DEPTH)]


def timed(fn, xs) -> list[float]:
    lat = []
    for x in xs:
        t = time.perf_counter()
        fn(x)
        lat.append(time.perf_counter() - t)
    return lat


def numpy_forward(layers):
    wt = [np.ascontiguousarray(l.weight.T) for l in layers]

    def run(x):
        h = x
        for w, l in zip(wt, layers):
            h = h @ w + l.bias
            if l.activation == "relu":
                np.maximum(h, 0, out=h)
        return h
    return run


async def closed_loop(socket: Path, name: str, xs, concurrency: int) -> tuple[float, list[float]]:
    queue = list(xs)
    lat: list[float] = []

    async def worker() -> None:
        async with AsyncClient(socket) as c:
            while queue:
                x = queue.pop()
                t = time.perf_counter()
                await c.infer(name, x, 1)
                lat.append(time.perf_counter() - t)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - start, lat


def row(system: str, b: int, clients: int, wall: float, lat: list[float], extra: str = "") -> str:
    return (f"| {system} | {b} | {clients} | {len(lat) / wall:8.1f} | "
            f"{statistics.median(lat) * 1e3:8.2f} | {extra} |")


def bench_fits(root: Path, onnx_path: Path, layers, nodes: int, requests: int) -> list[str]:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    np_run = numpy_forward(layers)
    model = Model("onnx", "rows", layers)
    lines = []
    with LocalMesh(root / "fits") as mesh:
        mesh.start(nodes)
        mesh.wait_converged(alive=nodes - 1)
        sock = mesh.nodes[0].socket
        with Client(sock) as c:
            t = time.perf_counter()
            c.deploy("mlp", onnx_path, device="ideal", replicas=1)
            deploy_s = time.perf_counter() - t
            for b in (1, 64):
                rng = np.random.default_rng(b)
                xs = [rng.standard_normal((b, WIDTH), dtype=np.float32) for _ in range(requests)]
                y = c.infer("mlp", xs[0], 1)
                err = float(np.abs(y - reference_forward(model, xs[0])).max())
                dep = next(d for d in c.deployments() if d["name"] == "mlp")
                moved = (f"moved {dep['last_bytes_moved']} B vs minimum "
                         f"{dep['last_bytes_minimum']} B; max err {err:.1e}")
                lat = timed(lambda x: sess.run(None, {"X": x}), xs)
                lines.append(row("onnxruntime (1 process)", b, 1, sum(lat), lat))
                lat = timed(np_run, xs)
                lines.append(row("numpy (1 process)", b, 1, sum(lat), lat))
                for clients in (1, 4):
                    wall, lat = asyncio.run(closed_loop(sock, "mlp", xs, clients))
                    lines.append(row(f"sedma, {nodes} nodes", b, clients, wall, lat,
                                     moved if clients == 1 else ""))
    lines.append(f"\ndeploy of the {DEPTH * WIDTH * WIDTH * 4 >> 20} MiB model from ONNX: "
                 f"{deploy_s:.2f}s")
    return lines


def bench_too_big(root: Path, onnx_path: Path, layers, requests: int) -> list[str]:
    model_bytes = DEPTH * WIDTH * WIDTH * 4
    budget = int(model_bytes / 3.3)   # 4 budgets hold it with room for 128-row alignment
    model = Model("onnx", "rows", layers)
    with LocalMesh(root / "big") as mesh:
        mesh.start(4, extra=["--memory-limit", str(budget)])
        mesh.wait_converged(alive=3)
        with Client(mesh.nodes[0].socket) as c:
            c.deploy("mlp", onnx_path, device="ideal", replicas=1)
            xs = [np.random.default_rng(i).standard_normal((64, WIDTH), dtype=np.float32)
                  for i in range(requests)]
            err = max(float(np.abs(c.infer("mlp", x, 1) - reference_forward(model, x)).max())
                      for x in xs[:3])
        wall, lat = asyncio.run(closed_loop(mesh.nodes[0].socket, "mlp", xs, 4))
    return [row(f"sedma, 4 nodes x {budget >> 20} MiB budget", 64, 4, wall, lat,
                f"model {model_bytes >> 20} MiB = {model_bytes / budget:.1f}x one budget; "
                f"max err {err:.1e}")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=30)
    ap.add_argument("--nodes", type=int, default=3)
    args = ap.parse_args()
    layers = make_layers()
    with tempfile.TemporaryDirectory(prefix="sedma-bench-models-") as tmp:
        root = Path(tmp)
        onnx_path = save_onnx(layers, root / "mlp.onnx")
        lines = ["| system | B | clients | requests/s | p50 ms | notes |",
                 "|---|---:|---:|---:|---:|---|"]
        body = bench_fits(root, onnx_path, layers, args.nodes, args.requests)
        lines += [l for l in body if l.startswith("|")]
        lines += bench_too_big(root, onnx_path, layers, args.requests)
        lines += [l for l in body if not l.startswith("|")]
    text = "\n".join(lines)
    print(text)
    OUT.mkdir(exist_ok=True)
    (OUT / "models.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
