"""Capacity measurement (issue 13): in a child process, remembered per machine for a day."""

from __future__ import annotations

import json

import pytest

from node.runtime.capacity import (CACHE_FILE, MAX_AGE_S, machine_key, measure_in_child,
                           node_capacity, read_cached, write_cached)


def test_a_remembered_capacity_is_used_only_for_the_same_machine_and_while_fresh(tmp_path):
    path = tmp_path / CACHE_FILE
    key = machine_key(1)
    write_cached(path, key, 12.5, now=1000.0)
    assert read_cached(path, key, now=1000.0 + 60) == 12.5
    assert read_cached(path, key, now=1000.0 + MAX_AGE_S + 1) is None     # too old
    assert read_cached(path, key, now=900.0) is None                       # from the future
    assert read_cached(path, machine_key(2), now=1001.0) is None           # other BLAS setting
    assert read_cached(path, dict(key, cpu="another CPU"), now=1001.0) is None
    for bad in ("", "{", json.dumps({"gflops": "fast", "at": 1000.0, "key": key}),
                json.dumps({"gflops": -3.0, "at": 1000.0, "key": key}),
                json.dumps({"gflops": float("nan"), "at": 1000.0, "key": key}), "[]"):
        path.write_text(bad)
        assert read_cached(path, key, now=1001.0) is None                  # never a crash
    assert read_cached(tmp_path / "missing.json", key, now=1001.0) is None


async def test_the_probe_runs_in_a_child_and_its_result_is_remembered(tmp_path):
    calls = []

    async def in_process() -> float:
        calls.append(1)
        return 1.0

    first = await node_capacity(tmp_path, 1, in_process, clock=lambda: 5000.0)
    assert first > 0 and not calls                       # measured in the child
    assert json.loads((tmp_path / CACHE_FILE).read_text())["gflops"] == first
    assert await node_capacity(tmp_path, 1, in_process, clock=lambda: 5060.0) == first
    assert not calls


async def test_a_child_that_cannot_run_falls_back_to_measuring_in_process(tmp_path,
                                                                        monkeypatch):
    from node.runtime import capacity

    monkeypatch.setattr(capacity, "CHILD_CODE", "raise SystemExit(3)")
    with pytest.raises(RuntimeError, match="exited with 3"):
        await measure_in_child(1)
    for says in ("pass", "print('fast')", "print(-1.0)"):
        monkeypatch.setattr(capacity, "CHILD_CODE", says)
        with pytest.raises(ValueError):
            await measure_in_child(1)
    monkeypatch.setattr(capacity, "CHILD_CODE", "import time; time.sleep(30)")
    with pytest.raises(TimeoutError):
        await measure_in_child(1, timeout=0.5)
    monkeypatch.setattr(capacity, "CHILD_CODE", "raise SystemExit(3)")

    async def in_process() -> float:
        return 7.0

    assert await node_capacity(tmp_path, 1, in_process) == 7.0
