"""Property-based fuzzing of the msgpack codec (out-of-band arrays) and of typed messages."""

from __future__ import annotations

import numpy as np

from protocol import codec


def payload(obj):
    return b"".join(bytes(p) for p in codec.encode(obj))


def test_regression_a_zero_d_array_keeps_its_shape():
    """Found by fuzzing: np.ascontiguousarray made a 0-d array 1-d on the way out."""
    got = codec.decode(payload(np.array(2.5, dtype=np.float32)))
    assert got.shape == () and got == np.float32(2.5)
