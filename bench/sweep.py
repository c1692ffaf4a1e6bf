"""The `sweep` yardstick (docs/yardsticks.md): a device-variation Monte Carlo spread over the mesh.

The digits MLP (64-64-10, trained once with ``compute.digits.train_digits_mlp``) is
programmed onto crossbars of a preset (default ``rram``) once per trial, with a different
programming seed each time (programming noise, stuck cells, ... all keyed by it), and the
whole test set (450 samples) is classified; the trial's result is its accuracy.

How a trial runs on the mesh. Each layer is one one-shot ``matmul(W_layer, H,
device=preset, seed=trial*100+layer)`` job; bias and activation are applied digitally here
between layers (as the client-side chaining removed in issue 9 did). One-shot jobs rather than deploy/infer:
a trial programs each matrix exactly once and reads it exactly once, which is what a
one-shot matmul is; ``deploy`` would also persist the programmed state (fsync'd block files
and SQLite rows) and leave it resident, to be dropped again, for a single read. The daemon
reads one-shot jobs with read seed 0, so a trial is a pure function of its seed, and
programming rows [r0, r1) anywhere gives the slice of programming all of W (see
compute/crossbar.py): identical seeds must give identical accuracies whatever the node
count and placement. The script checks that, and checks the mesh against the same
computation done in-process.

Concurrency: ``--concurrency`` trials in flight (AsyncClient workers, default 4); worker j
submits to node j mod n, so clients enter the mesh through every node and the daemons'
placement decides who computes. Each node count gets a fresh ``LocalMesh``.

Reported per system: trials/s (median over --runs runs of --trials trials each), the
ratio to the in-process reference, accuracy mean +- std over the trials, and for the mesh
the share of layer jobs each node computed.

Run by hand:  python bench/sweep.py [--preset rram] [--trials 96] [--runs 5]
              [--nodes 1,2,3] [--concurrency 4] [--hidden 64]
Prints a markdown table and writes it to bench/out/sweep.md (sweep-hHIDDEN.md for --hidden
other than 64).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from compute.crossbar import crossbar_matmul  # noqa: E402
from compute.device import get_preset  # noqa: E402
from compute.digits import load_digits_split, train_digits_mlp  # noqa: E402
from compute.mlp import CrossbarMLP, Layer, apply_activation  # noqa: E402
from node.client import AsyncClient, DaemonError  # noqa: E402
from node.localmesh import LocalMesh  # noqa: E402

OUT = Path(__file__).resolve().parent / "out"
JOB_TIMEOUT = 120.0     # per layer job; every wait below is bounded
RUN_TIMEOUT = 1800.0    # per run of --trials trials


def layer_seed(trial: int, layer: int) -> int:
    return trial * 100 + layer


def hidden_act(layers: list[Layer], i: int) -> str:
    """Logits out of the last layer (softmax is monotonic)."""
    return "identity" if i == len(layers) - 1 else layers[i].activation


def local_trial(layers: list[Layer], preset: str, x: np.ndarray, y: np.ndarray, trial: int) -> float:
    """The mesh's computation, in this process: same seeds, read seed 0."""
    prof = get_preset(preset)
    h = x
    for i, layer in enumerate(layers):
        z = crossbar_matmul(layer.weight, h, prof, layer_seed(trial, i)) + layer.bias[:, None]
        h = apply_activation(hidden_act(layers, i), z)
    return float(np.mean(np.argmax(h, axis=0) == y))


async def mesh_trial(client: AsyncClient, layers: list[Layer], preset: str, x: np.ndarray,
                     y: np.ndarray, trial: int, placed: collections.Counter) -> float:
    h = x
    for i, layer in enumerate(layers):
        job_id = await client.submit_matmul(layer.weight, h, preset, layer_seed(trial, i))
        info = await client.wait(job_id, JOB_TIMEOUT)
        if info["state"] != "done":
            raise DaemonError(f"trial {trial} layer {i}: job {job_id} {info['state']}: {info.get('error')}")
        for node, rows in (info.get("placement") or {}).items():
            placed[node] += rows
        z = await client.result(job_id) + layer.bias[:, None]
        h = apply_activation(hidden_act(layers, i), z)
    return float(np.mean(np.argmax(h, axis=0) == y))


async def mesh_run(sockets: list[Path], layers: list[Layer], preset: str, x: np.ndarray,
                   y: np.ndarray, trials: list[int], concurrency: int,
                   placed: collections.Counter,
                   lat: list[float] | None = None) -> tuple[float, dict[int, float]]:
    """All ``trials`` with ``concurrency`` workers; (wall seconds, accuracy per trial).
    Per-trial latencies are appended to ``lat``."""
    queue = list(reversed(trials))
    acc: dict[int, float] = {}
    lat = [] if lat is None else lat

    async def worker(j: int) -> None:
        async with AsyncClient(sockets[j % len(sockets)]) as c:
            while queue:
                t = queue.pop()
                t0 = time.perf_counter()
                acc[t] = await mesh_trial(c, layers, preset, x, y, t, placed)
                lat.append(time.perf_counter() - t0)

    start = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(worker(j) for j in range(concurrency))), RUN_TIMEOUT)
    return time.perf_counter() - start, acc


