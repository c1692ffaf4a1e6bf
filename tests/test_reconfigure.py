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


# -- copies held here that the plan does not list (a copy's source died mid-switch) -----

from node.work.reconfigure import UNLISTED_GRACE_S, Unlisted, unlisted  # noqa: E402


def test_an_unlisted_copy_whose_listed_holders_are_all_gone_is_adopted_at_once():
    p = plan(["s"], ["me"])                # block 0: held only by s (killed mid-copy)
    seen: dict[int, float] = {}
    assert unlisted(p, "me", {"me"}, {"s"}, {0, 1}, seen, now=0.0) == Unlisted((0,), ())


def test_a_holder_merely_unknown_yet_is_not_taken_for_gone():
    p = plan(["s"])                        # a node that just started knows no members
    assert unlisted(p, "me", {"me"}, set(), {0}, {}, now=0.0) == Unlisted((), ())


def test_an_unlisted_copy_is_dropped_only_after_the_grace_and_while_a_holder_serves():
    p = plan(["a"], ["b"])
    seen: dict[int, float] = {}
    assert unlisted(p, "me", {"me", "a"}, set(), {0}, seen, now=0.0) == Unlisted((), ())
    assert unlisted(p, "me", {"me", "a"}, set(), {0}, seen,
                    now=UNLISTED_GRACE_S - 1) == Unlisted((), ())
    assert unlisted(p, "me", {"me", "a"}, set(), {0}, seen,
                    now=UNLISTED_GRACE_S) == Unlisted((), (0,))
    # no listed holder alive (nor known gone): wait rather than drop the only copy
    assert unlisted(p, "me", {"me"}, set(), {0}, {0: -1e9}, now=0.0) == Unlisted((), ())


def test_a_block_the_plan_lists_here_is_never_adopted_nor_dropped_and_its_clock_resets():
    seen = {0: -1e9}
    listed = plan(["a", "me"])
    assert unlisted(listed, "me", {"me"}, {"a"}, {0}, seen, now=0.0) == Unlisted((), ())
    assert seen == {}                     # listed now: a later unlisting starts a new grace
    later = plan(["a"])
    assert unlisted(later, "me", {"me", "a"}, set(), {0}, seen, now=1.0) == Unlisted((), ())
    assert seen == {0: 1.0}


# -- the acting holder's snapshot of a block it never read -------------------------------

def _acting_a(hot, advertised_by_b: dict | None = None):
    """Node "a" acting for block 0 of "w" (held by b and a), never having read it; b's
    advert ``stats`` are ``advertised_by_b``."""
    from types import SimpleNamespace

    from node.memory.dualmemory import DualMemory

    store = SimpleNamespace(names=lambda: {"w": [0]},
                            get=lambda name, index: SimpleNamespace(nbytes=1 << 20))
    member = SimpleNamespace(node_id="b", advert=SimpleNamespace(stats=advertised_by_b or {}))
    return SimpleNamespace(node_id="a", memory=DualMemory(), capacity=10.0,
                           holder=SimpleNamespace(store=store),
                           mesh=SimpleNamespace(members=lambda: [member]),
                           plans=SimpleNamespace(items=lambda: [("w", hot.plan)],
                                                 versioned=lambda name: hot,
                                                 names=lambda: ["w"]))


def test_a_hot_replica_the_acting_node_never_read_is_still_judged_and_retired():
    """CI: a replica landed on a node with a lower id than its source just before every
    node restarted, so it had served nothing; after the restart the (light) reads went to
    the source, and only the new holder acts for the block. It skipped blocks it never
    read, so the extra replica was never retired. Now such a block is judged on the rate
    the holders advertise (none here: 0) and no measured work, and only retiring applies."""
    from node.work.plans import VersionedPlan
    from node.work.rebalance import NodeView, Policy, plan_pass
    from node.work.reconfigure import Reconfigurer

    deployed = VersionedPlan(plan(["b"]), "d1")                    # one replica as deployed
    hot = deployed.with_block(0, ["b", "a"], "b")                  # b gave a a hot replica
    (view,) = Reconfigurer(_acting_a(hot))._block_views({"a", "b"}, now=1000.0)
    assert (view.holders, view.want, view.rate, view.flops) == (("b", "a"), 1, 0.0, 0.0)
    nodes = {n: NodeView(n, 10.0, free_bytes=1 << 30) for n in "abc"}
    assert plan_pass([view], nodes, now=1000.0) == []              # its dwell first
    (d,) = plan_pass([view], nodes, now=1000.0 + Policy().min_dwell_s)
    assert d.kind == "retire" and d.source in "ab"


def test_a_replica_another_holder_serves_is_kept_until_the_mesh_rate_falls():
    """The churn of the skew bench: the acting node judged a block by its own reads (0
    here) and retired a replica while the other holder served 20 req/s of it, and the
    next pass replicated it again. The rate is now what the holders advertise, and the
    rate the replica was added at comes with the plan (b decided it, a acts)."""
    from node.work.plans import VersionedPlan
    from node.work.rebalance import NodeView, Policy, plan_pass
    from node.work.reconfigure import Reconfigurer

    hot = VersionedPlan(plan(["b"]), "d1").with_block(0, ["b", "a"], "b", grown=24.0)
    later = 1000.0 + Policy().min_dwell_s
    nodes = {n: NodeView(n, 10.0, free_bytes=1 << 30) for n in "abc"}
    busy = Reconfigurer(_acting_a(hot, {"rate:w/0": 20.0, "load": 1.0}))
    (view,) = busy._block_views({"a", "b"}, now=1000.0)
    assert (view.rate, view.grown_at_rate) == (20.0, 24.0)
    assert plan_pass([view], nodes, now=later) == []               # still served: kept
    cooled = Reconfigurer(_acting_a(hot, {"rate:w/0": 2.0}))
    (view,) = cooled._block_views({"a", "b"}, now=1000.0)
    (d,) = plan_pass([view], nodes, now=later)
    assert d.kind == "retire" and "from the 24.00 req/s its last replica was added at" \
        in d.reason, d.reason
