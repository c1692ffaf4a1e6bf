"""Models larger than a message and than any node (issue 9); slow (hundreds of MiB).

- A 4-node mesh with ``--memory-limit 64MiB`` each serves a ~192 MiB model (3x one node's
  budget) exactly, deployed from a safetensors file; undeploy frees exactly what deploy took.
- A 16384x16384 float32 matrix (1 GiB, refused by the job limit before) deploys from its
  ``.npy`` block by block; the coordinating daemon's peak RSS stays well under 1 GiB.
"""

from __future__ import annotations

import numpy as np
import pytest

from compute.mlp import Layer
from compute.model import reference_forward
from compute.modelfile import read_model
from compute.modelsave import save_safetensors
from node.client import Client

pytestmark = pytest.mark.slow


def peak_rss(proc) -> int:
    """VmHWM of a process: the most resident memory it ever had, in bytes."""
    with open(f"/proc/{proc.pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def test_four_64mib_nodes_serve_a_192mib_model_exactly(cluster, tmp_path):
    rng = np.random.default_rng(0)
    sizes = (4096, 4096, 4096, 4096, 10)
    layers = [Layer(rng.standard_normal((o, i), dtype=np.float32) / np.sqrt(i),
                    rng.standard_normal(o, dtype=np.float32), "relu" if k < 3 else "identity")
              for k, (i, o) in enumerate(zip(sizes, sizes[1:]))]
    path = save_safetensors(layers, tmp_path / "big.safetensors")
    weight_bytes = sum(l.weight.nbytes for l in layers)
    assert weight_bytes > 3 * (64 << 20) - (1 << 20)
    del layers
    cluster.start(4, extra=["--memory-limit", "64MiB", "--capacity", "10"])
    cluster.wait_converged(alive=3)
    before = [n.status()["memory"]["free"] for n in cluster.nodes]
    with Client(cluster.nodes[0].socket) as c:
        c.deploy("big", path, device="ideal", replicas=1, timeout=600)
        held = [len(n.status()["blocks"]) for n in cluster.nodes]
        assert all(held), held                                # every node holds a part
        x = rng.standard_normal((8, 4096), dtype=np.float32)
        want = reference_forward(read_model(path), x)
        for node in cluster.nodes[1:3]:
            with Client(node.socket) as other:
                got = other.infer("big", x)
                assert np.abs(got - want).max() <= 1e-4 * max(1.0, float(np.abs(want).max()))
        (dep,) = c.deployments()
        assert dep["bytes_resident"] == weight_bytes
        taken = sum(before) - sum(n.status()["memory"]["free"] for n in cluster.nodes)
        assert taken == weight_bytes
        c.undeploy("big")
    assert [n.status()["memory"]["free"] for n in cluster.nodes] == before


def test_a_1gib_matrix_deploys_block_by_block_with_bounded_daemon_memory(cluster, tmp_path):
    n = 16384
    path = tmp_path / "w.npy"
    w = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, n))
    rng = np.random.default_rng(1)
    for r in range(0, n, 2048):
        w[r:r + 2048] = rng.standard_normal((2048, n), dtype=np.float32)
    w.flush()
    del w
    cluster.start(3, extra=["--capacity", "10"])
    cluster.wait_converged(alive=2)
    n1 = cluster.nodes[0]
    with Client(n1.socket) as c:
        info = c.deploy("w1g", path, device="ideal", replicas=1, timeout=900)
        assert info["state"] == "done"
        mine = sum(v for v in [n1.status()["memory"]["resident_blocks"]])
        peak = peak_rss(n1.proc)
        print(f"\ncoordinator holds {mine >> 20} MiB of the 1024 MiB matrix; peak RSS "
              f"{peak >> 20} MiB")
        assert mine < 700 << 20
        assert peak < mine + (400 << 20)                     # not the whole matrix
        x = np.random.default_rng(2).standard_normal((n, 2), dtype=np.float32)
        y = c.infer("w1g", x)
    want = np.load(path, mmap_mode="r") @ x
    assert np.abs(y - want).max() <= 1e-4 * float(np.abs(want).max())
