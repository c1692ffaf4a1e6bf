"""The debug allocation dump (SEDMA_TRACEMALLOC) names the code that grew between dumps."""

from __future__ import annotations

import tracemalloc

from node.runtime import memtrace
from node.runtime.memtrace import AllocationTracer

hoard: list[bytes] = []


def grow() -> None:
    hoard.extend(bytes(4096) + bytes([i % 256]) for i in range(2000))   # ~8 MiB


def test_second_dump_lists_the_growth_and_its_call_site(tmp_path):
    tracemalloc.start(memtrace.FRAMES)
    try:
        tracer = AllocationTracer(tmp_path)
        first = tracer.dump().read_text()
        grow()
        second = tracer.dump().read_text()
    finally:
        tracemalloc.stop()
        hoard.clear()
    assert first.startswith("rss ") and "growth since" not in first
    growth = second.split("--- growth since dump 0")[1].split("--- largest now")[0]
    top = growth.splitlines()[1]
    assert float(top.split(" KiB")[0]) > 7000     # the ~8 MiB hoard, first in the list
    assert "test_leak_memtrace.py" in growth.split("\n    ", 1)[1].split("KiB")[0]   # its traceback


def test_install_does_nothing_without_the_variable(monkeypatch, tmp_path):
    monkeypatch.delenv("SEDMA_TRACEMALLOC", raising=False)
    assert memtrace.install(None, tmp_path) is None
    assert not tracemalloc.is_tracing()
