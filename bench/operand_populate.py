"""Does batching the first-touch faults of a client's operand pay? (issue 13, result6)

The daemon maps a local client's operand (a sealed memfd, read-only) and scans it for
NaN/Inf on a worker thread; that scan takes the first touch of every page. This times, in
one process and alternating, three ways for one N x N float32 operand: a plain read-only
mapping then the scan; ``MAP_POPULATE`` at mapping time (the whole page table filled in
one call) then the scan; ``madvise(MADV_POPULATE_READ)`` then the scan. CPU time of the
map, the scan (madvise included) and the unmap, medians. Run by hand:
    python bench/operand_populate.py [--n 2048] [--rounds 15]
"""

from __future__ import annotations

import argparse
import mmap
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from node import shm  # noqa: E402

MADV_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22)   # Linux 5.14+


def once(out: shm.Outgoing, nbytes: int, mode: str) -> tuple[float, float, float]:
    t0 = time.process_time_ns()
    fd = os.open(f"/proc/self/fd/{out.fd}", os.O_RDONLY)
    if mode == "MAP_POPULATE":
        m = mmap.mmap(fd, nbytes, flags=mmap.MAP_SHARED | mmap.MAP_POPULATE,
                      prot=mmap.PROT_READ)
    else:
        m = mmap.mmap(fd, nbytes, access=mmap.ACCESS_READ)
    os.close(fd)
    t1 = time.process_time_ns()
    if mode == "MADV_POPULATE_READ":
        m.madvise(MADV_POPULATE_READ)
    x = np.frombuffer(m, np.float32)
    assert np.isfinite(x).all()
    t2 = time.process_time_ns()
    del x
    m.close()
    t3 = time.process_time_ns()
    return (t1 - t0) / 1e6, (t2 - t1) / 1e6, (t3 - t2) / 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=2048)
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args()
    a = np.random.default_rng(0).standard_normal((args.n, args.n)).astype(np.float32)
    modes = ["plain", "MAP_POPULATE", "MADV_POPULATE_READ"]
    got: dict[str, list] = {m: [] for m in modes}
    with shm.Outgoing([memoryview(a).cast("B")]) as out:
        for _ in range(args.rounds):
            for m in modes:
                got[m].append(once(out, a.nbytes, m))
    print(f"operand {args.n}x{args.n} float32, {args.rounds} rounds alternating, "
          f"load {os.getloadavg()[0]:.2f}\n")
    print("| way | map ms | scan ms | unmap ms | total ms |\n|---|---:|---:|---:|---:|")
    for m, rows in got.items():
        med = [statistics.median(r[i] for r in rows) for i in range(3)]
        print(f"| {m} | {med[0]:.2f} | {med[1]:.2f} | {med[2]:.2f} | {sum(med):.2f} |")


if __name__ == "__main__":
    main()
