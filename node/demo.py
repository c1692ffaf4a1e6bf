"""``sedma demo``: a real local mesh doing real crossbar work, narrated.

Starts three daemons on loopback (each with a different crossbar device), then:
a one-shot matmul split across them, a matrix deployed once and served by repeated
``infer`` requests, and the scikit-learn digits MLP exported to an ONNX file, deployed from
it and run inside the mesh per device preset, with test accuracy next to float inference.
Stops the daemons at the end.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from compute.lazynumpy import np

from node.client import Client
from node.localmesh import LocalMesh

DEVICES = ["ideal", "rram", "pcm"]


def run_demo(nodes: int = 3, keep: str | None = None) -> int:
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        return _demo(Path(keep), nodes)
    with tempfile.TemporaryDirectory(prefix="sedma-demo-") as tmp:
        return _demo(Path(tmp), nodes)


def _demo(root: Path, n: int) -> int:
    with LocalMesh(root) as mesh:
        _section(f"starting {n} daemons on loopback in {root}")
        for i in range(n):
            node = mesh.add(extra=["--device", DEVICES[i % len(DEVICES)]])
            print(f"  {node.name}: {node.address}  device {DEVICES[i % len(DEVICES)]}  "
                  f"log {node.log_path}")
        mesh.wait_converged(alive=n - 1)
        names = {nd.id: nd.name for nd in mesh.nodes}
        with Client(mesh.nodes[0].socket) as c:
            _show_peers(c)
            _oneshot(c, names)
            _stream(mesh, names)
            _digits(c, names, root)
            _section("what each node did")
        for nd in mesh.nodes:
            _show_status(nd, names)
        _section("stopping the mesh (SIGTERM: state persisted, exit 0)")
    return 0


def _section(title: str) -> None:
    print(f"\n== {title}")


def _show_peers(c: Client) -> None:
    _section("the mesh as n1 sees it (sedma peers)")
    for p in c.peers():
        rtt = f"{p['rtt_ms']:.2f}ms" if p['rtt_ms'] is not None else "-"
        print(f"  {p['name']:4} {p['state']:6} link {p['link']:4} rtt {rtt}  "
              f"capacity {p['capacity']:.1f} GFLOP/s  device {p['device']}")


def _spread(placement: dict, names: dict[str, str]) -> str:
    return ", ".join(f"{names.get(k, k[:8])}: {v} rows" for k, v in placement.items())


def _oneshot(c: Client, names: dict[str, str]) -> None:
    _section("submit matmul: C = A @ B, A's rows split by capacity (device ideal)")
    rng = np.random.default_rng(1)
    a = rng.standard_normal((2048, 512), dtype=np.float32)
    b = rng.standard_normal((512, 128), dtype=np.float32)
    t = time.perf_counter()
    job = c.submit_matmul(a, b, "ideal")
    info = c.wait(job, 300)
    out = c.result(job)
    err = np.abs(out - a @ b).max() / np.abs(a @ b).max()
    print(f"  job {job} {info['state']} in {time.perf_counter() - t:.3f}s, max relative error "
          f"vs numpy {err:.1e}")
    print(f"  shares: {_spread(info['placement'], names)}")
    t = time.perf_counter()
    job = c.submit_matmul(a, b, "rram", seed=7)
    info = c.wait(job, 300)
    noisy = c.result(job)
    err = np.linalg.norm(noisy - a @ b) / np.linalg.norm(a @ b)
    print(f"  same job on the rram preset (seed 7): {time.perf_counter() - t:.3f}s, "
          f"relative error {err:.3f} (device non-idealities)")


def _stream(mesh: LocalMesh, names: dict[str, str]) -> None:
    _section("deploy W once (2 replicas per block), then infer: only X and Y travel")
    rng = np.random.default_rng(2)
    w = rng.standard_normal((2048, 1024), dtype=np.float32)
    with Client(mesh.nodes[0].socket) as c:
        t = time.perf_counter()
        info = c.deploy("demo-w", w, "ideal")
        print(f"  deployed demo-w 2048x1024 in {time.perf_counter() - t:.2f}s")
        for idx, holders in info["placement"].items():
            print(f"    block {idx}: held by {', '.join(names.get(h, h[:8]) for h in holders)}")
    worst = 0.0
    count = 0
    t = time.perf_counter()
    for i in range(30):
        node = mesh.nodes[i % len(mesh.nodes)]
        x = rng.standard_normal((1024, 16), dtype=np.float32)
        with Client(node.socket) as c:
            y = c.infer("demo-w", x)
        worst = max(worst, float(np.abs(y - w @ x).max() / np.abs(w @ x).max()))
        count += 1
    dt = time.perf_counter() - t
    print(f"  {count} infer requests from all nodes in {dt:.2f}s ({count / dt:.1f}/s), "
          f"max relative error vs numpy {worst:.1e}")


def _digits(c: Client, names: dict[str, str], root: Path) -> None:
    from compute.digits import load_digits_split, train_digits_mlp
    from compute.mlp import float_forward
    from compute.modelsave import save_onnx

    _section("digits MLP (scikit-learn's bundled data) exported to ONNX, deployed from the "
             "file, run inside the mesh, per preset")
    layers = train_digits_mlp(seed=0, hidden=256)
    path = save_onnx(layers, root / "digits.onnx")
    _, _, x_test, y_test = load_digits_split(0)
    float_acc = float(np.mean(np.argmax(float_forward(layers, x_test.T), axis=0) == y_test))
    print(f"  {path.name}: Gemm(transB=1)+Relu, Gemm+Softmax (as PyTorch exports); float "
          f"test accuracy {float_acc:.4f} on {len(y_test)} samples")
    print(f"  {'preset':13} {'accuracy':>9} {'vs float':>9} {'samples/s':>10}  "
          "blocks (layer: holders)")
    for preset in ("ideal", "rram", "pcm", "conservative"):
        info = c.deploy(f"digits-{preset}", path, device=preset, seed=3)
        t = time.perf_counter()
        y = c.infer(f"digits-{preset}", x_test)          # rows in, rows out, as onnxruntime
        dt = time.perf_counter() - t
        acc = float(np.mean(np.argmax(y, axis=1) == y_test))
        spread = "; ".join(f"L{i}: " + ", ".join(
            f"b{k}@{'+'.join(names.get(h, h[:8]) for h in v)}" for k, v in lay.items())
            for i, lay in enumerate(info["layer_placement"]))
        print(f"  {preset:13} {acc:9.4f} {acc - float_acc:+9.4f} {len(y_test) / dt:10.0f}  {spread}")
    dep = next(d for d in c.deployments() if d["name"] == "digits-ideal")
    print(f"  one request moved {dep['last_bytes_moved']} bytes between nodes (minimum "
          f"{dep['last_bytes_minimum']}: each layer's input once to each remote holder used); "
          "the client sent X once and got Y once")
    info = c.undeploy("digits-conservative")
    print(f"  sedma undeploy digits-conservative: freed {info['freed_bytes']} bytes on "
          f"{len(info['nodes'])} holder(s)")


def _show_status(nd, names: dict[str, str]) -> None:
    s = nd.status()
    m = s["metrics"]
    blocks = sum(len(v) for v in s["blocks"].values())
    lat = m["communication_latency"]
    p50 = f"{lat['p50_ms']:.2f}ms" if lat["p50_ms"] is not None else "-"
    with Client(nd.socket) as c:
        jobs = c.jobs()
    print(f"  {nd.name} ({s['device']}): {blocks} resident blocks "
          f"({s['memory']['resident_blocks'] / 2**20:.1f} MiB), {len(jobs)} jobs coordinated, "
          f"memory efficiency {m['memory_utilisation_efficiency']:.1%}, "
          f"utilisation {m['resource_utilisation']:.1%}, rtt p50 {p50}, "
          f"throughput {m['throughput_per_s']:.2f}/s")
