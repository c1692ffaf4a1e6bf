"""The replica choice as the job manager runs it (``JobManager._holder_order``) and what
feeds it (``JobManager.holder_request``), with fakes for the mesh: no daemons.

Why: the model pipeline (every ``infer`` of a deployed matrix) ranked holders without
the request's work and never fed the per-request estimates, so every coordinator sent a
block to the plan's first holder and a hot block's replica sat idle (bench/README, skew).
"""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import pytest

from node.memory.dualmemory import DualMemory
from node.work.jobs import JobManager
from node.work.latency import PeakEwma
from node.work.placement import Candidate

GF = 1e9


def _jobs(me: str, alive: list[str], linked: list[str]) -> JobManager:
    jobs = JobManager.__new__(JobManager)          # only what the choice reads
    jobs.node_id = me
    jobs.memory = DualMemory()
    jobs.recent = PeakEwma()
    jobs.inflight = {}
    closed = asyncio.Event()
    jobs.mesh = SimpleNamespace(sessions={n: SimpleNamespace(closed=closed) for n in linked})
    jobs.candidates = lambda only=None: [
        Candidate(n, 10.0, 0.0, 1 << 30, "ideal", "self" if n == me else "tcp")
        for n in alive if only is None or n in only]
    return jobs


def test_requests_through_holder_request_spread_over_a_new_replica():
    jobs = _jobs("c", ["a", "b", "c"], ["a", "b"])
    for _ in range(3):                                    # a in use, b never tried
        with jobs.holder_request("a", GF):
            time.sleep(0.002)
    assert jobs.inflight == {"a": 0}
    assert jobs._holder_order(["a", "b"], GF)[0] == "b"   # probed on the next request
    with jobs.holder_request("b", GF):
        assert jobs.inflight["b"] == 1                    # counted while it runs
        assert jobs._holder_order(["a", "b"], GF)[0] == "a"
    assert "b" in jobs.recent.speeds(["b"], time.monotonic())


def test_a_holder_whose_request_failed_goes_last():
    jobs = _jobs("c", ["a", "b", "c"], ["a", "b"])
    with jobs.holder_request("a", GF):
        pass
    with pytest.raises(ConnectionError), jobs.holder_request("b", GF):
        raise ConnectionError("link closed")
    assert jobs.inflight == {"a": 0, "b": 0}
    assert jobs._holder_order(["b", "a"], GF) == ["a", "b"]
    assert jobs.memory.peers["b"][-1].ok is False


def test_a_dead_holder_and_an_unlinked_one_still_go_last():
    # "d" is not alive (no candidate); "b" is alive but has no live link
    jobs = _jobs("c", ["a", "b", "c"], ["a"])
    with jobs.holder_request("a", GF):
        time.sleep(0.01)                                  # a measured slow ...
    order = jobs._holder_order(["d", "b", "a"], GF)
    assert order == ["a", "b", "d"], order                # ... and still first: linked, alive
