"""The dual memory learns from what it observes, survives restarts, and steers placement."""

from pathlib import Path

import pytest

from node.memory.dualmemory import DualMemory
from node.work.placement import RELAY_PENALTY, Candidate, rank, score
from node.memory.statedb import StateDB


def cand(node_id, capacity=10.0, load=0.0, link="tcp", alive=True):
    return Candidate(node_id, capacity, load, 1 << 30, "ideal", link, alive)


def test_consolidation_turns_observed_shares_into_a_speed_estimate():
    mem = DualMemory()
    for i in range(10):
        mem.record_share("fast", flops=4e9, seconds=0.1, ok=True, now=100 + i)
        mem.record_share("slow", flops=4e9, seconds=1.0, ok=True, now=100 + i)
    mem.consolidate(now=200)
    assert mem.peer_speed("fast") == pytest.approx(40.0)
    assert mem.peer_speed("slow") == pytest.approx(4.0)
    assert mem.peer_speed("stranger") is None


def test_failures_lower_reliability_and_the_estimate_moves_gradually():
    mem = DualMemory()
    mem.record_share("p", 1e9, 0.1, True, now=1)
    mem.consolidate(now=2)
    mem.record_share("p", 1e9, 0.5, False, now=3)
    mem.record_share("p", 1e9, 0.5, False, now=3)
    mem.consolidate(now=4)
    assert mem.peer_reliability("p") < 1.0
    mem.record_share("p", 1e9, 1.0, True, now=5)     # 1 GFLOP/s now
    mem.consolidate(now=6)
    assert 1.0 < mem.peer_speed("p") < 10.0           # between old (10) and new (1)


def test_placement_trusts_what_it_measured_over_what_a_peer_advertises():
    mem = DualMemory()
    boastful, honest = cand("boast", capacity=100.0), cand("honest", capacity=10.0)
    assert [c.node_id for _, c in rank([boastful, honest], mem)] == ["boast", "honest"]
    for t in range(5):
        mem.record_share("boast", 1e9, 1.0, True, now=t)    # it really does 1 GFLOP/s
        mem.record_share("honest", 1e10, 1.0, True, now=t)  # and this one 10
    mem.consolidate(now=10)
    assert [c.node_id for _, c in rank([boastful, honest], mem)] == ["honest", "boast"]


def test_load_relay_and_liveness_shape_the_score():
    mem = DualMemory()
    base = score(cand("a"), mem)
    assert score(cand("a", load=1.0), mem) == pytest.approx(base / 2)
    assert score(cand("a", link="ice-relay"), mem) == pytest.approx(base * RELAY_PENALTY)
    assert score(cand("a", alive=False), mem) == 0
    assert rank([cand("a", alive=False)], mem) == []


def test_both_memories_survive_a_restart_through_sqlite(tmp_path: Path):
    db = StateDB(tmp_path / "state.db")
    mem = DualMemory()
    mem.record_share("p", 2e9, 0.5, True, now=1000)
    mem.record_request("w", 0.02, now=1000)
    mem.consolidate(now=1001)
    mem.record_share("p", 2e9, 0.5, True, now=1002)      # not yet consolidated
    db.call(lambda c: mem.save(c, now=1003))
    db.close()

    db = StateDB(tmp_path / "state.db")
    again = DualMemory()
    db.call(again.load)
    db.close()
    assert again.peer_speed("p") == pytest.approx(4.0)
    assert again.matrix_patterns["w"].requests == 1
    assert len(again.peers["p"]) == 2                     # the short-term window came back
    again.consolidate(now=1004)                           # and is not counted twice
    assert again.peer_patterns["p"].samples == 2


def test_a_damaged_memory_record_is_ignored_not_fatal(tmp_path: Path):
    db = StateDB(tmp_path / "state.db")
    db.call(lambda c: c.execute("INSERT INTO long_term VALUES ('memory', x'c1c1', 0)"))
    mem = DualMemory()
    db.call(mem.load)
    db.close()
    assert mem.peer_patterns == {}
