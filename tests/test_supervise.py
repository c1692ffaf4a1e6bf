"""Background loops are supervised: failures are logged, counted, and the loop restarts."""

from __future__ import annotations

import asyncio
import logging

import pytest

from node.runtime.looplag import LagMonitor
from node.runtime.supervise import Supervisor, backoff_delay


def test_backoff_doubles_and_is_capped():
    assert backoff_delay(0) == 0.0
    assert [backoff_delay(n, base=0.5, cap=60) for n in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 4.0]
    assert backoff_delay(50, base=0.5, cap=60) == 60
    assert backoff_delay(10**6, base=0.5, cap=60) == 60


class FakeTime:
    """A clock the fake sleep advances, so backoff costs no real time."""

    def __init__(self):
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


async def test_a_failing_loop_is_restarted_with_backoff_and_reported(caplog):
    t = FakeTime()
    sup = Supervisor(base=1.0, cap=8.0, clock=t.clock, sleep=t.sleep)
    runs = 0

    async def broken():
        nonlocal runs
        runs += 1
        await asyncio.sleep(0)
        raise KeyError("boom")

    with caplog.at_level(logging.ERROR, logger="sedma.supervise"):
        sup.start("advertise", broken)
        for _ in range(200):
            if runs >= 6:
                break
            await asyncio.sleep(0)
        await sup.stop()
    assert runs >= 6
    assert t.sleeps[:5] == [1.0, 2.0, 4.0, 8.0, 8.0]
    report = sup.report()["advertise"]
    assert report["failures"] >= 5 and report["consecutive"] >= 5
    assert "KeyError" in report["last_error"] and "boom" in report["last_error"]
    assert sup.failing() == ["advertise"]
    assert any(r.exc_info and "advertise" in r.getMessage() for r in caplog.records)


async def test_a_healthy_run_clears_the_failure_streak():
    t = FakeTime()
    sup = Supervisor(base=1.0, cap=8.0, healthy_after=60.0, clock=t.clock, sleep=t.sleep)
    calls = 0
    release = asyncio.Event()

    async def flaky():
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ValueError("first run fails")
        await release.wait()       # then runs healthily

    sup.start("memory", flaky)
    for _ in range(50):
        await asyncio.sleep(0)
    assert sup.report()["memory"]["consecutive"] == 1
    t.now += 61                     # a minute of healthy running
    assert sup.failing() == []
    assert sup.report()["memory"]["failures"] == 1
    await sup.stop()


async def test_a_loop_that_returns_is_restarted_too():
    t = FakeTime()
    sup = Supervisor(base=1.0, clock=t.clock, sleep=t.sleep)
    calls = 0

    async def quits():
        nonlocal calls
        calls += 1

    sup.start("ping", quits)
    for _ in range(20):
        await asyncio.sleep(0)
    await sup.stop()
    assert calls >= 3
    assert "returned" in sup.report()["ping"]["last_error"]


async def test_stop_cancels_healthy_loops_without_counting_a_failure():
    sup = Supervisor()
    sup.start("forever", lambda: asyncio.sleep(3600))
    await asyncio.sleep(0)
    await sup.stop()
    assert sup.report()["forever"]["failures"] == 0


async def test_names_are_unique():
    sup = Supervisor()
    sup.start("x", lambda: asyncio.sleep(3600))
    with pytest.raises(ValueError):
        sup.start("x", lambda: asyncio.sleep(3600))
    await sup.stop()


def test_lag_monitor_reports_late_ticks_within_its_window():
    lag = LagMonitor(interval=0.05, window=10.0)
    lag.observe(expected=1.0, actual=1.002)
    lag.observe(expected=2.0, actual=2.300)     # the loop was blocked for 300 ms
    r = lag.report()
    assert r["max_ms"] == pytest.approx(300.0)
    assert r["last_ms"] == pytest.approx(300.0)
    lag.observe(expected=20.0, actual=20.001)   # the stall left the window
    assert lag.report()["max_ms"] == pytest.approx(1.0)
    assert lag.report()["worst_ms"] == pytest.approx(300.0)
    lag.observe(expected=21.0, actual=21.4, cpu=0.01)   # late, but the loop was not busy
    assert lag.report()["max_cpu_ms"] == pytest.approx(10.0)
    assert lag.report()["max_ms"] == pytest.approx(400.0)


async def test_lag_monitor_counts_cpu_burnt_on_the_loop():
    import time as _time

    lag = LagMonitor(interval=0.01)
    task = asyncio.create_task(lag.run())
    await asyncio.sleep(0.05)
    end = _time.thread_time() + 0.15
    while _time.thread_time() < end:       # 150 ms of CPU inside one callback
        pass
    await asyncio.sleep(0.05)
    task.cancel()
    r = lag.report()
    assert r["max_cpu_ms"] >= 140 and r["max_ms"] >= 140


async def test_stop_can_keep_named_loops_running():
    sup = Supervisor()
    sup.start("gossip", lambda: asyncio.sleep(3600))
    sup.start("advertise", lambda: asyncio.sleep(3600))
    await asyncio.sleep(0)
    await sup.stop(keep=("gossip",))
    assert sup.report()["gossip"]["running"] and not sup.report()["advertise"]["running"]
    await sup.stop()
    assert not sup.report()["gossip"]["running"]


def test_a_stuck_loop_thread_gets_its_stack_logged(caplog):
    import time as _time

    from node.runtime.looplag import StallReporter

    lag = LagMonitor(interval=0.01)
    reporter = StallReporter(lag, threshold=0.05)

    def _reported() -> bool:
        return any("stuck" in r.getMessage() for r in caplog.records)

    def _busy_on_the_loop():          # stuck until the watchdog has spoken (at most 10 s)
        end = _time.monotonic() + 10
        while _time.monotonic() < end and not _reported():
            sum(range(1000))

    with caplog.at_level(logging.WARNING, logger="sedma.looplag"):
        lag.last_tick = _time.monotonic()
        reporter.start()
        _busy_on_the_loop()
        reporter.stop()
        reporter._thread.join(5)
    stuck = [r.getMessage() for r in caplog.records if "stuck" in r.getMessage()]
    assert stuck and "_busy_on_the_loop" in stuck[0]
