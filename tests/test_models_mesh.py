"""Models on the mesh (issue 9) with real daemons on loopback.

Deploy an ONNX/safetensors/.npy file, run the whole network inside the mesh, list it,
undeploy it; bad input gives one line and leaves nothing deployed; a holder killed during
a stream of requests loses none of them.
"""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest

from compute.modelfile import read_model
from compute.model import reference_forward
from node.client import Client, DaemonError
from tests.daemons import run_cli, wait_for
from tests.test_models_files import save_safetensors, torch_like_mlp


def rand(shape, seed):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def onnxruntime_run(path, x):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {"X": x})[0]


def assert_float32_equal(got, want):
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 2e-5 * max(1.0, float(np.abs(want).max()))


def live_replicas(node) -> int:
    with Client(node.socket) as c:
        return c.deployments()[0]["replicas_live"]


def free_memory(nodes):
    return [n.status()["memory"]["free"] for n in nodes]


def test_onnx_model_deploys_runs_inside_the_mesh_lists_and_undeploys(cluster, tmp_path):
    cluster.start(3, extra=["--capacity", "10"])
    cluster.wait_converged(alive=2)
    n1, n2, n3 = cluster.nodes
    before = free_memory(cluster.nodes)
    path = torch_like_mlp(tmp_path / "mlp.onnx", sizes=(300, 512, 256, 10))
    out = run_cli("deploy", "mlp", str(path), "--device", "ideal", "--socket", str(n1.socket))
    assert out.returncode == 0, out.stderr
    assert "layer 0:" in out.stdout and "layer 2:" in out.stdout and "n1" in out.stdout

    x = rand((9, 300), 1)
    np.save(tmp_path / "x.npy", x)
    out = run_cli("infer", "mlp", str(tmp_path / "x.npy"), "-o", str(tmp_path / "y.npy"),
                  "--socket", str(n2.socket))
    assert out.returncode == 0, out.stderr
    assert_float32_equal(np.load(tmp_path / "y.npy"), onnxruntime_run(path, x))

    with Client(n3.socket) as c:
        y = c.infer("mlp", x[0])                      # one sample in, one out
        assert_float32_equal(y, onnxruntime_run(path, x[:1])[0])
        deps = c.deployments()
    (dep,) = deps
    assert dep["name"] == "mlp" and dep["kind"] == "onnx" and dep["shape"] == [300, 10]
    assert [l["shape"] for l in dep["layers"]] == [[512, 300], [256, 512], [10, 256]]
    assert dep["replicas_wanted"] == 2
    # live counts members seen alive: under heavy load one may be suspected for a moment
    wait_for(lambda: live_replicas(n3) == 2, 30, "both replicas live")
    assert dep["requests"] == 1                        # served via n3
    # n3 holds some blocks but not all: inputs went out, outputs came back, never the weights
    assert 0 < dep["last_bytes_minimum"] <= dep["last_bytes_moved"] < 4 * 300 * 4 * 20
    assert 0 < dep["bytes_resident"] == 2 * 4 * (512 * 300 + 256 * 512 + 10 * 256)
    took = sum(before) - sum(free_memory(cluster.nodes))
    assert took == dep["bytes_resident"]

    out = run_cli("deployments", "--json", "--socket", str(n2.socket))
    assert out.returncode == 0 and json.loads(out.stdout)[0]["name"] == "mlp"
    out = run_cli("undeploy", "mlp", "--socket", str(n2.socket))
    assert out.returncode == 0 and "freed" in out.stdout, out.stderr
    assert free_memory(cluster.nodes) == before       # undeploy frees exactly what deploy took
    for n in cluster.nodes:
        assert not any(k.startswith("mlp") for k in n.status()["blocks"])
        assert not list((n.data_dir / "blocks").glob("mlp*/*"))
    out = run_cli("undeploy", "mlp", "--socket", str(n1.socket))          # idempotent
    assert out.returncode == 0, out.stderr
    with Client(n1.socket) as c:
        assert c.deployments() == []
        with pytest.raises(DaemonError, match="no matrix named 'mlp'"):
            c.infer("mlp", x)


