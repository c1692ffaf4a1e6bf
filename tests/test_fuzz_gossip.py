"""Property-based fuzzing of gossip: the records peers piggyback (protocol/membership.py)
and the advertisements inside them (protocol/advert.py).

A gossip message that decoded as a typed message still carries peer-made records. Whatever
they hold, :meth:`Membership.handle` applies them or raises :class:`DecodeError` (the mesh
logs it and drops the message); afterwards every advertisement it keeps is well-formed,
and the placement that reads those advertisements still plans work (a peer advertising an
infinite capacity must not be able to fail every job on the mesh).
"""

from __future__ import annotations

import math
import random

from hypothesis import given, strategies as st

from compute.device import get_preset
from compute.partition import NodeSlot, PlacementError, plan_rows
from protocol.advert import Advertisement
from protocol.errors import DecodeError
from protocol.membership import Ack, Gossip, Membership, Nack, Ping, PingReq, PushPull

IDS = ["me", "n1", "n2", "n3"]
numbers = (st.integers(-5, 10**12) | st.floats() | st.sampled_from([math.inf, -math.inf,
                                                                     math.nan, 1e308, 0.0]))
junk = st.none() | st.booleans() | st.integers() | st.text(max_size=5) | st.binary(max_size=5)
advert_fields = {
    "name": st.text(max_size=8) | junk, "addresses": st.lists(st.text(max_size=8) | junk, max_size=2) | junk,
    "reachability": st.sampled_from(["public", "cone", "symmetric", "unknown", "bad"]) | junk,
    "memory_total": numbers, "memory_free": numbers, "memory_budget": numbers, "cores": numbers,
    "capacity": numbers, "queue_depth": numbers, "running": numbers, "load": numbers,
    "device": st.sampled_from(["ideal", "rram", "nope"]) | junk,
    "device_summary": st.dictionaries(st.text(max_size=4), junk, max_size=2) | junk,
    "extra": st.dictionaries(st.text(max_size=4), junk, max_size=2) | junk,
    "version": st.integers(-2, 2**63) | junk, "bogus": junk,
}


@st.composite
def adverts(draw, node_id):
    d = {"node_id": draw(st.sampled_from(IDS) | st.just(node_id) | junk)}
    for name, strat in advert_fields.items():
        if draw(st.integers(0, 4)) == 0 or (name in ("name", "addresses") and draw(st.booleans())):
            d[name] = draw(strat)
    if draw(st.booleans()):   # often well-formed, so later checks are reached
        d.setdefault("name", node_id)
        d["addresses"] = [f"{node_id}:1"]
        d.pop("bogus", None)
    return d


@st.composite
def records(draw):
    node_id = draw(st.sampled_from(IDS) | st.text(max_size=4) | junk)
    nid = node_id if isinstance(node_id, str) else "x"
    rec = [draw(st.sampled_from(["a", "s", "d", "l"]) | junk), node_id,
           draw(st.integers(0, 5) | st.integers(-3, 2**64 - 1) | junk),
           draw(st.none() | st.sampled_from(IDS) | junk),
           draw(st.none() | adverts(nid) | junk)]
    return draw(st.sampled_from([rec, rec, rec, rec[:4], junk]))


updates = st.lists(records(), max_size=5) | junk
messages = st.one_of(
    st.builds(Gossip, updates),
    st.builds(PushPull, st.booleans(), st.booleans(), updates),
    st.builds(Ping, st.integers(0, 99), st.sampled_from(IDS), updates),
    st.builds(Ack, st.integers(0, 99), updates),
    st.builds(Nack, st.integers(0, 99)),
    st.builds(PingReq, st.integers(0, 99), st.sampled_from(IDS), st.booleans(), updates))


def fresh() -> Membership:
    m = Membership(Advertisement(node_id="me", name="me", addresses=["me:1"]), now=0.0,
                   rng=random.Random(0))
    m.restore([Advertisement(node_id=i, name=i, addresses=[f"{i}:1"]) for i in IDS[1:]], 0.0)
    return m


@given(st.lists(st.tuples(st.sampled_from(IDS[1:]) | st.text(max_size=3), messages),
                max_size=8))
def test_forged_gossip_is_applied_or_refused_and_placement_still_works(stream):
    m = fresh()
    now = 0.0
    for sender, msg in stream:
        now += 0.3
        try:
            m.handle(sender, msg, now)
        except DecodeError:
            pass
        m.tick(now)
    slots = []
    for member in m.members():
        a = member.advert
        assert isinstance(a.node_id, str) and a.node_id == member.node_id
        assert all(isinstance(x, str) for x in a.addresses)
        for name in ("capacity", "load"):
            value = getattr(a, name)
            assert isinstance(value, float) and math.isfinite(value) and value >= 0, (name, value)
        slots.append(NodeSlot(a.node_id, a.capacity, 10**9, get_preset("ideal")))
    try:
        plan_rows((64, 8), slots)
    except PlacementError:
        pass   # e.g. every capacity 0: a clear refusal, not a crash


@given(st.dictionaries(st.sampled_from(list(advert_fields) + ["node_id"]),
                       numbers | junk | st.lists(junk, max_size=2), max_size=8))
def test_advertisements_from_peers_are_valid_or_a_value_error(d):
    d = {"node_id": "x", "name": "x", "addresses": []} | d   # reach the field checks often
    try:
        a = Advertisement.from_dict(d)
    except ValueError:
        return
    assert math.isfinite(a.capacity) and a.capacity >= 0
    assert math.isfinite(a.load) and a.load >= 0


def test_regression_an_infinite_or_nan_capacity_is_refused():
    """Found by fuzzing: capacity inf made every plan raise ValueError on every node."""
    for bad in (math.inf, math.nan, -1.0):
        for name in ("capacity", "load"):
            try:
                Advertisement.from_dict({"node_id": "x", "name": "x", "addresses": [], name: bad})
            except ValueError:
                continue
            raise AssertionError(f"{name}={bad} accepted")
