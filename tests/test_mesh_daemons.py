"""The mesh core with real daemon processes on loopback (issue: mesh core).

Three daemons join through a bootstrap address, compute a matmul together, serve a
deployed matrix, survive the loss of a node mid-job, shrug off garbage on both of their
sockets, and restart with their deployed blocks after SIGTERM.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
import time

import msgpack
import numpy as np
import pytest

from node.client import Client, DaemonError
from tests.daemons import run_cli, wait_for

RTOL = 1e-5


def assert_close(got: np.ndarray, want: np.ndarray) -> None:
    """float32 results within 1e-5 relative to the matrix's scale."""
    scale = np.abs(want).max()
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= RTOL * scale


def rand(shape, seed):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def test_three_daemons_join_compute_a_matmul_and_serve_a_deployed_matrix(cluster, tmp_path):
    cluster.start(3, extra=["--capacity", "10"])
    cluster.wait_converged(alive=2)
    n1, n2, n3 = cluster.nodes
    names = {p["name"] for p in n3.peers()}
    assert names == {"n1", "n2"}

    a, b = rand((1000, 300), 1), rand((300, 40), 2)
    np.save(tmp_path / "A.npy", a)
    np.save(tmp_path / "B.npy", b)
    out = run_cli("submit", "matmul", str(tmp_path / "A.npy"), str(tmp_path / "B.npy"),
                  "-o", str(tmp_path / "C.npy"), "--socket", str(n2.socket))
    assert out.returncode == 0, out.stderr
    assert_close(np.load(tmp_path / "C.npy"), a @ b)
    with Client(n2.socket) as c:
        job = c.jobs()[-1]
    assert job["state"] == "done", job
    shares = job["placement"]
    assert sorted(shares) == sorted(n.id for n in cluster.nodes)   # all three computed
    assert sum(shares.values()) == 1000

    w = rand((1500, 700), 3)
    with Client(n1.socket) as c:
        info = c.deploy("w", w)
    assert info["replicas"] == 2
    assert all(len(holders) == 2 for holders in info["placement"].values())
    for i, node in zip(range(20), [n1, n2, n3] * 7):
        x = rand((700, 1 + i % 5), 100 + i)
        with Client(node.socket) as c:
            assert_close(c.infer("w", x), w @ x)


def test_a_node_killed_mid_job_has_its_share_recomputed_and_is_dropped(cluster):
    cluster.start(3)
    cluster.wait_converged(alive=2)
    n1, n2, n3 = cluster.nodes
    a, b = rand((3000, 3000), 4), rand((3000, 1500), 5)
    w = rand((1024, 512), 6)
    with Client(n1.socket) as c:
        c.deploy("w", w, replicas=2)
        job_id = c.submit_matmul(a, b)
        victim = n3.id
        info = wait_for(lambda: (c.job(job_id).get("placement") or None), 10, "placement")
        assert victim in info
        n3.kill9()
        done = c.wait(job_id, 120)
        assert done["state"] == "done", done
        assert_close(c.result(job_id), a @ b)
        wait_for(lambda: any(p["id"] == victim and p["state"] in ("dead", "suspect")
                             for p in c.peers()), 30, "n1 to notice the dead node")
        wait_for(lambda: any(p["id"] == victim and p["state"] == "dead" for p in c.peers()),
                 60, "n1 to declare the node dead")
        x = rand((512, 3), 7)
        assert_close(c.infer("w", x), w @ x)
    with Client(n2.socket) as c:
        assert_close(c.infer("w", x), w @ x)


def _send_raw(address: str, payload: bytes) -> None:
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(payload)
        s.settimeout(2)
        try:
            while s.recv(65536):
                pass
        except (socket.timeout, ConnectionError):
            pass


def _send_unix(path, payload: bytes) -> None:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(5)
        s.connect(str(path))
        s.sendall(payload)
        try:
            while s.recv(65536):
                pass
        except (socket.timeout, ConnectionError):
            pass


