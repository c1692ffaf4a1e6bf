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


# -- depth and loads: plan_prefetch and follow_chain (pure) --------------------------------

from node.memory.prefetch import ChainBlock, follow_chain, plan_prefetch  # noqa: E402


def chain(*tiers, nbytes=10, loading=()):
    return [ChainBlock((f"L{i}", 0), nbytes, t, i in loading) for i, t in enumerate(tiers)]


def test_depth_is_what_fits_in_the_budget_next_to_the_block_being_read():
    plan = plan_prefetch(chain(1, 1, 1, 1, 1, 1), budget=40, other_pinned=0, max_in_flight=8)
    assert plan.ranks == {("L0", 0): 0, ("L1", 0): 1, ("L2", 0): 2, ("L3", 0): 3}
    assert plan.depth == 3
    assert plan.start == [("L1", 0), ("L2", 0), ("L3", 0)]  # nearest first; L0: its read loads it
    small = plan_prefetch(chain(1, 1, 1, 1, 1, 1), budget=25, other_pinned=0, max_in_flight=8)
    assert small.depth == 1 and small.start == [("L1", 0)]


def test_blocks_already_in_ram_or_in_flight_count_against_the_budget_and_are_not_restarted():
    plan = plan_prefetch(chain(0, 0, 1, 1, 1, loading={2}), budget=40, other_pinned=0,
                         max_in_flight=8)
    assert plan.depth == 3 and plan.start == [("L3", 0)]


def test_loads_in_flight_never_exceed_the_loader_threads():
    plan = plan_prefetch(chain(1, 1, 1, 1, 1, 1, loading={1}), budget=1000, other_pinned=0,
                         max_in_flight=3)
    assert plan.depth == 5
    assert plan.start == [("L2", 0), ("L3", 0)]               # 1 in flight + 2 = 3


def test_bytes_pinned_by_other_readers_shrink_the_depth():
    free = plan_prefetch(chain(1, 1, 1, 1), budget=40, other_pinned=0, max_in_flight=8)
    busy = plan_prefetch(chain(1, 1, 1, 1), budget=40, other_pinned=20, max_in_flight=8)
    assert (free.depth, busy.depth) == (3, 1)
    assert plan_prefetch(chain(1, 1), budget=5, other_pinned=0, max_in_flight=8).ranks == {}


def test_the_chain_follows_the_model_steps_over_blocks_held_elsewhere_and_stops_at_a_cycle():
    nxt = {("a", 0): ("b", 0), ("b", 0): ("c", 0), ("c", 0): ("d", 0), ("d", 0): ("a", 0)}
    here = {("a", 0), ("c", 0), ("d", 0)}
    assert follow_chain(("a", 0), nxt.get, here.__contains__) == [("a", 0), ("c", 0), ("d", 0)]
    assert follow_chain(("a", 0), nxt.get, here.__contains__, max_len=2) == [("a", 0), ("c", 0)]
    assert follow_chain(("z", 0), nxt.get, here.__contains__) == [("z", 0)]


def test_a_learned_cycle_gives_a_chain_as_deep_as_the_budget():
    m = SuccessorModel()
    layers(m, 16, passes=3)
    succ = lambda k: (lambda p: p[0].key if p else None)(m.predict(k, limit=1))  # noqa: E731
    keys = follow_chain(("L14", 0), succ, lambda k: True)
    assert keys[:4] == [("L14", 0), ("L15", 0), ("L0", 0), ("L1", 0)] and len(keys) == 16
    blocks = [ChainBlock(k, 64, 1, False) for k in keys]
    assert plan_prefetch(blocks, budget=256, other_pinned=0, max_in_flight=3).depth == 3
