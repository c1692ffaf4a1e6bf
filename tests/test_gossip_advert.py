"""Advertisement records: wire form, validation of peer input, and the re-advertise rule."""

import pytest

from protocol import codec
from protocol.advert import Advertisement


def _advert(**kw) -> Advertisement:
    base = dict(node_id="ab12", name="n1", addresses=["10.0.0.1:7946"], memory_total=1000,
                memory_free=500, memory_budget=400, load=2.0)
    base.update(kw)
    return Advertisement(**base)


def test_round_trip_through_msgpack_keeps_every_field():
    adv = _advert(reachability="cone", cores=4, capacity=12.5, queue_depth=3, running=1,
                  device="rram", device_summary={"arrays": 4}, extra={"ice": {"ufrag": "x"}},
                  version=7)
    back = Advertisement.from_dict(codec.decode(b"".join(codec.encode(adv.to_dict()))))
    assert back == adv


def test_from_dict_accepts_int_for_float_fields():
    d = _advert().to_dict()
    d["load"] = 3
    assert Advertisement.from_dict(d).load == 3.0


@pytest.mark.parametrize("field, value", [
    ("memory_free", "lots"), ("cores", True), ("addresses", "10.0.0.1:1"),
    ("addresses", [1, 2]), ("reachability", "full-cone"), ("version", -1),
    ("extra", {1: "x"}), ("load", None),
])
def test_from_dict_rejects_bad_field(field, value):
    d = _advert().to_dict()
    d[field] = value
    with pytest.raises(ValueError, match=field):
        Advertisement.from_dict(d)


def test_from_dict_rejects_missing_and_unknown_fields_and_non_maps():
    d = _advert().to_dict()
    del d["addresses"]
    with pytest.raises(ValueError, match="missing"):
        Advertisement.from_dict(d)
    d = _advert().to_dict()
    d["evil"] = 1
    with pytest.raises(ValueError, match="unknown"):
        Advertisement.from_dict(d)
    with pytest.raises(ValueError):
        Advertisement.from_dict(["not", "a", "map"])  # type: ignore[arg-type]


def test_small_load_and_memory_changes_do_not_differ_enough():
    a = _advert()
    assert not a.differs_enough(a.replace(load=2.1, memory_free=520), 0.1)


def test_large_load_or_memory_changes_differ_enough():
    a = _advert()
    assert a.differs_enough(a.replace(load=3.0), 0.1)
    assert a.differs_enough(a.replace(memory_free=300), 0.1)
    assert a.differs_enough(a.replace(queue_depth=5), 0.1)


def test_near_zero_load_noise_is_not_a_relative_explosion():
    a = _advert(load=0.0)
    assert not a.differs_enough(a.replace(load=0.05), 0.1)


def test_identity_changes_always_differ_enough():
    a = _advert()
    assert a.differs_enough(a.replace(addresses=["10.0.0.2:7946"]), 0.1)
    assert a.differs_enough(a.replace(reachability="symmetric"), 0.1)
    assert a.differs_enough(a.replace(extra={"ice": 1}), 0.1)


def test_replace_validates():
    with pytest.raises(ValueError):
        _advert().replace(cores="many")
    with pytest.raises(ValueError):
        _advert().replace(no_such_field=1)
