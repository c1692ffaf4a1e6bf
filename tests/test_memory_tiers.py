"""Tier-0 eviction: aged frequency (not LRU), pinned blocks never go, admission resists scans."""

from node.memory.tiers import BlockUse, admit, choose_victims, decayed, value


def use(name, hits, last=100.0, tier=0, nbytes=10, pinned=False, predicted=False):
    return BlockUse((name, 0), nbytes, tier, pinned, hits, last, predicted)


def test_fits_already_means_nothing_is_evicted():
    assert choose_victims([use("a", 1)], need=5, free=10, now=100) == []


def test_the_frequently_read_block_stays_even_when_another_was_read_more_recently():
    hot = use("hot", hits=50, last=90)        # read often, 10 s ago
    fresh = use("fresh", hits=1, last=100)    # read once, just now (LRU would keep this one)
    out = choose_victims([hot, fresh], need=10, free=0, now=100)
    assert [e.key for e in out] == [("fresh", 0)]
    assert "least valuable" in out[0].reason


def test_old_reads_count_less_than_recent_ones():
    assert decayed(8, last_used=0, now=60, half_life=60) == 4
    stale = use("stale", hits=8, last=0)      # 8 reads, two half-lives ago -> 2
    recent = use("recent", hits=3, last=120)
    out = choose_victims([stale, recent], need=10, free=0, now=120)
    assert [e.key for e in out] == [("stale", 0)]


def test_a_pinned_block_is_never_evicted_even_when_it_is_the_coldest():
    cold_but_read = use("reading", hits=0, pinned=True)
    warm = use("warm", hits=5)
    out = choose_victims([cold_but_read, warm], need=10, free=0, now=100)
    assert [e.key for e in out] == [("warm", 0)]
    assert choose_victims([cold_but_read], need=10, free=0, now=100) is None


def test_disk_only_blocks_free_nothing_and_several_victims_add_up():
    blocks = [use("a", 1, nbytes=4), use("b", 2, nbytes=4), use("c", 3, nbytes=4),
              use("d", 0, tier=1, nbytes=100)]
    out = choose_victims(blocks, need=8, free=1, now=100)
    assert [e.key[0] for e in out] == ["a", "b"]


def test_admission_lets_a_hot_disk_block_displace_a_colder_one_but_not_a_scan():
    resident = [use("warm", hits=5, nbytes=10)]
    hot = use("hot", hits=9, tier=1, nbytes=10)
    cold = use("scan", hits=1, tier=1, nbytes=10)
    assert [e.key for e in admit(hot, resident, free=0, now=100)] == [("warm", 0)]
    assert admit(cold, resident, free=0, now=100) is None
    assert admit(cold, resident, free=10, now=100) == []     # free room: always


def test_a_predicted_block_outranks_an_equally_used_one():
    nxt = use("next", hits=5, tier=1, predicted=True)
    done = use("done", hits=5)
    assert value(nxt, 100) > value(done, 100)
    assert [e.key for e in admit(nxt, [done], free=0, now=100)] == [("done", 0)]


# -- the prefetch chain: ranks, not value, order predicted blocks --------------------------

def ranked(name, hits, last, rank, tier=0, pinned=False):
    return BlockUse((name, 0), 10, tier, pinned, hits, last, True, rank)


def test_in_a_layer_cycle_the_block_needed_soonest_stays_though_it_was_read_longest_ago():
    # reading L4 (rank 0); L5..L7 are ahead. L5 was read a whole pass ago, L7 most recently
    # among them: by aged frequency alone L5 would be the first to go.
    reading = ranked("L4", 40, 96.0, 0, pinned=True)
    l5, l6 = ranked("L5", 40, 95.0, 1), ranked("L6", 40, 95.5, 2)
    just_read = use("L3", 41, last=99.9)             # done: not predicted any more
    l7 = ranked("L7", 40, 96.5, 3, tier=1)
    out = admit(l7, [reading, l5, l6, just_read], free=0, now=100)
    assert [e.key for e in out] == [("L3", 0)]
    # with the layer just read gone too, a load of rank 3 may not displace ranks 1 or 2
    assert admit(l7, [reading, l5, l6], free=0, now=100) is None


def test_a_nearer_prediction_displaces_a_farther_one_and_never_the_reverse():
    far = ranked("far", 40, 95.0, 5)
    near_load = ranked("near", 1, 0.0, 1, tier=1)     # worth little by frequency, needed next
    assert [e.key for e in admit(near_load, [far], free=0, now=100)] == [("far", 0)]
    far_load = ranked("far2", 99, 99.0, 6, tier=1)
    assert admit(far_load, [ranked("n", 0, 0.0, 2)], free=0, now=100) is None
    demand = use("unpredicted", hits=99, last=100, tier=1)    # a read nobody predicted
    assert admit(demand, [ranked("n", 0, 0.0, 2)], free=0, now=100) is None


def test_without_admission_unpredicted_blocks_go_before_predicted_ones_farthest_first():
    blocks = [ranked("r1", 0, 0.0, 1), ranked("r3", 0, 0.0, 3), use("hot", 99, last=100)]
    out = choose_victims(blocks, need=20, free=0, now=100)
    assert [e.key[0] for e in out] == ["hot", "r3"]
    assert "rank 3" in out[1].reason


def test_a_demand_read_in_a_cycle_does_not_displace_the_blocks_it_meets():
    # 8 layers read in turn, 4 fit, each read once a pass. The layer being read has just
    # counted its read, so it is worth a little more than the ones in RAM (their last read
    # aged a little): without a margin it would displace one on every read (LRU in
    # disguise, 0 hits); with it, the resident four stay and half the reads hit.
    ram = [use(f"L{i}", hits=10.0, last=100.0 - 0.1 * (4 - i)) for i in range(4)]
    reading = use("L7", hits=10.6, last=100.0, tier=1)
    assert value(reading, 100.0) > max(value(b, 100.0) for b in ram)   # hotter, by a hair
    assert admit(reading, ram, free=0, now=100.0) is None
    assert admit(use("hot", hits=12.0, last=100.0, tier=1), ram, free=0, now=100.0)
