"""Crossbar-mode W @ X against float32 W @ X for N=4096, B=64, per preset, plus the
IR-drop circuit solve's time and the fast mode's error against it.

Run by hand: ``python bench/crossbar.py [--blas-threads N] [--skip-circuit]``. Prints
markdown tables and writes them to bench/out/crossbar.md. Timings are medians of
interleaved runs so that machine noise hits both sides alike, as wall time and as this
process's CPU time (the steadier of the two on a shared machine). Not a test: no
assertions on time.

BLAS threads: by default 1 (``threadpoolctl``), for both sides — the daemon splits a
read across its compute threads by tile rows, and a crossbar read is many small GEMMs
(one per tile column), which multi-threaded OpenBLAS runs far slower on a loaded
2-core machine. ``--blas-threads 0`` keeps the library default.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from compute import circuit  # noqa: E402
from compute.crossbar import ProgrammedMatrix  # noqa: E402
from compute.device import PRESETS  # noqa: E402

N, B, RUNS = 4096, 64, 7
OUT = Path(__file__).resolve().parent / "out" / "crossbar.md"


def _timed(f) -> tuple[float, float]:
    """(wall, CPU) seconds of one call. CPU time (this process) is what a loaded machine
    distorts least: other processes' time slices do not count, only their cache pressure."""
    t, c = time.perf_counter(), time.process_time()
    f()
    return time.perf_counter() - t, time.process_time() - c


def _median_pair(f_float, f_xbar, runs: int) -> dict[str, float]:
    """Interleave the two calls; medians of wall and CPU time of each side."""
    tf, tx = [], []
    for _ in range(runs):
        tf.append(_timed(f_float))
        tx.append(_timed(f_xbar))
    wf, cf = np.median(tf, axis=0)
    wx, cx = np.median(tx, axis=0)
    return {"float_ms": wf * 1e3, "xbar_ms": wx * 1e3, "ratio": wx / wf, "cpu_ratio": cx / cf}


def bench_preset(name: str, w: np.ndarray, x: np.ndarray, ref: np.ndarray) -> dict:
    prof = PRESETS[name]
    box: dict = {}
    t_prog, c_prog = _timed(lambda: box.setdefault("pm", ProgrammedMatrix.program(w, prof, seed=1)))
    pm = box["pm"]
    y = pm.matmul(x, read_seed=1)  # warm-up and accuracy sample
    rel = float(np.linalg.norm(y - ref) / np.linalg.norm(ref))
    times = _median_pair(lambda: w @ x, lambda: pm.matmul(x, read_seed=2), RUNS)
    return {"preset": name, **times, "rel_err": rel, "bpw": pm.nbytes / w.size,
            "prog_s": t_prog, "prog_cpu_s": c_prog}


def circuit_rows(w: np.ndarray) -> list[str]:
    """One full 256x256 array of each preset's wire: solve time and fast-mode error."""
    lines = ["", "IR drop on one 256x256 array (128 outputs x 256 inputs of the same W, B=64):", "",
             "| wire ohm/cell | circuit solve ms (sweeps) | direct solve ms | fast vs circuit, inputs [0,1] "
             "| fast vs circuit, inputs [-1,1] | drop (ideal vs circuit) | est. circuit s for N=4096 |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    rng = np.random.default_rng(5)
    pm = ProgrammedMatrix.program(w[:128, :256], PRESETS["rram"].with_changes(wire_ohm_per_cell=0.0), seed=1)
    g = pm.conductances().transpose(1, 0, 2).reshape(1, 256, 256)
    tiles = (N // 128) * (N // 256)
    for ohm in (0.35, 1.0, 2.5):
        rho = circuit.wire_rho(ohm, PRESETS["rram"].g_max_us)
        row_f, col_f = circuit.fast_factors(g, rho)
        errs, drop = [], 0.0
        for x in (rng.uniform(0, 1, (256, B)), rng.uniform(-1, 1, (256, B))):
            t = time.perf_counter()
            res = circuit.solve(g, x, rho)
            t_solve = time.perf_counter() - t
            exact = res.currents[0][0::2] - res.currents[0][1::2]
            fast = circuit.fast_currents(g, x, row_f, col_f)[0]
            errs.append(np.linalg.norm(fast[0::2] - fast[1::2] - exact) / np.linalg.norm(exact))
            if not drop:
                ideal = np.einsum("rc,rb->cb", g[0], x)
                drop = np.linalg.norm(ideal[0::2] - ideal[1::2] - exact) / np.linalg.norm(exact)
                t_first, sweeps = t_solve, res.iterations
        t = time.perf_counter()
        circuit.solve_direct(g[0], x, rho)
        t_direct = time.perf_counter() - t
        lines.append(f"| {ohm} | {t_first * 1e3:.0f} ({sweeps}) | {t_direct * 1e3:.0f} | {errs[0]:.4f} | "
                     f"{errs[1]:.4f} | {drop:.4f} | {t_first * tiles:.0f} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--blas-threads", type=int, default=1, help="BLAS threads for both sides (0 = default)")
    ap.add_argument("--skip-circuit", action="store_true", help="leave out the (minutes-long) circuit table")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((N, N)) / np.sqrt(N)).astype(np.float32)
    x = rng.standard_normal((N, B)).astype(np.float32)
    ref = (w.astype(np.float64) @ x.astype(np.float64))
    load0 = os.getloadavg()[0]
    with threadpool_limits(args.blas_threads or None):
        rows = [bench_preset(name, w, x, ref) for name in PRESETS]
        extra = [] if args.skip_circuit else circuit_rows(w)
    lines = [
        f"N={N} B={B}, median of {RUNS} interleaved runs, BLAS threads: {args.blas_threads or 'default'}, "
        f"load average {load0:.1f} at start, {os.getloadavg()[0]:.1f} at end, {os.cpu_count()} cores; "
        f"relative error vs float64 W @ X (Gaussian W, Gaussian X); IR drop in fast mode",
        "",
        "| preset | float32 ms | crossbar ms | ratio (wall) | ratio (CPU) | MVM rel. error | bytes/weight "
        "| program s (CPU s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['preset']} | {r['float_ms']:.1f} | {r['xbar_ms']:.1f} | {r['ratio']:.2f} | "
                     f"{r['cpu_ratio']:.2f} | {r['rel_err']:.4f} | {r['bpw']:.3f} | "
                     f"{r['prog_s']:.2f} ({r['prog_cpu_s']:.2f}) |")
    table = "\n".join(lines + extra)
    print(table)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(table + "\n")


if __name__ == "__main__":
    main()
