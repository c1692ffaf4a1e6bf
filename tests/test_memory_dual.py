"""The dual memory's new long-term parts survive a restart: per-block reads, the learned
read order, this node's own speed, link speeds and the reconfiguration decisions."""

from pathlib import Path

import pytest

from node.memory.dualmemory import DualMemory
from tests.restarted_memory import restarted


def test_block_reads_sequences_speeds_and_decisions_round_trip(tmp_path: Path):
    mem = DualMemory()
    for rnd in range(3):
        for i in range(4):
            mem.record_block_read((f"L{i}", 0), now=1000 + rnd * 10 + i * 0.1)
    mem.record_tier_read(0, 1 << 20, 0.001, ("L0", 0))
    mem.record_tier_read(1, 1 << 20, 0.004, ("L1", 0))
    mem.record_served(2e9, 1.0)
    mem.record_transfer("peer", 100 << 20, 2.0)
    mem.record_decision({"kind": "migrate", "name": "L0", "index": 0, "at": 1010.0,
                         "reason": "slow", "predicted_gain": 3.0, "measured_after": None})
    mem.judge_decision(1010.0, ("L0", 0), {"service_s": 0.01})
    again = restarted(mem, tmp_path / "state.db")
    assert again.predict_next(("L1", 0)) == [("L2", 0)]
    assert again.block_use(("L3", 0)) == mem.block_use(("L3", 0))
    assert again.block_service_s(("L1", 0)) == pytest.approx(0.004)
    assert again.served_gflops == pytest.approx(2.0)
    assert again.link_speed("peer", 0) == pytest.approx(50 << 20)
    (d,) = again.decided()
    assert d["reason"] == "slow" and d["measured_after"] == {"service_s": 0.01}
    assert mem.tier1_speed() == pytest.approx(0.25)


def test_a_steady_read_rate_is_estimated_from_the_aged_count():
    mem = DualMemory()
    for k in range(600):                       # 2 reads/s for 5 minutes
        mem.record_block_read(("w", 0), now=k * 0.5)
    assert mem.block_rate(("w", 0), now=300) == pytest.approx(2.0, rel=0.1)
    assert mem.block_rate(("never", 0), now=300) == 0.0


def test_forgetting_a_matrix_drops_its_counts_and_sequences():
    mem = DualMemory()
    mem.record_block_read(("a", 0), now=1)
    mem.record_block_read(("b", 0), now=1.1)
    mem.record_request("a", 0.01, now=1.2)
    mem.consolidate(now=20)
    assert "a" in mem.matrix_patterns and "a" in mem.requests
    mem.forget_matrix("a")
    assert mem.block_use(("a", 0)) == (0.0, 0.0)
    assert "a" not in mem.matrix_patterns and "a" not in mem.requests
    assert mem.predict_next(("a", 0)) == []


def test_the_rate_half_life_sets_how_fast_a_blocks_rate_cools():
    from node.memory.dualmemory import DualMemory
    rates = {}
    for half in (10.0, 60.0):
        m = DualMemory(rate_half_life_s=half)
        for i in range(200):                     # 10 reads/s for 20 s
            m.record_block_read(("w", 0), now=1000.0 + i / 10)
        rates[half] = (m.block_rate(("w", 0), 1020.0), m.block_rate(("w", 0), 1050.0))
    assert rates[10.0][1] < rates[10.0][0] / 7      # three half-lives later: 1/8
    assert rates[60.0][1] > rates[60.0][0] / 2      # half a half-life later: > 1/2
