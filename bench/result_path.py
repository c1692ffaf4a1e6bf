"""CPU of handing one stored one-shot result to a local client, both ways, in one process.

Issue 13, branch result6. The daemon writes a job's result once to its data dir. Before,
``api.result`` read it back (``np.load``) and copied it into a fresh sealed memfd which the
client mapped; now the client maps the stored file's data area itself (node/shm.py,
result files). This times the parts that differ, alternating the two ways round by round
(CPU time of this process, which plays both ends), on a result file in a temp dir of the
same disk as a data dir:

- read back: ``np.load`` + ``shm.Outgoing`` (memfd create, write, seal), then the client
  maps it copy-on-write, reads every byte (as a caller would) and unmaps; the daemon's
  read-back array freed;
- file: ``np.load(mmap_mode="r")`` + ``shm.SharedFile``, then the client maps the file's
  data area copy-on-write, reads every byte and unmaps.

Also the minor page faults of each way. Run by hand:
    python bench/result_path.py [--n 2048] [--rounds 20]
Prints a table (medians).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from node import shm  # noqa: E402
from node.work.jobs import _map_result, _save_npy_rows  # noqa: E402


def _client_reads(view: memoryview) -> None:
    arr = np.frombuffer(view, np.float32)
    float(arr.sum(dtype=np.float64))    # every page touched, as a caller reading it


def read_back(path: Path, channel: shm.Channel) -> None:
    arr = np.load(path)
    out = shm.Outgoing([memoryview(arr).cast("B")])
    del arr
    _hand_over(out, channel)


def by_file(path: Path, channel: shm.Channel) -> None:
    arr = _map_result(path)
    out = shm.SharedFile(arr.filename, arr.nbytes)
    del arr
    _hand_over(out, channel)


def _hand_over(out: shm.Outgoing | shm.SharedFile, channel: shm.Channel) -> None:
    """The client's side of either way: receive the handle, the daemon closes its end,
    the client reads every page and lets go."""
    view = channel.receive(out.handle)
    out.close()
    _client_reads(view)
    view.release()
    shm.REAPER.reap()


def measure(fn, path: Path, channel: shm.Channel) -> tuple[float, int]:
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t0 = time.process_time()
    fn(path, channel)
    return (time.process_time() - t0) * 1000, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=2048)
    ap.add_argument("--rounds", type=int, default=20)
    args = ap.parse_args()
    y = np.random.default_rng(0).standard_normal((args.n, args.n)).astype(np.float32)
    with tempfile.TemporaryDirectory(dir=Path(__file__).parent / "out") as tmp:
        path = Path(tmp) / "job.npy"
        _save_npy_rows(path, y.shape, [(0, y)])
        import socket
        a, b = socket.socketpair(socket.AF_UNIX)
        channel = shm.Channel(a, send=True, follow=False, writable=True, files=True)
        ways = {"read back + memfd copy (main)": read_back, "client maps the file (result6)": by_file}
        got: dict[str, list[tuple[float, int]]] = {k: [] for k in ways}
        for fn in ways.values():
            fn(path, channel)                    # warm-up
        for _ in range(args.rounds):
            for name, fn in ways.items():
                got[name].append(measure(fn, path, channel))
        channel.close()
        a.close()
        b.close()
    print(f"result of {args.n}x{args.n} float32 ({y.nbytes >> 20} MiB), {args.rounds} rounds "
          f"alternating, load {os.getloadavg()[0]:.2f}\n")
    print("| way | CPU ms (median) | minor faults (median) |\n|---|---:|---:|")
    for name, rows in got.items():
        print(f"| {name} | {statistics.median(r[0] for r in rows):.1f} | "
              f"{statistics.median(r[1] for r in rows):.0f} |")


if __name__ == "__main__":
    main()
