"""Partition planner: capacity balance, memory budgets, alignment, replicas, plain data."""

import msgpack
import pytest

from compute.crossbar import row_granularity
from compute.device import PRESETS
from compute.partition import Block, NodeSlot, PartitionPlan, PlacementError, plan_rows

RRAM, PCM, IDEAL = PRESETS["rram"], PRESETS["pcm"], PRESETS["ideal"]
BIG = 1 << 40


def _nodes(caps: list[float], free: list[int] | None = None, device=RRAM) -> list[NodeSlot]:
    free = free or [BIG] * len(caps)
    return [NodeSlot(f"n{i}", c, f, device) for i, (c, f) in enumerate(zip(caps, free))]


def _check_plan(plan: PartitionPlan, nodes: list[NodeSlot], device=None) -> None:
    """Invariants every plan must satisfy."""
    m, k = plan.shape
    by_id = {n.node_id: n for n in nodes}
    pos = 0
    used = {n.node_id: 0 for n in nodes}
    for i, b in enumerate(plan.blocks):
        assert b.index == i and b.row_start == pos and b.row_stop > b.row_start
        assert len(set(b.nodes)) == len(b.nodes)
        for nid in b.nodes:
            prof = device or by_id[nid].device
            assert b.row_start % row_granularity(prof) == 0
            used[nid] += prof.resident_bytes((b.rows, k))
        pos = b.row_stop
    assert pos == m
    for nid, u in used.items():
        assert u <= by_id[nid].free_bytes, (nid, u)


def test_rows_split_in_proportion_to_capacity() -> None:
    nodes = _nodes([1.0, 2.0, 5.0])
    plan = plan_rows((8192, 512), nodes)
    _check_plan(plan, nodes)
    rows = plan.rows_by_node()
    g = row_granularity(RRAM)
    for n in nodes:
        ideal = 8192 * n.capacity / 8.0
        assert abs(rows[n.node_id] - ideal) <= g
    assert len(plan.blocks) == 3  # one block per node by default


def test_memory_budget_is_never_exceeded_and_caps_a_fast_node() -> None:
    k = 1024
    per_block = RRAM.resident_bytes((128, k))
    nodes = _nodes([10.0, 1.0, 1.0], free=[3 * per_block, BIG, BIG])
    plan = plan_rows((4096, k), nodes)
    _check_plan(plan, nodes)
    assert plan.rows_by_node()["n0"] == 3 * 128  # capped by memory, not capacity


def test_replicas_on_distinct_nodes_and_counted_in_memory() -> None:
    k = 512
    per_block = RRAM.resident_bytes((128, k))
    nodes = _nodes([1.0, 1.0, 1.0, 1.0], free=[17 * per_block] * 4)
    plan = plan_rows((16 * 128 * 2, k), nodes, replicas=2)  # 32 tile rows x 2 = 64 held, room for 68
    _check_plan(plan, nodes)
    assert all(len(b.nodes) == 2 for b in plan.blocks)
    held = plan.held_rows_by_node()
    assert sum(held.values()) == 2 * plan.shape[0]


def test_replicas_capped_by_node_count() -> None:
    nodes = _nodes([1.0, 1.0])
    plan = plan_rows((1024, 64), nodes, replicas=5)
    assert all(sorted(b.nodes) == ["n0", "n1"] for b in plan.blocks)


def test_cannot_fit_raises_placement_error_with_numbers() -> None:
    nodes = _nodes([1.0, 1.0], free=[1000, 1000])
    with pytest.raises(PlacementError, match="cannot fit a 1024x1024 matrix"):
        plan_rows((1024, 1024), nodes)
    tight = RRAM.resident_bytes((512, 256))
    with pytest.raises(PlacementError):
        plan_rows((1024, 256), _nodes([1.0, 1.0], free=[tight, tight]), replicas=2)
    assert plan_rows((1024, 256), _nodes([1.0, 1.0], free=[tight, tight]))  # fits without replicas


def test_per_node_devices_align_blocks_to_every_granularity() -> None:
    narrow = RRAM.with_changes(name="narrow", rows=64, cols=64)  # 32-row tiles
    nodes = [NodeSlot("a", 1.0, BIG, RRAM), NodeSlot("b", 1.0, BIG, narrow), NodeSlot("c", 3.0, BIG, PCM)]
    plan = plan_rows((3000, 100), nodes)
    _check_plan(plan, nodes)
    assert plan.device is None


