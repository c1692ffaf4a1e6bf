"""Timestamps along the request path, for ``bench/profile_infer.py`` (issue 13).

cProfile shows where the event loop spends CPU, not where one request *waits*: a thread
hop, a socket hop or a wake-up costs latency without showing up as any function's time.
So the request path calls :func:`mark` at each stage boundary (client encode, socket,
coordinator, peer hop, compute, gather, reply). With ``$SEDMA_SPANS`` unset (always, in
production) a mark is one global test and nothing is kept.

With ``$SEDMA_SPANS=DIR`` each process keeps its marks (a bounded ring) and writes them to
``DIR/spans-<pid>.txt`` at exit, one ``<name> <perf_counter>`` line each. perf_counter is
CLOCK_MONOTONIC on Linux, shared by every process of the machine, so the bench merges the
client's and both daemons' files on one time line; with one request in flight at a time,
each request's marks are the ones between two of the client's ``client.send`` marks.
"""

from __future__ import annotations

import atexit
import collections
import os
import time
from pathlib import Path

#: Where marks are written at exit; None: marks are dropped (the normal case).
DIR = os.environ.get("SEDMA_SPANS") or None
#: Marks kept per process (the oldest go first): bounds a long run's memory.
MAX_MARKS = 200_000

_marks: collections.deque[tuple[str, float]] = collections.deque(maxlen=MAX_MARKS)


def mark(name: str) -> None:
    """Note that the request being served reached stage boundary ``name`` now."""
    if DIR is not None:
        _marks.append((name, time.perf_counter()))


def dump(directory: str | Path | None = None) -> Path | None:
    """Write this process's marks to ``directory`` (default ``$SEDMA_SPANS``)."""
    target = directory if directory is not None else DIR
    if target is None or not _marks:
        return None
    path = Path(target) / f"spans-{os.getpid()}.txt"
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(f"{n} {t:.9f}\n" for n, t in list(_marks)))
    os.replace(tmp, path)
    return path


def load(directory: str | Path) -> list[tuple[float, int, str]]:
    """Every process's marks under ``directory`` as (time, pid, name), in time order."""
    out: list[tuple[float, int, str]] = []
    for path in Path(directory).glob("spans-*.txt"):
        pid = int(path.stem.split("-")[1])
        for line in path.read_text().splitlines():
            name, _, t = line.rpartition(" ")
            out.append((float(t), pid, name))
    return sorted(out)


if DIR is not None:
    atexit.register(dump)
