"""Runs compute off the event loop, and measures how busy it keeps the cores.

numpy's matmul releases the GIL, so a thread pool gives real parallelism without the
cost of shipping weights to another process; resident blocks are shared by reference.
The busy-time ledger feeds the "resource utilisation" metric (busy compute time divided
by wall time times cores, over a window).

Oversubscription: each compute thread's matmul may itself start a BLAS thread team, so
``workers`` threads x BLAS's default (one per core) would run cores^2 threads fighting for
cores. The executor caps BLAS (threadpoolctl, process-wide, for OpenBLAS/MKL/BLIS alike)
so that workers x BLAS threads <= the cores this process may run on, in production too.

An idle daemon never loads numpy (issue 13), and threadpoolctl can only limit a BLAS that
is loaded, so the cap is applied when numpy is (``lazynumpy.after_load``, on the thread
that imports it). Before that, the thread-count variables are set (unless the user set
them) so OpenBLAS starts with the capped team instead of one thread and one buffer per
core that the cap would then leave idle.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import os
import threading
import logging
import time
from typing import Any, Callable, TypeVar

from compute import lazynumpy

log = logging.getLogger("sedma.executor")

T = TypeVar("T")


class Executor:
    """A bounded pool of compute threads with a busy-time ledger."""

    def __init__(self, workers: int | None = None, window: float = 60.0,
                 cores: int | None = None) -> None:
        self.cores = cores or usable_cores()
        wanted = workers or self.cores
        if wanted > self.cores:
            log.warning("%d compute threads asked for, but only %d cores are usable; using %d",
                        wanted, self.cores, self.cores)
        self.workers = min(wanted, self.cores)
        self.blas_threads = max(1, self.cores // self.workers)
        self._blas_limit: Any = None     # threadpoolctl's limiter, once numpy is loaded
        if lazynumpy.loaded() is None:
            for var in BLAS_THREAD_VARS:
                os.environ.setdefault(var, str(self.blas_threads))
        lazynumpy.after_load(self._limit_blas)
        self._pool = concurrent.futures.ThreadPoolExecutor(self.workers,
                                                           thread_name_prefix="sedma-compute")
        self.window = window
        self._spans: collections.deque[tuple[float, float]] = collections.deque(maxlen=100_000)
        self._lock = threading.Lock()
        self.running = 0
        self.queued = 0
        self.completed = 0
        self.busy_seconds = 0.0   # compute time since start, for /metrics

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on a compute thread and return its result."""
        self.queued += 1
        fut = self._pool.submit(self._timed, fn, args)
        try:
            return await asyncio.wrap_future(fut)
        finally:
            self.queued -= 1

    async def upkeep(self, fn: Callable[..., T], *args: Any) -> T:
        """Run the daemon's own housekeeping (``fn(*args)``) on a compute thread, outside
        the load it advertises: not in ``running``, ``queued`` or the utilisation ledger.

        Why: giving the heap back after a save, or unlinking expired result files, is
        the daemon's chore, not work a peer can route around. Counted, a slow trim that
        spanned an advert sample read as a loaded node (load 1.0 on two threads: a task
        counts as queued and running), the advert was re-published to the whole mesh and
        again a beat later when it ended: an idle daemon's advert moved every save. The
        price: a job may wait a chore's few milliseconds for a thread the advert showed
        free.
        """
        return await asyncio.wrap_future(self._pool.submit(fn, *args))

    def _timed(self, fn: Callable[..., T], args: tuple) -> T:
        start = time.monotonic()
        with self._lock:
            self.running += 1
        try:
            return fn(*args)
        finally:
            end = time.monotonic()
            with self._lock:
                self.running -= 1
                self.completed += 1
                self.busy_seconds += end - start
                self._spans.append((start, end))

    def utilisation(self, now: float | None = None) -> float:
        """Busy compute seconds / (window seconds x workers) over the last window."""
        now = time.monotonic() if now is None else now
        lo = now - self.window
        with self._lock:
            busy = sum(min(e, now) - max(s, lo) for s, e in self._spans if e > lo)
        return busy / (self.window * self.workers)

    def _limit_blas(self) -> None:
        from threadpoolctl import threadpool_limits   # ctypes and a library scan: with numpy

        self._blas_limit = threadpool_limits(limits=self.blas_threads, user_api="blas")

    def shutdown(self, wait: bool = True) -> None:
        self._pool.shutdown(wait=wait, cancel_futures=not wait)
        if wait and self._blas_limit is not None:   # abandoned threads keep their limit
            self._blas_limit.restore_original_limits()

    def threads_in_use(self) -> int:
        """Compute threads x the BLAS threads each may start (what the cap bounds)."""
        from threadpoolctl import threadpool_info

        blas = max((i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"),
                   default=1)
        return self.workers * blas


#: Read by OpenBLAS, OpenMP and MKL when they load.
BLAS_THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, which containers narrow)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def measure_capacity(size: int = 512, repeats: int = 3) -> float:
    """A quick float32 matmul probe of this machine, in GFLOP/s (best of ``repeats``).
    numpy comes through ``lazynumpy.load`` on this (worker) thread: its after-load hooks
    (the BLAS cap) then run here, under the cap, and not later on the event loop."""
    from compute import lazynumpy
    lazynumpy.load()
    import numpy as np

    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    a @ a  # warm up BLAS threads and caches
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ a
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / max(best, 1e-9) / 1e9