def test_given_device_overrides_node_devices_and_costs() -> None:
    nodes = _nodes([1.0, 1.0], free=[IDEAL.resident_bytes((512, 256))] * 2, device=RRAM)
    plan = plan_rows((1024, 256), nodes, device=IDEAL)
    _check_plan(plan, nodes, device=IDEAL)
    assert plan.device == "ideal"
    with pytest.raises(PlacementError):  # ideal costs 4 bytes/weight: no room for 1100 rows
        plan_rows((1100, 256), nodes, device=IDEAL)


def test_max_blocks_per_node_cuts_shares() -> None:
    nodes = _nodes([1.0, 1.0])
    plan = plan_rows((4096, 64), nodes, max_blocks_per_node=4)
    _check_plan(plan, nodes)
    assert len(plan.blocks) == 8
    assert plan.rows_by_node() == {"n0": 2048, "n1": 2048}


def test_plan_round_trips_through_msgpack_and_validates() -> None:
    nodes = _nodes([1.0, 3.0, 2.0])
    plan = plan_rows((2000, 300), nodes, replicas=2)
    d = msgpack.unpackb(msgpack.packb(plan.to_dict()), raw=False)
    back = PartitionPlan.from_dict(d)
    assert back == plan
    broken = dict(d, blocks=d["blocks"][:-1])
    with pytest.raises(ValueError, match="cover rows"):
        PartitionPlan.from_dict(broken)
    dup = dict(d, blocks=[dict(d["blocks"][0], nodes=["n0", "n0"])] + d["blocks"][1:])
    with pytest.raises(ValueError, match="twice"):
        PartitionPlan.from_dict(dup)
    with pytest.raises(ValueError, match="format"):
        PartitionPlan.from_dict({"shape": [1, 1]})


def test_bad_inputs() -> None:
    with pytest.raises(PlacementError, match="no nodes"):
        plan_rows((10, 10), [])
    with pytest.raises(PlacementError, match="zero capacity"):
        plan_rows((10, 10), _nodes([0.0, 0.0]))
    with pytest.raises(ValueError, match="duplicate"):
        plan_rows((10, 10), [NodeSlot("a", 1, BIG, RRAM), NodeSlot("a", 1, BIG, RRAM)])


def test_block_rows_property() -> None:
    assert Block(0, 128, 300, ["x"]).rows == 172


def test_random_configurations_keep_invariants_or_raise_placement_error() -> None:
    import numpy as np

    rng = np.random.default_rng(0)
    devices = [RRAM, PCM, IDEAL, RRAM.with_changes(name="narrow", rows=64, cols=64)]
    placed = failed = 0
    for _ in range(200):
        n = int(rng.integers(1, 6))
        m, k = int(rng.integers(1, 5000)), int(rng.integers(1, 700))
        nodes = [NodeSlot(f"n{i}", float(rng.choice([0.5, 1.0, 2.0, 7.0])),
                          int(rng.integers(0, 6 * m * k)), devices[int(rng.integers(0, 4))]) for i in range(n)]
        common = devices[int(rng.integers(0, 4))] if rng.random() < 0.5 else None
        replicas = int(rng.integers(1, 4))
        try:
            plan = plan_rows((m, k), nodes, device=common, replicas=replicas,
                             max_blocks_per_node=int(rng.integers(1, 4)))
        except PlacementError:
            failed += 1
            if replicas == 1:  # single copies: it must fit whenever total memory allows
                profs = [common or nd.device for nd in nodes]
                unit = 1
                for p in profs:
                    unit = np.lcm(unit, row_granularity(p))
                n_units = -(-m // int(unit))
                caps = [nd.free_bytes // p.resident_bytes((int(unit), k)) for nd, p in zip(nodes, profs)]
                assert sum(min(c, n_units) for c in caps) < n_units
            continue
        placed += 1
        _check_plan(plan, nodes, device=common)
        assert all(len(b.nodes) == min(replicas, n) for b in plan.blocks)
    assert placed > 50 and failed > 10  # both outcomes exercised
