"""Block rates as the mesh sees them (node/work/blockrates.py) and the growth rate a
plan carries per block (node/work/plans.py): what the acting node judges a block by."""

from __future__ import annotations

import math

import msgpack
import pytest

from compute.partition import Block, PartitionPlan
from node.work.blockrates import (ADVERT_LIMIT, FLOOR, advert_entries, advertised, mesh_rate,
                                  on_grid)
from node.work.plans import VersionedPlan, merge


def test_a_node_advertises_its_hottest_blocks_only_rounded_and_none_when_idle():
    rates = {("w", i): float(i) for i in range(20)} | {("cold", 0): FLOOR / 2}
    got = advert_entries(rates)
    assert len(got) == ADVERT_LIMIT
    assert set(got) == {f"rate:w/{i}" for i in range(20 - ADVERT_LIMIT, 20)}
    # a half-octave grid: close rates advertise the same figure, within 19 %
    assert advert_entries({("w", 0): 10.5}) == advert_entries({("w", 0): 12.5}) \
        == {"rate:w/0": 11.0}
    for r in (0.06, 0.7, 3.3, 24.0, 900.0):
        assert abs(on_grid(r) / r - 1) < 0.2, r
    assert advert_entries({("w", 0): 0.0, ("w", 1): FLOOR / 2}) == {}  # idle: nothing


def test_advertised_rates_round_trip_and_bad_entries_are_ignored():
    stats = advert_entries({("a/b", 3): 7.0}) | {"load": 1.0, "rate:x/y": 1.0,
                                                 "rate:/1": 1.0, "rate:z/2": -1.0,
                                                 "rate:z/3": True, "rate:z/4": math.inf}
    assert advertised(stats) == {("a/b", 3): on_grid(7.0)}


def test_the_mesh_rate_adds_every_live_holders_reads():
    others = {"b": {("w", 0): 20.0}, "c": {("w", 0): 5.0}, "d": {("w", 0): 99.0}}
    assert mesh_rate(("w", 0), ["a", "b", "c"], "a", 1.0, others) == 26.0   # d not a holder
    assert mesh_rate(("w", 0), ["a", "e"], "a", 1.0, others) == 1.0         # e lists none


def _plan(*holders):
    return PartitionPlan((128 * len(holders), 8), None,
                         [Block(i, i * 128, (i + 1) * 128, list(h)) for i, h in enumerate(holders)])


def test_the_growth_rate_travels_with_its_block_entry_and_survives_the_wire():
    v = VersionedPlan(_plan(["a"], ["b"]), "d1")
    assert v.grown == [0.0, 0.0] and "grown" not in v.to_wire()
    hot = v.with_block(0, ["a", "c"], "a", grown=12.5)
    retired = hot.with_block(0, ["a"], "c")            # a retire keeps the figure
    assert retired.grown == [12.5, 0.0]
    back = VersionedPlan.from_wire(msgpack.unpackb(msgpack.packb(retired.to_wire())))
    assert back.grown == [12.5, 0.0]
    other = v.with_block(1, ["b", "d"], "b", grown=3.0)   # another node, another block
    assert merge(hot, other).grown == merge(other, hot).grown == [12.5, 3.0]
    assert merge(v, hot).grown == [12.5, 0.0]          # the newer entry's figure wins


@pytest.mark.parametrize("bad", [[1.0], [1.0, -1.0], [1.0, math.inf], [True, 1.0], "1", [1, "x"]])
def test_a_bad_growth_rate_from_a_peer_is_refused(bad):
    wire = VersionedPlan(_plan(["a"], ["b"]), "d1").to_wire() | {"grown": bad}
    with pytest.raises(ValueError, match="growth rates"):
        VersionedPlan.from_wire(wire)
