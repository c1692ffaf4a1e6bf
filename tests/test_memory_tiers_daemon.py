"""The full-size tiers deployment on a real daemon: 1 GiB of programmed state (16 layers
of 4096x4096 float32) under ``--memory-limit 256MiB``, served layer by layer with prefetch
on, every result exact, tier 0 within its limit, loads in flight ahead of the reads.

Slow (a GiB deployed and read several times); its speed is bench/memory.py's business,
this checks correctness and the budget at the size the issue names.
"""

from __future__ import annotations

import numpy as np
import pytest

from node.client import Client

pytestmark = pytest.mark.slow

LAYERS, N, BATCH = 16, 4096, 8
LAYER_BYTES = N * N * 4
RAM = 256 << 20


def test_one_gib_on_256_mib_stays_exact_with_prefetch_on(cluster):
    node = cluster.add("solo", extra=["--capacity", "10", "--memory-limit", "256MiB",
                                      "--disk-limit", "2GiB"])
    x = np.random.default_rng(99).standard_normal((N, BATCH)).astype(np.float32)
    wants = []
    with Client(node.socket) as c:
        for i in range(LAYERS):
            w = np.random.default_rng(i).standard_normal((N, N)).astype(np.float32)
            c.deploy(f"L{i}", w, replicas=1)
            wants.append(w @ x)
            del w
        rep = c.memory()
        assert rep["tiers"]["1"]["used"] == LAYERS * LAYER_BYTES
        assert rep["tiers"]["0"]["limit"] == RAM
        for _ in range(3):
            for i in range(LAYERS):
                np.testing.assert_allclose(c.infer(f"L{i}", x), wants[i], rtol=1e-4,
                                           atol=1e-3)
                assert c.memory()["tiers"]["0"]["used"] <= RAM
        p = c.memory()["prefetch"]
    assert p["enabled"] and p["depth"] == 3, p            # 4 layers fit: the read + 3
    assert p["max_in_flight"] >= 2, p                     # several loads at once
    assert p["bytes_transient"] == 0, p                   # no read around the budget
    assert p["issued"] >= LAYERS and p["accuracy"] >= 0.9, p
