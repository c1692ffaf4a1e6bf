"""Compute threads x BLAS threads never exceed the cores the daemon may use."""

from __future__ import annotations

import numpy as np
from threadpoolctl import threadpool_info

from compute.executor import Executor, usable_cores


def _blas_threads() -> int:
    return max(i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas")


def test_workers_times_blas_threads_fit_the_usable_cores():
    before = _blas_threads()
    cores = usable_cores()
    ex = Executor(workers=cores)
    try:
        assert ex.workers * _blas_threads() <= cores
        assert ex.threads_in_use() <= cores
    finally:
        ex.shutdown()
    assert _blas_threads() == before        # a clean shutdown gives the limit back


def test_fewer_workers_leave_blas_the_rest_and_more_are_clamped():
    ex = Executor(workers=1, cores=8)
    try:
        assert (ex.workers, ex.blas_threads) == (1, 8)
    finally:
        ex.shutdown()
    ex = Executor(workers=16, cores=4)
    try:
        assert ex.workers == 4 and ex.blas_threads == 1
        assert ex.workers * _blas_threads() <= 4
    finally:
        ex.shutdown()


async def test_the_limit_holds_inside_compute_threads():
    ex = Executor(workers=2, cores=2)
    try:
        seen = await ex.run(lambda: (_blas_threads(), float((np.ones((64, 64)) @ np.ones(64))[0])))
        assert seen == (1, 64.0)
    finally:
        ex.shutdown()


async def test_a_daemon_reports_and_applies_its_thread_budget(tmp_path):
    from tests.inproc import running_daemon

    async with running_daemon(tmp_path) as d:
        compute = d.status()["compute"]
        assert compute["workers"] * compute["blas_threads"] <= compute["cores"]
        assert d.executor.threads_in_use() <= compute["cores"]
