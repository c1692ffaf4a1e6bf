"""Advertisements from peers: capacity and load must be finite (found by fuzzing)."""

from __future__ import annotations

import math

from protocol.advert import Advertisement


def test_regression_an_infinite_or_nan_capacity_is_refused():
    """Found by fuzzing: capacity inf made every plan raise ValueError on every node."""
    for bad in (math.inf, math.nan, -1.0):
        for name in ("capacity", "load"):
            try:
                Advertisement.from_dict({"node_id": "x", "name": "x", "addresses": [], name: bad})
            except ValueError:
                continue
            raise AssertionError(f"{name}={bad} accepted")
