"""Digits accuracy on crossbars per preset, plus noise/ADC sweeps.

Run by hand: ``python bench/digits.py``. Prints markdown tables, writes them to
bench/out/digits.md and a figure to bench/out/digits_accuracy.png:
(left) accuracy heat map over programming-noise scale x ADC bits on the rram
preset, (right) accuracy vs programming-noise scale for every preset.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from compute.crossbar import ProgrammedMatrix  # noqa: E402
from compute.device import PRESETS, DeviceProfile  # noqa: E402
from compute.digits import load_digits_split, train_digits_mlp  # noqa: E402
from compute.mlp import CrossbarMLP, Layer, float_forward  # noqa: E402

OUT = Path(__file__).resolve().parent / "out"
SEEDS = (0, 1, 2, 3, 4)
NOISE_SCALES = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0)
ADC_BITS = (0, 10, 8, 6, 5, 4)  # 0 = ideal converter


def accuracy(layers: list[Layer], prof: DeviceProfile, x: np.ndarray, y: np.ndarray) -> float:
    """Mean accuracy over programming seeds (each with its own read seed)."""
    accs = [np.mean(CrossbarMLP.program(layers, prof, seed=s).predict(x, read_seed=s) == y) for s in SEEDS]
    return float(np.mean(accs))


def mvm_error(layers: list[Layer], prof: DeviceProfile, x: np.ndarray) -> float:
    """Relative error of the first layer's W @ X on the test inputs."""
    w = layers[0].weight
    ref = w.astype(np.float64) @ x.astype(np.float64)
    y = ProgrammedMatrix.program(w, prof, seed=0).matmul(x, read_seed=0)
    return float(np.linalg.norm(y - ref) / np.linalg.norm(ref))


def _median_time(f, runs: int = 7) -> float:
    ts = []
    for _ in range(runs):
        t = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts))


def preset_table(layers: list[Layer], x: np.ndarray, y: np.ndarray) -> str:
    float_acc = float(np.mean(np.argmax(float_forward(layers, x), axis=0) == y))
    t_float = _median_time(lambda: float_forward(layers, x))
    n_weights = sum(l.weight.size for l in layers)
    lines = [f"float32 reference accuracy: {float_acc:.4f}; test samples: {x.shape[1]}; "
             f"accuracy = mean over programming seeds {SEEDS}", "",
             "| preset | accuracy | vs float | MVM rel. error (layer 1) | bytes/weight | samples/s | time ratio to float |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, prof in PRESETS.items():
        acc = accuracy(layers, prof, x, y)
        net = CrossbarMLP.program(layers, prof, seed=0)
        t = _median_time(lambda: net.predict(x))
        lines.append(f"| {name} | {acc:.4f} | {acc - float_acc:+.4f} | {mvm_error(layers, prof, x):.4f} | "
                     f"{net.nbytes / n_weights:.3f} | {x.shape[1] / t:,.0f} | {t / t_float:.1f} |")
    return "\n".join(lines)


def sweep(layers: list[Layer], x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, dict[str, list[float]]]:
    base = PRESETS["rram"]
    grid = np.array([[accuracy(layers, base.with_changes(prog_noise_scale=s, adc_bits=b), x, y)
                      for s in NOISE_SCALES] for b in ADC_BITS])
    curves = {name: [accuracy(layers, prof.with_changes(prog_noise_scale=s), x, y) for s in NOISE_SCALES]
              for name, prof in PRESETS.items() if name != "ideal"}
    return grid, curves


def sweep_tables(grid: np.ndarray, curves: dict[str, list[float]]) -> str:
    head = "| ADC bits \\ prog-noise scale | " + " | ".join(f"{s:g}" for s in NOISE_SCALES) + " |"
    lines = ["Accuracy on the rram preset, programming-noise scale x ADC bits (0 = ideal ADC)", "",
             head, "|---|" + "---:|" * len(NOISE_SCALES)]
    for b, row in zip(ADC_BITS, grid):
        lines.append(f"| {b} | " + " | ".join(f"{a:.3f}" for a in row) + " |")
    lines += ["", "Accuracy vs programming-noise scale per preset", "",
              "| preset | " + " | ".join(f"{s:g}" for s in NOISE_SCALES) + " |",
              "|---|" + "---:|" * len(NOISE_SCALES)]
    for name, accs in curves.items():
        lines.append(f"| {name} | " + " | ".join(f"{a:.3f}" for a in accs) + " |")
    return "\n".join(lines)


def plot(grid: np.ndarray, curves: dict[str, list[float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(12, 4.8))
    im = ax0.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    ax0.set_xticks(range(len(NOISE_SCALES)), [f"{s:g}" for s in NOISE_SCALES])
    ax0.set_yticks(range(len(ADC_BITS)), [("ideal" if b == 0 else str(b)) for b in ADC_BITS])
    ax0.set_xlabel("programming-noise scale (x published sigma)")
    ax0.set_ylabel("ADC bits")
    ax0.set_title("rram preset: digits accuracy")
    for i in range(grid.shape[0]):
        for j in range(grid.shape[1]):
            ax0.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", color="w" if grid[i, j] < 0.6 else "k")
    fig.colorbar(im, ax=ax0)
    for name, accs in curves.items():
        ax1.plot(NOISE_SCALES, accs, marker="o", label=name)
    ax1.set_xscale("symlog", linthresh=0.5)
    ax1.set_xlabel("programming-noise scale")
    ax1.set_ylabel("test accuracy")
    ax1.set_ylim(0, 1)
    ax1.grid(True, alpha=0.3)
    ax1.legend()
    ax1.set_title("accuracy vs programming noise")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    layers = train_digits_mlp(seed=0)
    _, _, xte, yte = load_digits_split(seed=0)
    x = xte.T.copy()
    table = preset_table(layers, x, yte)
    print(table, "\n")
    grid, curves = sweep(layers, x, yte)
    tables = sweep_tables(grid, curves)
    print(tables)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "digits.md").write_text(table + "\n\n" + tables + "\n")
    plot(grid, curves, OUT / "digits_accuracy.png")
    print(f"\nwrote {OUT / 'digits.md'} and {OUT / 'digits_accuracy.png'}")


if __name__ == "__main__":
    main()