def _garbage() -> list[bytes]:
    wrong_types = msgpack.packb({"t": "hello", "version": "one", "node_id": 5})
    framed = lambda body: struct.pack(">I", len(body)) + body  # noqa: E731
    return [
        os.urandom(4096),
        b"\xff\xff\xff\xff" + b"x" * 100,            # header claiming 4 GiB
        struct.pack(">I", 1000) + b"truncated",       # frame cut short, then EOF
        framed(os.urandom(64)),                       # a frame of noise
        framed(struct.pack(">BI", 3, 1) + struct.pack(">Q", 10) + b"\x00" * 10),  # bad payload
        framed(struct.pack(">BIQ", 3, 1, 20) + struct.pack(">I", len(wrong_types)) + wrong_types),
    ]


def test_garbage_on_peer_port_and_local_socket_leaves_the_daemon_serving(cluster):
    cluster.start(2)
    cluster.wait_converged(alive=1)
    n1 = cluster.nodes[0]
    time.sleep(1.0)
    before = n1.status()["tasks"]
    for blob in _garbage():
        _send_raw(n1.address, blob)
        _send_unix(n1.socket, blob)
    status = wait_for(lambda: (s := n1.status())["tasks"] <= before + 2 and s, 20,
                      "tasks to settle after garbage")
    assert status["id"]
    with Client(n1.socket) as c:
        assert c.peers()[0]["state"] == "alive"
        x = rand((20, 20), 9)
        assert_close(c.matmul(x, x), x @ x)
    assert "protocol error" in n1.log_path.read_text() or "rejected link" in n1.log_path.read_text()


def test_client_mistakes_get_one_line_errors_and_exit_codes(cluster, tmp_path):
    n1 = cluster.start(1).nodes[0]
    np.save(tmp_path / "A.npy", rand((4, 3), 1))
    np.save(tmp_path / "B.npy", rand((5, 2), 2))
    sock = str(n1.socket)
    bad_shapes = run_cli("submit", "matmul", str(tmp_path / "A.npy"), str(tmp_path / "B.npy"),
                         "-o", str(tmp_path / "C.npy"), "--socket", sock)
    assert bad_shapes.returncode == 1
    assert "do not align" in bad_shapes.stderr and "Traceback" not in bad_shapes.stderr
    missing = run_cli("submit", "matmul", str(tmp_path / "nope.npy"), str(tmp_path / "B.npy"),
                      "-o", "x.npy", "--socket", sock)
    assert missing.returncode == 2 and "no such file" in missing.stderr
    unknown = run_cli("infer", "ghost", str(tmp_path / "B.npy"), "-o", "y.npy", "--socket", sock)
    assert unknown.returncode == 1 and "ghost" in unknown.stderr
    usage = run_cli("submit", "--socket", sock)
    assert usage.returncode == 2
    down = run_cli("status", "--socket", str(tmp_path / "none.sock"))
    assert down.returncode == 1 and "no sedma daemon" in down.stderr
    assert oct(os.stat(n1.socket).st_mode & 0o777) == "0o600"


def test_sigterm_exits_zero_and_a_restart_serves_its_deployed_blocks(cluster):
    n1 = cluster.start(1).nodes[0]
    w = rand((600, 256), 11)
    with Client(n1.socket) as c:
        c.deploy("kept", w)
        blocks_before = c.status()["blocks"]
    assert n1.terminate() == 0
    assert (n1.data_dir / "state.db").exists()
    n1.start()
    with Client(n1.socket) as c:
        assert c.status()["blocks"] == blocks_before
        x = rand((256, 2), 12)
        assert_close(c.infer("kept", x), w @ x)
        assert [j["kind"] for j in c.jobs()] == ["deploy"]


def test_kill9_keeps_committed_blocks_and_jobs(cluster):
    n1 = cluster.start(1).nodes[0]
    w = rand((300, 128), 13)
    with Client(n1.socket) as c:
        c.deploy("durable", w)
        jid = c.submit_matmul(w, w.T)
        assert c.wait(jid, 60)["state"] == "done"
    n1.kill9()
    n1.start()
    with Client(n1.socket) as c:
        x = rand((128, 1), 14)
        assert_close(c.infer("durable", x), w @ x)
        assert_close(c.result(jid), w @ w.T)
