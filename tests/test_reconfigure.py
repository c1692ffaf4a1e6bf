"""Who repairs which block after a holder dies: exactly one survivor, best spare first."""

from compute.partition import Block, PartitionPlan
from node.work.reconfigure import Repair, repairs


def plan(*holders):
    return PartitionPlan((len(holders) * 10, 4), None,
                         [Block(i, i * 10, i * 10 + 10, list(h)) for i, h in enumerate(holders)])


def test_only_the_lowest_surviving_holder_repairs_and_picks_the_best_spare():
    p = plan(["a", "d"], ["b", "c"], ["c", "d"])
    alive = {"a", "b", "c"}
    ranked = ["c", "b", "a"]
    assert repairs("w", p, "a", alive, ranked, 2) == [Repair("w", 0, "a", "c")]
    assert repairs("w", p, "c", alive, ranked, 2) == [Repair("w", 2, "c", "b")]
    assert repairs("w", p, "b", alive, ranked, 2) == []


def test_nothing_to_do_when_replicas_are_complete_or_no_spare_exists():
    p = plan(["a", "b"])
    assert repairs("w", p, "a", {"a", "b"}, ["a", "b"], 2) == []
    assert repairs("w", p, "a", {"a"}, ["a"], 2) == []


def test_a_spare_without_room_for_the_block_is_passed_over_for_the_next():
    p = plan(["a", "d"])
    ranked = ["b", "c", "a"]           # b ranks first but has no room (a tiny budget)
    room = {"a": 0, "b": 64 << 10, "c": 1 << 30}
    needs = lambda blk: 640 << 10      # noqa: E731
    assert repairs("w", p, "a", {"a", "b", "c"}, ranked, 2, room, needs) == \
        [Repair("w", 0, "a", "c")]
    assert repairs("w", p, "a", {"a", "b"}, ["b", "a"], 2, room, needs) == []   # none fits


def test_a_block_with_no_live_holder_cannot_be_repaired_by_anyone():
    p = plan(["x", "y"])
    for me in "abc":
        assert repairs("w", p, me, {"a", "b", "c"}, ["a", "b", "c"], 2) == []
