"""The mesh core with real daemon processes on loopback (issue: mesh core).

Three daemons join through a bootstrap address, compute a matmul together, serve a
deployed matrix, survive the loss of a node mid-job, shrug off garbage on both of their
sockets, and restart with their deployed blocks after SIGTERM.
"""

from __future__ import annotations

import os
import socket
import struct

import msgpack
import numpy as np
import pytest

from node.client import Client, DaemonError
from tests.daemons import DaemonProc, run_cli, wait_for

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
    wait_for(lambda: n1.peers()[0]["rtt_ms"] is not None, 20, "the first RTT sample (steady state)")
    before = n1.status()["tasks"]
    for blob in _garbage():
        _send_raw(n1.address, blob)
        _send_unix(n1.socket, blob)
    status = wait_for(lambda: (s := n1.status())["tasks"] <= before + 2 and s, 20,
                      "tasks to settle after garbage")
    assert status["id"]
    # still a member: a suspicion passing at this instant on a busy host refutes itself
    wait_for(lambda: n1.peers()[0]["state"] == "alive", 20, "n2 to be alive at n1")
    with Client(n1.socket) as c:
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


def test_a_dead_holders_blocks_are_re_replicated_from_a_survivor(cluster):
    cluster.start(4)
    cluster.wait_converged(alive=3)
    n1, _, _, n4 = cluster.nodes
    w = rand((2048, 256), 21)
    with Client(n1.socket) as c:
        info = c.deploy("kept", w, replicas=2)
    victim = n4.id
    lost = [idx for idx, holders in info["placement"].items() if victim in holders]
    assert lost, "the planner gave the fourth node nothing to hold"
    n4.kill9()

    def restored():
        held = {}
        for node in cluster.nodes[:3]:
            for idx in node.status()["blocks"].get("kept", []):
                held.setdefault(str(idx), set()).add(node.name)
        return all(len(held.get(idx, ())) == 2 for idx in info["placement"]) and held
    wait_for(restored, 60, "every block of 'kept' to be held by two live nodes again")
    with Client(cluster.nodes[1].socket) as c:
        x = rand((256, 4), 22)
        assert_close(c.infer("kept", x), w @ x)


