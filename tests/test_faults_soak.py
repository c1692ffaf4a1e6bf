"""The soak's verdict (bench/soak.py) is a pure function of its samples: test it with fakes,
so `make soak` cannot pass a growing daemon."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_SPEC = importlib.util.spec_from_file_location(
    "soak", Path(__file__).resolve().parent.parent / "bench" / "soak.py")
soak = importlib.util.module_from_spec(_SPEC)
sys.modules.setdefault("soak", soak)   # dataclasses look their module up there
_SPEC.loader.exec_module(soak)

MiB = 2**20


def series(rss, fds=None, tasks=None, every=10.0):
    fds = fds or [20] * len(rss)
    tasks = tasks or [15] * len(rss)
    return [soak.Sample(i * every, [r * MiB], [f], [t])
            for i, (r, f, t) in enumerate(zip(rss, fds, tasks))]


def test_a_flat_daemon_passes_after_warm_up():
    # growth during the warm-up (first 30 s) does not count
    assert soak.verdict(series([40, 60, 90, 100, 104, 97, 101, 103, 99]), warmup=30) == []


def test_rss_beyond_ten_percent_fails():
    problems = soak.verdict(series([100, 100, 100, 105, 109, 112]), warmup=0)
    assert len(problems) == 1 and "RSS" in problems[0] and "node 1" in problems[0]


def test_fd_and_task_growth_fail():
    problems = soak.verdict(series([100] * 9, fds=[20, 20, 20, 22, 24, 26, 28, 30, 32],
                                   tasks=[15, 15, 16, 15, 15, 16, 15, 15, 16]), warmup=0)
    assert len(problems) == 1 and "fds grew" in problems[0]
    problems = soak.verdict(series([100] * 9, tasks=[15, 15, 15, 20, 25, 30, 35, 40, 45]),
                            warmup=0)
    assert len(problems) == 1 and "tasks grew" in problems[0]


def test_too_few_samples_is_not_a_pass():
    assert "run longer" in soak.verdict(series([100, 100, 100]), warmup=25)[0]
