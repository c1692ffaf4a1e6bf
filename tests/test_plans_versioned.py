"""Deployment plans merge instead of overwriting, and a deploy name is claimed mesh-wide."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compute.partition import Block, PartitionPlan
from node.memory.statedb import StateDB
from node.work.claims import ClaimRefused, ClaimTable, quorum
from node.work.plans import PlanBook, VersionedPlan, merge, new_deploy_id
from tests.inproc import running_daemon


def plan3(nodes=(["a", "b"], ["b", "c"], ["c", "a"])) -> VersionedPlan:
    blocks = [Block(i, i * 128, (i + 1) * 128, list(n)) for i, n in enumerate(nodes)]
    return VersionedPlan(PartitionPlan((384, 64), None, blocks), "0001-x")


def holders(v: VersionedPlan) -> list[list[str]]:
    return [b.nodes for b in v.plan.blocks]


async def test_two_survivors_repairing_different_blocks_both_keep_their_repair(tmp_path):
    base = plan3()
    # "a" died. b repairs block 0 (a,b -> b,d); c repairs block 2 (c,a -> c,e); each
    # announces its whole plan, as before.
    by_b = base.with_block(0, ["b", "d"], "b")
    by_c = base.with_block(2, ["c", "e"], "c")
    for order in ((by_b, by_c), (by_c, by_b)):
        db = StateDB(tmp_path / f"s{id(order)}.db")
        try:
            book = PlanBook(db)
            await book.put("w", base)
            for announcement in order:
                await book.put("w", announcement)
            assert holders(book.versioned("w")) == [["b", "d"], ["b", "c"], ["c", "e"]]
            again = PlanBook(db)                  # and that is what was persisted
            again.restore()
            assert holders(again.versioned("w")) == [["b", "d"], ["b", "c"], ["c", "e"]]
        finally:
            db.close()


def test_a_stale_announcement_does_not_undo_a_newer_repair():
    base = plan3()
    repaired = base.with_block(1, ["b", "d"], "b")
    assert holders(merge(repaired, base)) == holders(repaired)
    assert holders(merge(base, repaired)) == holders(repaired)
    twice = repaired.with_block(1, ["d", "e"], "d")
    assert holders(merge(repaired, twice))[1] == ["d", "e"]


def test_a_newer_deployment_of_the_name_replaces_the_old_plan_whole():
    old = plan3()
    new = VersionedPlan(PartitionPlan((128, 64), None, [Block(0, 0, 128, ["z"])]),
                        new_deploy_id("node-z"))
    assert new.deploy > old.deploy
    assert merge(old, new) is new and merge(new, old) is new


def test_wire_round_trip_and_pre_versioning_plans_are_accepted():
    v = plan3().with_block(0, ["x", "y"], "x")
    back = VersionedPlan.from_wire(v.to_wire())
    assert back.to_wire() == v.to_wire()
    legacy = VersionedPlan.from_wire(plan3().plan.to_dict())
    assert legacy.stamps == [(0, "")] * 3 and legacy.deploy == ""
    for bad in ({"plan": plan3().plan.to_dict(), "deploy": 3, "stamps": []},
                {"plan": plan3().plan.to_dict(), "deploy": "d", "stamps": [[1, "a"]]},
                {"plan": plan3().plan.to_dict(), "deploy": "d", "stamps": [["1", "a"]] * 3},
                "plan"):
        with pytest.raises(ValueError):
            VersionedPlan.from_wire(bad)


_edits = st.lists(st.tuples(st.integers(0, 2), st.sampled_from("abcdef"),
                            st.sampled_from("bcdef"), st.sampled_from("pqr")), max_size=6)


def _replica(edits) -> VersionedPlan:
    v = plan3()
    for index, n1, n2, writer in edits:
        v = v.with_block(index, sorted({n1, n2}), writer)
    return v


@settings(max_examples=200, deadline=None)
@given(_edits, _edits, _edits)
def test_merge_is_commutative_associative_and_idempotent(e1, e2, e3):
    a, b, c = _replica(e1), _replica(e2), _replica(e3)
    wire = lambda v: v.to_wire()  # noqa: E731
    assert wire(merge(a, b)) == wire(merge(b, a))
    assert wire(merge(merge(a, b), c)) == wire(merge(a, merge(b, c)))
    assert wire(merge(a, a)) == wire(a)


def test_a_member_grants_a_name_to_one_deployment_at_a_time():
    now = [0.0]
    table = ClaimTable(ttl=60, clock=lambda: now[0])
    table.grant("w", "d1", "n1", planned=False)
    table.grant("w", "d1", "n1", planned=False)            # idempotent for the holder
    with pytest.raises(ClaimRefused, match="being deployed"):
        table.grant("w", "d2", "n2", planned=False)
    with pytest.raises(ClaimRefused, match="already deployed"):
        table.grant("v", "d3", "n3", planned=True)
    table.release("w", "d2")                                 # not its claim: no effect
    assert table.holder("w").deploy == "d1"
    now[0] = 61                                              # a dead coordinator's claim lapses
    table.grant("w", "d2", "n2", planned=False)
    table.release("w", "d2")
    assert table.holder("w") is None
    assert [quorum(n) for n in (1, 2, 3, 4, 5)] == [1, 2, 2, 3, 3]


async def _converged(daemons, timeout=20.0):
    deadline = time.monotonic() + timeout
    while True:
        if all(sum(m.state.value == "alive" for m in d.mesh.members()) == len(daemons)
               for d in daemons):
            return
        assert time.monotonic() < deadline, "mesh did not converge"
        await asyncio.sleep(0.1)


@pytest.mark.slow
async def test_two_coordinators_cannot_deploy_one_name_at_once(tmp_path):
    w = np.random.default_rng(1).standard_normal((512, 64)).astype(np.float32)
    async with running_daemon(tmp_path, "n1") as d1:
        boot = [d1.addresses()[0]]
        async with running_daemon(tmp_path, "n2", bootstrap=boot) as d2, \
                running_daemon(tmp_path, "n3", bootstrap=boot) as d3:
            await _converged([d1, d2, d3])
            jobs = await asyncio.gather(d1.jobs.deploy("w", w, None, 1, 0),
                                        d2.jobs.deploy("w", w, None, 1, 0))
            for job in jobs:
                await asyncio.wait_for(job.done.wait(), 60)
            states = sorted(j.state for j in jobs)
            assert states == ["done", "failed"], [(j.state, j.error) for j in jobs]
            loser = next(j for j in jobs if j.state == "failed")
            assert "w" in loser.error
            winner = next(j for j in jobs if j.state == "done")
            # every member converges on the winner's plan, and infer works from anywhere
            for d in (d1, d2, d3):
                got = await d.jobs.infer("w", np.ones((64, 1), np.float32))
                np.testing.assert_allclose(got[:, 0], w.sum(axis=1), rtol=1e-4, atol=1e-3)
            placements = {str(i): n for i, n in winner.detail["placement"].items()}
            for d in (d1, d2, d3):
                v = await d.jobs.plan_for("w")
                assert {str(b.index): b.nodes for b in v.blocks} == placements
            # and the loser left nothing behind on any node
            held = sum(len(d.store.names().get("w", [])) for d in (d1, d2, d3))
            assert held == sum(len(n) for n in placements.values())