def fmt_acc(accs: list[float]) -> str:
    return f"{np.mean(accs):.4f} ± {np.std(accs):.4f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="rram")
    ap.add_argument("--trials", type=int, default=96)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--nodes", default="1,2,3")
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=64,
                    help="hidden width of the MLP (64 = the digits model; wider = more work per trial)")
    args = ap.parse_args()
    get_preset(args.preset)  # fail early on a bad name
    node_counts = [int(v) for v in args.nodes.split(",") if v.strip()]
    trials = list(range(args.trials))

    layers = train_digits_mlp(0, hidden=args.hidden)
    _, _, xte, yte = load_digits_split(0)
    x = np.ascontiguousarray(xte.T, dtype=np.float32)
    y = yte
    load_before = os.getloadavg()

    prof = get_preset(args.preset)

    def run_local() -> tuple[float, dict[int, float]]:
        """The mesh's computation in this process (same seeds), serially."""
        t0 = time.perf_counter()
        acc = {t: local_trial(layers, args.preset, x, y, t) for t in trials}
        return time.perf_counter() - t0, acc

    def run_mlp() -> tuple[float, list[float]]:
        """CrossbarMLP.program + predict (the engine's own seed derivation), serially."""
        t0 = time.perf_counter()
        acc = [float(np.mean(CrossbarMLP.program(layers, prof, seed=t).predict(x, read_seed=t) == y))
               for t in trials]
        return time.perf_counter() - t0, acc

    rows: list[dict] = []
    run_local()  # warm-up (imports, caches), not counted
    # The two in-process systems, interleaved run by run so machine noise hits both alike.
    local_walls, mlp_walls, ref_acc, mlp_acc = [], [], {}, []
    for _ in range(args.runs):
        wall, ref_acc = run_local()
        local_walls.append(wall)
        wall, mlp_acc = run_mlp()
        mlp_walls.append(wall)
    base = args.trials / statistics.median(local_walls)
    rows.append({"system": "in-process, per-layer crossbar_matmul (mesh's seeds)", "tps": base,
                 "ratio": 1.0, "acc": fmt_acc(list(ref_acc.values())),
                 "notes": "serial, numpy's default BLAS threads; the accuracies the mesh must match"})
    tps = args.trials / statistics.median(mlp_walls)
    rows.append({"system": "in-process, CrossbarMLP.program + predict", "tps": tps,
                 "ratio": tps / base, "acc": fmt_acc(mlp_acc),
                 "notes": "serial; the engine's own per-layer seed derivation and read noise, "
                          "so accuracies are not trial-for-trial comparable"})

    identical = True
    mismatches: list[str] = []
    for n in node_counts:
        with tempfile.TemporaryDirectory(prefix=f"sedma-sweep{n}-") as tmp, LocalMesh(Path(tmp)) as mesh:
            mesh.start(n)
            mesh.wait_converged(alive=n - 1)
            sockets = [node.socket for node in mesh.nodes]
            names = {node.id: node.name for node in mesh.nodes}
            warm = collections.Counter()
            asyncio.run(mesh_run(sockets, layers, args.preset, x, y, [10_000 + j for j in range(len(sockets))],
                                 len(sockets), warm))  # one warm-up trial per node, not counted
            placed: collections.Counter = collections.Counter()
            walls, ref_walls, lat, acc = [], [], [], {}
            for _ in range(args.runs):
                # The in-process reference again, next to each mesh run (the mesh's daemons
                # are idle meanwhile): the ratio compares runs made under the same load.
                ref_walls.append(run_local()[0])
                wall, acc = asyncio.run(mesh_run(sockets, layers, args.preset, x, y, trials,
                                                 args.concurrency, placed, lat))
                walls.append(wall)
                diff = [t for t in trials if acc[t] != ref_acc[t]]
                if diff:
                    identical = False
                    mismatches.append(f"{n} nodes: trials {diff[:5]} differ from in-process")
            total = sum(placed.values()) or 1
            share = ", ".join(f"{names.get(k, k[:8])} {100 * v / total:.0f}%"
                              for k, v in sorted(placed.items(), key=lambda kv: names.get(kv[0], kv[0])))
            tps = args.trials / statistics.median(walls)
            ref_tps = args.trials / statistics.median(ref_walls)
            rows.append({"system": f"sedma, {n} node{'s' if n > 1 else ''}", "tps": tps,
                         "ratio": tps / ref_tps, "acc": fmt_acc(list(acc.values())),
                         "notes": f"trial p50 {np.percentile(lat, 50) * 1e3:.0f} ms, "
                                  f"p99 {np.percentile(lat, 99) * 1e3:.0f} ms; in-process alongside "
                                  f"{ref_tps:.1f}/s; rows computed: {share}"})
    load_after = os.getloadavg()

    args.layers = layers
    table = render(rows, base, args, x.shape[1], identical, mismatches, load_before, load_after)
    print(table)
    OUT.mkdir(exist_ok=True)
    out = OUT / ("sweep.md" if args.hidden == 64 else f"sweep-h{args.hidden}.md")
    out.write_text(table + "\n")


def render(rows, base, args, samples, identical, mismatches, load_before, load_after) -> str:
    shape = "-".join(str(v) for v in [args.layers[0].weight.shape[1]] + [l.weight.shape[0] for l in args.layers])
    lines = [f"sweep: digits MLP {shape} on preset `{args.preset}`, {args.trials} trials "
             f"(programming seeds 0..{args.trials - 1}) of {samples} test samples each; "
             f"mesh: {args.concurrency} trials in flight, layer-by-layer one-shot matmul jobs. "
             f"trials/s are medians of {args.runs} runs; ratio = relative to the in-process "
             "per-layer reference (for the mesh: the one re-measured next to its runs).", "",
             "| system | trials/s | ratio | accuracy mean ± std | notes |",
             "|---|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['system']} | {r['tps']:.1f} | {r['ratio']:.2f} | {r['acc']} | {r['notes']} |")
    verdict = ("holds: every node count gave exactly the in-process accuracy for every trial"
               if identical else "DOES NOT HOLD: " + "; ".join(mismatches))
    lines += ["", f"- identical seeds -> identical accuracies across node counts: {verdict}",
              f"- load before: {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}, "
              f"after: {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f} "
              f"(1/5/15 min), {os.cpu_count()} cores"]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
