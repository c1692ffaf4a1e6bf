"""Channel security with real daemons: what a stranger, an eavesdropper, a replayer and a
man in the middle can do against a keyed mesh (nothing), and key rotation without downtime."""

from __future__ import annotations

import socket
import struct
import threading
import time

import numpy as np
import pytest

from node.client import Client
from node.net.identity import new_cluster_key
from tests.daemons import DaemonProc, run_cli, wait_for

pytestmark = pytest.mark.slow


class Proxy:
    """A TCP forwarder on loopback that records both directions frame by frame and can
    flip one bit in the ``tamper_at``-th frame the dialler sends (0 = first)."""

    def __init__(self, target: str, tamper_at: int | None = None) -> None:
        host, port = target.rsplit(":", 1)
        self.target = (host, int(port))
        self.tamper_at = tamper_at
        self.up: list[bytes] = []     # dialler -> member, whole frames with their headers
        self.down = bytearray()       # member -> dialler, raw
        self.server = socket.create_server(("127.0.0.1", 0))
        self.address = "127.0.0.1:%d" % self.server.getsockname()[1]
        self._socks: list[socket.socket] = [self.server]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        try:
            client, _ = self.server.accept()
        except OSError:
            return
        upstream = socket.create_connection(self.target)
        self._socks += [client, upstream]
        threading.Thread(target=self._pump_up, args=(client, upstream), daemon=True).start()
        threading.Thread(target=self._pump_down, args=(upstream, client), daemon=True).start()

    def _pump_up(self, src: socket.socket, dst: socket.socket) -> None:
        buf = b""
        try:
            while data := src.recv(1 << 16):
                buf += data
                while len(buf) >= 4 and len(buf) >= 4 + struct.unpack(">I", buf[:4])[0]:
                    size = 4 + struct.unpack(">I", buf[:4])[0]
                    frame, buf = buf[:size], buf[size:]
                    if len(self.up) == self.tamper_at:
                        frame = frame[:-1] + bytes([frame[-1] ^ 1])
                    self.up.append(frame)
                    dst.sendall(frame)
        except OSError:
            pass
        finally:
            dst.close()

    def _pump_down(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(1 << 16):
                self.down += data
                dst.sendall(data)
        except OSError:
            pass
        finally:
            dst.close()

    def close(self) -> None:
        for s in self._socks:
            try:
                s.close()
            except OSError:
                pass


def key_file(path, *keys: bytes):
    path.write_bytes(b"".join(keys))
    return str(path)


def add_via(cluster, name: str, address: str, extra: list[str]) -> DaemonProc:
    """A daemon joining through ``address`` (e.g. a proxy in front of a member)."""
    node = DaemonProc(cluster.root / name, name, [address], extra).start()
    cluster.nodes.append(node)
    return node


def raw_exchange(address: str, payload: bytes, wait: float = 3.0) -> bytes:
    """Send ``payload`` on a fresh connection; return everything received until it closes."""
    host, port = address.rsplit(":", 1)
    got = b""
    with socket.create_connection((host, int(port)), timeout=wait) as s:
        s.sendall(payload)
        try:
            while data := s.recv(1 << 16):
                got += data
        except (socket.timeout, ConnectionResetError):
            pass
    return got


def test_an_eavesdropper_sees_only_ciphertext_and_a_replay_is_rejected(cluster, tmp_path):
    key = key_file(tmp_path / "key", new_cluster_key())
    n1 = cluster.add("alpha-node", extra=["--cluster-key", key])
    proxy = Proxy(n1.address)
    try:
        n2 = add_via(cluster, "bravo-node", proxy.address, ["--cluster-key", key])
        cluster.wait_converged(alive=1, nodes=[n1, n2])
        wait_for(lambda: len(proxy.up) >= 4, 20, "traffic through the proxy")
        seen = b"".join(proxy.up) + bytes(proxy.down)
        for plain in (b"alpha-node", b"bravo-node", b"memory_free", b"swim.", b"hello"):
            assert plain not in seen, f"{plain!r} crossed the wire in clear"
        # replay the dialler's whole recorded stream on a new connection to n1
        recorded = b"".join(proxy.up)
    finally:
        proxy.close()
    raw_exchange(n1.address, recorded)
    wait_for(lambda: "failed authentication" in n1.log_path.read_text(), 20,
             "n1 to reject the replayed session")
    assert {p["name"] for p in n1.peers()} == {"bravo-node"}


def test_strangers_get_no_answer_and_cannot_join_gossip_or_submit(cluster, tmp_path):
    key = key_file(tmp_path / "key", new_cluster_key())
    other = key_file(tmp_path / "other", new_cluster_key())
    n1 = cluster.add("n1", extra=["--cluster-key", key])
    n2 = cluster.add("n2", extra=["--cluster-key", key])
    cluster.wait_converged(alive=1, nodes=[n1, n2])
    no_key = cluster.add("nokey", bootstrap=n1)
    wrong = cluster.add("wrongkey", extra=["--cluster-key", other], bootstrap=n1)
    # a raw socket speaking the old plaintext protocol, and one sending garbage
    assert raw_exchange(n1.address, struct.pack(">I", 20) + b"\x03" + b"\0" * 19) == b""
    assert raw_exchange(n1.address, b"SEDMA\x02\x01" + b"\0" * 64) == b""
    wait_for(lambda: n1.log_path.read_text().count("rejected link") >= 4, 30,
             "n1 to reject all four strangers")
    assert {p["name"] for p in n1.peers()} == {"n2"}
    assert no_key.peers() == [] and wrong.peers() == []
    assert "open mesh (no --cluster-key)" in no_key.log_path.read_text()   # said at start
    x = np.ones((256, 8), np.float32)
    with Client(wrong.socket) as c:          # its work stays on its own node
        c.matmul(x, x.T)
    with Client(n1.socket) as c:
        assert c.jobs() == []
    assert n1.status()["members"] == 2       # and the mesh kept serving


def test_a_tampered_record_closes_that_link_and_the_member_keeps_serving(cluster, tmp_path):
    key = key_file(tmp_path / "key", new_cluster_key())
    n1 = cluster.add("n1", extra=["--cluster-key", key])
    n2 = cluster.add("n2", extra=["--cluster-key", key])
    cluster.wait_converged(alive=1, nodes=[n1, n2])
    proxy = Proxy(n1.address, tamper_at=3)   # msg1, msg3, then records: alter the second
    try:
        add_via(cluster, "n3", proxy.address, ["--cluster-key", key])
        wait_for(lambda: "record failed authentication" in n1.log_path.read_text(), 20,
                 "n1 to detect the altered record")
    finally:
        proxy.close()
    x = np.arange(256 * 4, dtype=np.float32).reshape(256, 4)
    with Client(n1.socket) as c:
        np.testing.assert_allclose(c.matmul(x, x.T), x @ x.T, rtol=1e-5)
    wait_for(lambda: "n2" in {p["name"] for p in n1.peers() if p["state"] == "alive"}, 20,
             "n2 to be an alive member at n1")


def test_key_rotation_without_downtime(cluster, tmp_path):
    """memberlist's procedure: add B everywhere, make B primary everywhere, drop A — one
    daemon restarted at a time, the others staying linked throughout."""
    a, b = new_cluster_key(), new_cluster_key()
    rings = {n: tmp_path / f"{n}.keys" for n in ("n1", "n2", "n3")}
    for path in rings.values():
        key_file(path, a)
    nodes = [cluster.add(n, extra=["--cluster-key", str(rings[n])]) for n in rings]
    cluster.wait_converged(alive=2)
    for step in ((a, b), (b, a), (b,)):
        for node in nodes:
            key_file(rings[node.name], *step)
            node.stop()
            others = [n for n in nodes if n is not node]
            cluster.wait_converged(alive=1, nodes=others, timeout=40)   # still linked
            node.bootstrap = [others[0].address]
            node.start()
            cluster.wait_converged(alive=2, timeout=40)
    old = cluster.add("old-key", extra=["--cluster-key", key_file(tmp_path / "old", a)],
                      bootstrap=nodes[0])
    time.sleep(3)
    assert old.peers() == []
    assert all(n.status()["cluster"] == nodes[0].status()["cluster"] for n in nodes)


def test_keygen_writes_a_private_key_file_and_never_overwrites(tmp_path):
    path = tmp_path / "cluster.key"
    out = run_cli("keygen", str(path))
    assert out.returncode == 0, out.stderr
    assert path.stat().st_mode & 0o777 == 0o600
    assert len(path.read_bytes().strip()) == 44            # 32 bytes, base64
    before = path.read_bytes()
    again = run_cli("keygen", str(path))
    assert again.returncode == 2 and "exists" in again.stderr
    assert path.read_bytes() == before


def test_an_open_mesh_refuses_a_public_address_unless_told(tmp_path):
    out = run_cli("daemon", "--listen", "0.0.0.0:0", "--data-dir", str(tmp_path / "d"),
                  timeout=60)
    assert out.returncode == 2 and "without a cluster key" in out.stderr