def test_a_seeded_crossbar_job_gives_the_same_result_on_one_node_as_on_three(cluster, tmp_path):
    a, b = rand((700, 300), 31), rand((300, 20), 32)
    alone = cluster.add("solo", bootstrap=False)
    with Client(alone.socket) as c:
        ref = c.matmul(a, b, device="rram", seed=5)
        other_seed = c.matmul(a, b, device="rram", seed=6)
    first = cluster.add("m0", bootstrap=False)
    rest = [cluster.add(f"m{i}", bootstrap=first) for i in (1, 2)]
    cluster.wait_converged(alive=2, nodes=[first, *rest])
    with Client(first.socket) as c:
        spread = c.matmul(a, b, device="rram", seed=5)
        placement = c.jobs()[-1]["placement"]
    assert len(placement) >= 2, placement
    np.testing.assert_allclose(spread, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
    assert not np.allclose(other_seed, ref)          # the seed matters
    assert np.linalg.norm(ref - a @ b) > 1e-3 * np.linalg.norm(a @ b)   # and the device does


def test_devices_lists_the_presets_and_nodes_advertise_their_own(cluster):
    n1 = cluster.add(extra=["--device", "pcm"])
    cluster.add(extra=["--device", "rram"])
    cluster.wait_converged(alive=1)
    out = run_cli("devices", "--json", "--socket", str(n1.socket))
    assert out.returncode == 0, out.stderr
    import json
    names = {d["name"] for d in json.loads(out.stdout)}
    assert {"ideal", "rram", "pcm", "conservative"} <= names
    assert n1.status()["device"] == "pcm"
    assert [p["device"] for p in n1.peers()] == ["rram"]
    bad = run_cli("daemon", "--device", "nonsense", "--data-dir", str(cluster.root / "x"))
    assert bad.returncode == 2 and "unknown device preset" in bad.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_joining_through_any_member_reaches_everyone(cluster):
    n1 = cluster.add("n1", bootstrap=False)
    n2 = cluster.add("n2", bootstrap=n1)
    n3 = cluster.add("n3", bootstrap=n2)      # never talks to n1 first
    cluster.wait_converged(alive=2)
    assert {p["name"] for p in n3.peers()} == {"n1", "n2"}
    assert {p["name"] for p in n1.peers()} == {"n2", "n3"}


def test_a_bootstrap_that_is_down_is_retried_while_local_requests_are_served(cluster):
    port = _free_port()
    late = DaemonProc(cluster.root / "late", "late", [f"127.0.0.1:{port}"]).start()
    cluster.nodes.append(late)
    with Client(late.socket) as c:
        assert c.status()["members"] == 1
        x = rand((30, 30), 41)
        assert_close(c.matmul(x, x), x @ x)   # alone, it still computes
    boot = DaemonProc(cluster.root / "boot", "boot", listen=f"127.0.0.1:{port}").start()
    cluster.nodes.append(boot)
    wait_for(lambda: [p["name"] for p in late.peers() if p["state"] == "alive"] == ["boot"],
             60, "the late node to join once its bootstrap is up")
    assert "retrying" in late.log_path.read_text()


def test_a_flood_of_silent_connections_is_bounded_and_the_daemon_keeps_serving(cluster):
    from node.net.mesh import MAX_PENDING_HANDSHAKES
    n1 = cluster.start(1).nodes[0]
    host, port = n1.address.rsplit(":", 1)
    silent = []
    try:
        for _ in range(MAX_PENDING_HANDSHAKES + 20):
            silent.append(socket.create_connection((host, int(port)), timeout=5))
        wait_for(lambda: "too many pending handshakes" in n1.log_path.read_text()
                 or "handshakes already pending" in n1.log_path.read_text(), 20,
                 "the daemon to refuse links beyond its handshake limit")
        x = rand((16, 16), 51)
        with Client(n1.socket) as c:
            assert_close(c.matmul(x, x), x @ x)
    finally:
        for s in silent:
            s.close()
    # the silent ones time out; afterwards a real peer still joins
    peer = cluster.add("late")
    cluster.wait_converged(alive=1, nodes=[n1, peer])


def test_only_nodes_with_the_cluster_key_join(cluster, tmp_path):
    key, other = tmp_path / "key", tmp_path / "other"
    key.write_bytes(os.urandom(32).hex().encode())
    other.write_bytes(os.urandom(32).hex().encode())
    n1 = cluster.add("n1", extra=["--cluster-key", str(key)])
    n2 = cluster.add("n2", extra=["--cluster-key", str(key)])
    stranger = cluster.add("stranger", extra=["--cluster-key", str(other)])
    cluster.wait_converged(alive=1, nodes=[n1, n2])
    wait_for(lambda: "rejected link" in n1.log_path.read_text(), 20,
             "n1 to reject the stranger's handshake")
    assert stranger.peers() == []
    assert {p["name"] for p in n1.peers()} == {"n2"}


def test_a_corrupt_block_file_is_forgotten_and_the_daemon_still_starts(cluster):
    n1 = cluster.start(1).nodes[0]
    w = rand((256, 64), 61)
    with Client(n1.socket) as c:
        c.deploy("fragile", w)
    assert n1.terminate() == 0
    (block_file,) = (n1.data_dir / "blocks" / "fragile").glob("*.blk")
    block_file.write_bytes(block_file.read_bytes()[:100])      # bit rot / truncation
    n1.start()
    assert "unreadable" in n1.log_path.read_text()
    with Client(n1.socket) as c:
        assert c.status()["blocks"] == {}
        with pytest.raises(DaemonError, match="no live holder"):
            c.infer("fragile", rand((64, 1), 62))


def test_bad_seeds_are_the_users_error_and_blame_no_peer(cluster):
    cluster.start(2)
    cluster.wait_converged(alive=1)
    x = rand((256, 8), 63)
    with Client(cluster.nodes[0].socket) as c:
        for seed in (-1, 1 << 63):
            with pytest.raises(DaemonError, match="seed must be"):
                c.submit_matmul(x, x.T, device="rram", seed=seed)
        assert c.jobs() == []


def test_a_cancelled_call_does_not_hand_its_answer_to_the_next_call(cluster):
    import asyncio

    from node.client import AsyncClient
    n1 = cluster.start(1).nodes[0]

    async def scenario() -> dict:
        async with AsyncClient(n1.socket) as c:
            await c.deploy("big", rand((4096, 2048), 64))
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(c.infer("big", rand((2048, 512), 65)), 0.001)
            return await c.status()
    status = asyncio.run(scenario())
    assert isinstance(status, dict) and status["id"]


def test_a_second_daemon_on_the_same_data_dir_refuses_to_start_cleanly(cluster):
    n1 = cluster.start(1).nodes[0]
    out = run_cli("daemon", "--listen", "127.0.0.1:0", "--data-dir", str(n1.data_dir),
                  timeout=60)
    assert out.returncode == 1
    assert "another daemon is already listening" in out.stderr
    assert "Traceback" not in out.stderr
    assert n1.status()["members"] == 1          # the first one still serves, alone
