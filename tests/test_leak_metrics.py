"""Metrics keep one window of completion stamps, not an ever-filling 100,000-slot ring."""

from __future__ import annotations

from node import metrics as metrics_mod
from node.metrics import Metrics


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_completion_stamps_older_than_the_window_are_dropped(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(metrics_mod.time, "monotonic", clock)
    m = Metrics(window=60.0)
    for _ in range(500):
        m.completed(4)
        clock.now += 1.0          # 500 s of steady work, 4 completions a second
    assert len(m.completions) <= 61 * 4
    assert min(m.completions) > clock.now - 60.0 - 1.0


def test_throughput_still_counts_the_last_window(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(metrics_mod.time, "monotonic", clock)
    m = Metrics(window=10.0)
    m.completed(100)              # falls out of the window below
    clock.now += 20.0
    m.completed(30)
    clock.now += 1.0
    assert m.throughput() == 30 / 10.0
