"""Tiers, learned prefetch and `sedma memory` on real daemons (loopback).

A node whose RAM budget holds three of eight layers serves all eight, layer by layer,
with exact results; after a few passes prefetch has learned the order and most reads find
their block in RAM. The full-size figure (1 GiB under --memory-limit 256MiB) is in
bench/memory.py; this is the same path scaled down to run in seconds.
"""

from __future__ import annotations

import json
import time

import numpy as np

from node.client import Client
from tests.daemons import run_cli, wait_for

LAYERS, N = 8, 512
LAYER_BYTES = N * N * 4
THINK_S = 0.2     # between requests; a 1 MiB load takes milliseconds even on a busy box


def rand(shape, seed):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def test_a_node_serves_more_layers_than_its_ram_and_prefetch_learns_the_order(cluster):
    node = cluster.add("solo", extra=["--capacity", "10", "--memory-limit",
                                      str(3 * LAYER_BYTES + 1000),
                                      "--disk-limit", str(LAYERS * LAYER_BYTES + 1000)])
    ws = [rand((N, N), i) for i in range(LAYERS)]
    with Client(node.socket) as c:
        for i, w in enumerate(ws):
            c.deploy(f"L{i}", w, replicas=1)
        report = c.memory()
        assert report["tiers"]["0"]["used"] <= report["tiers"]["0"]["limit"]
        assert report["tiers"]["1"]["used"] == LAYERS * LAYER_BYTES
        assert sum(t == 1 for b in report["blocks"].values() for t in b.values()) >= 5
        x = rand((N, 4), 99)
        for rnd in range(6):
            for i, w in enumerate(ws):
                y = c.infer(f"L{i}", x)
                np.testing.assert_allclose(y, w @ x, rtol=1e-5, atol=1e-4)
        first = c.memory()
        for rnd in range(4):
            for i in range(LAYERS):
                c.infer(f"L{i}", x)
                time.sleep(THINK_S)   # time for the prefetch to land (speed: bench/memory.py)
        last = c.memory()
    assert last["tiers"]["0"]["used"] <= last["tiers"]["0"]["limit"]
    p0, p1 = first["prefetch"], last["prefetch"]
    reads = p1["reads"] - p0["reads"]
    hits = p1["tier0_reads"] - p0["tier0_reads"]
    late = p1["late"] - p0["late"]        # its prefetch already under way: predicted, slow
    assert reads == 4 * LAYERS
    # Without prefetch, frequency-based admission keeps a fixed 3 of 8 in RAM (37 %);
    # with the learned order loaded ahead, the next layer is in RAM (or on its way there,
    # on a machine too busy for the load to land in THINK_S) when asked for.
    assert (hits + late) / reads >= 0.8, last["prefetch"]
    assert p1["issued"] > 0 and p1["bytes_prefetched"] > 0

    out = run_cli("memory", "--socket", str(node.socket))
    assert out.returncode == 0, out.stderr
    assert "tier 0" in out.stdout and "prefetch  on" in out.stdout and "L7" in out.stdout
    js = json.loads(run_cli("memory", "--json", "--socket", str(node.socket)).stdout)
    assert set(js) >= {"tiers", "blocks", "prefetch", "peers", "request_rates", "decisions"}
    st = run_cli("status", "--mesh", "--socket", str(node.socket))
    assert st.returncode == 0 and "mesh      1 node(s)" in st.stdout, st.stdout + st.stderr


def test_blocks_come_back_in_their_tiers_after_kill9(cluster):
    node = cluster.add("solo", extra=["--capacity", "10", "--memory-limit",
                                      str(2 * LAYER_BYTES + 1000),
                                      "--disk-limit", str(6 * LAYER_BYTES)])
    ws = [rand((N, N), i) for i in range(4)]
    with Client(node.socket) as c:
        for i, w in enumerate(ws):
            c.deploy(f"L{i}", w, replicas=1)
    node.kill9()
    node.start()
    x = rand((N, 2), 7)
    with Client(node.socket) as c:
        for i, w in enumerate(ws):
            np.testing.assert_allclose(c.infer(f"L{i}", x), w @ x, rtol=1e-5, atol=1e-4)
        r = c.memory()
    assert r["tiers"]["0"]["used"] <= r["tiers"]["0"]["limit"]
    assert r["tiers"]["1"]["used"] == 4 * LAYER_BYTES
