"""Crossbar-mode W @ X against float32 W @ X for N=4096, B=64, per preset.

Run by hand: ``python bench/crossbar.py``. Prints a markdown table and writes it
to bench/out/crossbar.md. Timings are medians of interleaved runs so that
machine noise hits both sides alike. Not a test: no assertions on time.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from compute.crossbar import ProgrammedMatrix  # noqa: E402
from compute.device import PRESETS  # noqa: E402

N, B, RUNS = 4096, 64, 15
OUT = Path(__file__).resolve().parent / "out" / "crossbar.md"


def _median_pair(f_float, f_xbar, runs: int) -> tuple[float, float]:
    """Interleave the two calls; return (median float time, median crossbar time)."""
    tf, tx = [], []
    for _ in range(runs):
        t = time.perf_counter()
        f_float()
        tf.append(time.perf_counter() - t)
        t = time.perf_counter()
        f_xbar()
        tx.append(time.perf_counter() - t)
    return float(np.median(tf)), float(np.median(tx))


def bench_preset(name: str, w: np.ndarray, x: np.ndarray, ref: np.ndarray) -> dict:
    prof = PRESETS[name]
    t = time.perf_counter()
    pm = ProgrammedMatrix.program(w, prof, seed=1)
    t_prog = time.perf_counter() - t
    y = pm.matmul(x, read_seed=1)  # warm-up and accuracy sample
    rel = float(np.linalg.norm(y - ref) / np.linalg.norm(ref))
    tf, tx = _median_pair(lambda: w @ x, lambda: pm.matmul(x, read_seed=2), RUNS)
    return {"preset": name, "float_ms": tf * 1e3, "xbar_ms": tx * 1e3, "ratio": tx / tf,
            "rel_err": rel, "bpw": pm.nbytes / w.size, "prog_s": t_prog}


def main() -> None:
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((N, N)) / np.sqrt(N)).astype(np.float32)
    x = rng.standard_normal((N, B)).astype(np.float32)
    ref = (w.astype(np.float64) @ x.astype(np.float64))
    rows = [bench_preset(name, w, x, ref) for name in PRESETS]
    lines = [
        f"N={N} B={B}, median of {RUNS} interleaved runs; relative error vs float64 W @ X",
        "",
        "| preset | float32 ms | crossbar ms | ratio | MVM rel. error | bytes/weight | program s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['preset']} | {r['float_ms']:.1f} | {r['xbar_ms']:.1f} | {r['ratio']:.2f} | "
                     f"{r['rel_err']:.4f} | {r['bpw']:.3f} | {r['prog_s']:.2f} |")
    table = "\n".join(lines)
    print(table)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(table + "\n")


if __name__ == "__main__":
    main()
