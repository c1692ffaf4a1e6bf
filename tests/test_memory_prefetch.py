"""The successor model learns read order, forgets stale patterns and survives a round trip."""

from node.memory.prefetch import PrefetchStats, SuccessorModel


def layers(model, n, passes, t=0.0, step=0.1):
    for _ in range(passes):
        for i in range(n):
            model.observe((f"L{i}", 0), t)
            t += step
    return t


def test_layer_by_layer_reads_predict_the_next_layer():
    m = SuccessorModel()
    layers(m, 5, passes=3)
    for i in range(4):
        assert [p.key for p in m.predict((f"L{i}", 0))] == [(f"L{i + 1}", 0)]
    assert [p.key for p in m.predict(("L4", 0))] == [("L0", 0)]   # the next pass
    assert m.predict(("never", 0)) == []


def test_reads_far_apart_are_not_a_sequence():
    m = SuccessorModel(gap_s=1.0)
    m.observe(("a", 0), 0.0)
    m.observe(("b", 0), 5.0)
    assert m.predict(("a", 0)) == []


def test_a_changed_pattern_is_relearned_and_rare_successors_are_not_predicted():
    m = SuccessorModel()
    t = 0.0
    for _ in range(40):
        for k in ("a", "b"):
            m.observe((k, 0), t)
            t += 0.1
        t += 5
    for _ in range(200):
        for k in ("a", "c"):
            m.observe((k, 0), t)
            t += 0.1
        t += 5
    assert [p.key for p in m.predict(("a", 0))] == [("c", 0)]
    m.observe(("a", 0), t)
    m.observe(("z", 0), t + 0.1)                      # one stray read
    assert ("z", 0) not in [p.key for p in m.predict(("a", 0))]


def test_round_trip_and_forget():
    m = SuccessorModel()
    layers(m, 3, passes=2)
    m2 = SuccessorModel.from_dict(m.to_dict())
    assert m2.predict(("L0", 0)) == m.predict(("L0", 0))
    m2.forget("L1")
    assert m2.predict(("L0", 0)) == [] and m2.predict(("L1", 0)) == []


def test_malformed_record_is_refused():
    import pytest
    with pytest.raises(ValueError):
        SuccessorModel.from_dict({"table": {"nokey": {}}})
    with pytest.raises(ValueError):
        SuccessorModel.from_dict({"table": []})


def test_stats_rates():
    s = PrefetchStats(reads=10, tier0_reads=9, issued=5, used=4, wasted=1)
    assert s.hit_rate() == 0.9 and s.accuracy() == 0.8
    assert PrefetchStats().hit_rate() is None
