"""Debug-only allocation tracing for hunting memory growth (``SEDMA_TRACEMALLOC=1``).

Off by default: tracemalloc costs CPU and memory on every allocation. When the variable
is set, the daemon starts tracemalloc at launch and, on ``SIGUSR1``, writes the top
allocation sites (and their growth since the first dump) to ``tracemalloc-N.txt`` in the
data dir, with RSS before and after ``malloc_trim(0)``: memory that trimming gives back
was allocator fragmentation, not live objects.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import signal
import tracemalloc
from pathlib import Path

log = logging.getLogger("sedma.memtrace")

TOP = 40
FRAMES = 12


def rss_bytes() -> int:
    """Resident set of this process, from /proc (0 where /proc is missing)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def trim() -> bool:
    """glibc ``malloc_trim(0)``: hand free heap pages back; False if none or not glibc."""
    name = ctypes.util.find_library("c")
    try:
        return bool(name and ctypes.CDLL(name).malloc_trim(0))
    except (OSError, AttributeError):
        return False


class AllocationTracer:
    """Owns the baseline snapshot; dumps are taken on the event loop (debug only)."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.baseline: tracemalloc.Snapshot | None = None
        self.count = 0

    def dump(self) -> Path:
        snap = tracemalloc.take_snapshot().filter_traces(
            [tracemalloc.Filter(False, tracemalloc.__file__)])
        before = rss_bytes()
        trimmed = trim()
        after = rss_bytes()
        current, peak = tracemalloc.get_traced_memory()
        lines = [f"rss {before / 2**20:.1f} MiB, after malloc_trim {after / 2**20:.1f} MiB "
                 f"(trim {'freed pages' if trimmed else 'freed nothing'}); traced "
                 f"{current / 2**20:.1f} MiB, peak {peak / 2**20:.1f} MiB"]
        if self.baseline is not None:
            lines.append(f"--- growth since dump 0 (top {TOP}, by traceback)")
            for stat in snap.compare_to(self.baseline, "traceback")[:TOP]:
                lines.append(f"{stat.size_diff / 1024:+.1f} KiB, {stat.count_diff:+d} blocks "
                             f"(now {stat.size / 1024:.1f} KiB)")
                lines.extend("    " + ln for ln in stat.traceback.format()[-FRAMES:])
        lines.append(f"--- largest now (top {TOP}, by line)")
        for stat in snap.statistics("lineno")[:TOP]:
            lines.append(f"{stat.size / 1024:.1f} KiB, {stat.count} blocks: {stat.traceback[0]}")
        if self.baseline is None:
            self.baseline = snap
        path = self.out_dir / f"tracemalloc-{self.count}.txt"
        self.count += 1
        path.write_text("\n".join(lines) + "\n")
        log.info("tracemalloc dump written to %s", path)
        return path


def install(loop, out_dir: Path) -> AllocationTracer | None:
    """Start tracing and hook SIGUSR1 when SEDMA_TRACEMALLOC is set; else do nothing."""
    if not os.environ.get("SEDMA_TRACEMALLOC"):
        return None
    tracemalloc.start(FRAMES)
    tracer = AllocationTracer(out_dir)
    loop.add_signal_handler(signal.SIGUSR1, tracer.dump)
    log.warning("SEDMA_TRACEMALLOC set: allocations traced (slow); SIGUSR1 dumps to %s",
                out_dir)
    return tracer