def test_safetensors_and_npy_deploy_and_bad_input_is_one_line_and_leaves_nothing(cluster, tmp_path,
                                                                                 monkeypatch):
    cluster.start(2)
    cluster.wait_converged(alive=1)
    n1, n2 = cluster.nodes
    tensors, spec = save_safetensors(tmp_path / "s.safetensors", sizes=(40, 30, 6))
    w = rand((200, 40), 3)
    np.save(tmp_path / "w.npy", w)
    with Client(n1.socket) as c:
        c.deploy("s", tmp_path / "s.safetensors", replicas=1)
        c.deploy("w", tmp_path / "w.npy")
        x = rand((5, 40), 4)
        want = reference_forward(read_model(tmp_path / "s.safetensors"), x)
        assert_float32_equal(c.infer("s", x), want)
        xc = rand((40, 3), 5)
        assert_float32_equal(c.infer("w", xc), w @ xc)
        kinds = {d["name"]: d["kind"] for d in c.deployments()}
        assert kinds == {"s": "safetensors", "w": "matrix"}
        # an array too big for one API message goes to the daemon as a private temp file
        import node.client
        monkeypatch.setattr(node.client, "INLINE_DEPLOY_BYTES", 1000)
        info = c.deploy("w2", w)
        assert info["source"].endswith("w.npy") and info["source"] != str(tmp_path / "w.npy")
        assert_float32_equal(c.infer("w2", xc), w @ xc)
        c.undeploy("w2")

        bad = tmp_path / "bad.onnx"
        bad.write_bytes(b"\x08\x07junk" * 10)
        with pytest.raises(DaemonError, match="bad.onnx: not a readable ONNX model"):
            c.deploy("bad", bad)
        with pytest.raises(DaemonError, match="already (deployed|exists)"):
            c.deploy("s", tmp_path / "w.npy")
        with pytest.raises(DaemonError, match=r"X has shape \(5, 41\)"):
            c.infer("s", rand((5, 41), 6))
        with pytest.raises(DaemonError, match="dtype"):
            c.infer("s", np.ones((5, 40), dtype=bool))
        with pytest.raises(DaemonError, match="no matrix named 'nope'"):
            c.infer("nope", x)
        huge = tmp_path / "huge.npy"
        np.lib.format.open_memmap(huge, mode="w+", dtype=np.float32, shape=(40000, 20000))
        with pytest.raises(DaemonError, match=r"needs \d+ bytes resident .* has \d+ bytes free"):
            c.deploy("huge", huge)
        assert sorted(d["name"] for d in c.deployments()) == ["s", "w"]
    out = run_cli("deploy", "x", str(tmp_path / "missing.onnx"), "--socket", str(n2.socket))
    assert out.returncode == 2 and out.stderr.count("\n") == 1


def link_bytes(node) -> int:
    return sum(p["traffic"]["sent_bytes"] + p["traffic"]["recv_bytes"]
               for p in node.peers() if p["traffic"])


def test_activations_go_holder_to_holder_not_through_the_origin(cluster, tmp_path):
    # n1 holds nothing (tiny budget): every request it takes must send X out once and get Y
    # back once; the 4096-wide hidden activations travel only between n2 and n3.
    cluster.add(extra=["--memory-limit", "4KiB"])
    cluster.add()
    cluster.add()
    cluster.wait_converged(alive=2)
    n1, n2, n3 = cluster.nodes
    path = torch_like_mlp(tmp_path / "wide.onnx", sizes=(64, 4096, 4096, 8))
    with Client(n1.socket) as c:
        c.deploy("wide", path, replicas=1)
        assert not n1.status()["blocks"]
        x = rand((32, 64), 7)
        want = onnxruntime_run(path, x)
        c.infer("wide", x)                                 # warm up the links
        before = link_bytes(n1)
        for _ in range(10):
            assert_float32_equal(c.infer("wide", x), want)
        used = link_bytes(n1) - before
        (dep,) = c.deployments()
    hidden = 4096 * 32 * 4
    assert used < 10 * (x.nbytes + want.nbytes) + 200_000 < 10 * hidden, used
    assert dep["last_bytes_moved"] >= dep["last_bytes_minimum"] >= x.nbytes
