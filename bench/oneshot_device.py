"""A one-shot share on a non-ideal device: one engine call on one compute thread (what
``BlockHolder.compute_share`` does) against tile-row spans, one per compute thread, each
programmed and read at its own global row offset (an experiment of branch oneshot3: it
gives the same numbers bit for bit, but did not pay, so the daemon keeps one call).

Both run in this process on one daemon-style executor (one BLAS thread per compute
thread), alternating, on the same operands and seed; the outputs are checked equal bit
for bit. Prints medians (ms) and the ratio.

Run by hand:  python bench/oneshot_device.py [--m 1024] [--k 1024] [--n 256]
              [--device rram] [--runs 5]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from compute.crossbar import crossbar_matmul, row_granularity  # noqa: E402
from compute.device import get_preset  # noqa: E402
from compute.executor import Executor  # noqa: E402
from node.memory.statedb import StateDB  # noqa: E402
from node.memory.store import BlockStore  # noqa: E402
from node.metrics import Metrics  # noqa: E402
from node.work.holder import BlockHolder  # noqa: E402
from node.work.plans import PlanBook  # noqa: E402


async def one_call(holder: BlockHolder, a, b, device: str, seed: int) -> np.ndarray:
    """What compute_share did before: the whole share in one engine call."""
    return await holder.executor.run(functools.partial(
        crossbar_matmul, a, b, get_preset(device), seed, 0))


async def spans(holder: BlockHolder, a, b, device: str, seed: int) -> np.ndarray:
    """The experiment: tile-row spans on every compute thread."""
    profile = get_preset(device)
    g = row_granularity(profile)
    tiles = -(-a.shape[0] // g)
    count = max(1, min(holder.executor.workers, tiles))
    bounds = [round(i * tiles / count) * g for i in range(count + 1)]
    bounds[-1] = a.shape[0]
    y = np.empty((a.shape[0], b.shape[1]), np.float32)

    def part(r0: int, r1: int) -> None:
        y[r0:r1] = crossbar_matmul(a[r0:r1], b, profile, seed, r0)
    await asyncio.gather(*(holder.executor.run(functools.partial(part, r0, r1))
                           for r0, r1 in zip(bounds, bounds[1:]) if r1 > r0))
    return y


async def main_async(args) -> None:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((args.m, args.k)).astype(np.float32)
    b = rng.standard_normal((args.k, args.n)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        db = StateDB(Path(tmp) / "state.db")
        holder = BlockHolder(get_preset("ideal"), BlockStore(Path(tmp), db, budget=1 << 20),
                             Executor(), Metrics(), PlanBook(db))
        times: dict[str, list[float]] = {"one call": [], "spans": []}
        want = await one_call(holder, a, b, args.device, 5)            # warm-up
        got = await spans(holder, a, b, args.device, 5)
        assert np.array_equal(got, want), "spans differ from one call"
        for _ in range(args.runs):
            for label, fn in (("one call", one_call), ("spans", spans)):
                t = time.perf_counter()
                await fn(holder, a, b, args.device, 5)
                times[label].append(time.perf_counter() - t)
        db.close()
    one, span = (statistics.median(times[k]) * 1e3 for k in ("one call", "spans"))
    print(f"oneshot share on {args.device}: A {args.m}x{args.k} @ B {args.k}x{args.n}, "
          f"{holder.executor.workers} compute threads, load {os.getloadavg()[0]:.2f}, "
          f"{args.runs} runs each, alternating\n")
    print("| path | median ms | all runs ms |\n|---|---:|---|")
    for label, med in (("one engine call (the daemon's)", one), ("tile-row spans", span)):
        key = "one call" if "one" in label else "spans"
        print(f"| {label} | {med:.1f} | {', '.join(f'{t * 1e3:.0f}' for t in times[key])} |")
    print(f"\nspans / one call: {span / one:.2f}x the time")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--m", type=int, default=1024)
    ap.add_argument("--k", type=int, default=1024)
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--device", default="rram")
    ap.add_argument("--runs", type=int, default=5)
    asyncio.run(main_async(ap.parse_args()))


if __name__ == "__main__":
    main()
