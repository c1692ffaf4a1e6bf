"""Fuzzing a live daemon's peer link *after* a successful Noise handshake.

tests/test_fuzz_noise.py attacks the record layer in memory and tests/test_fuzz_daemon.py
throws bytes at the ports of a daemon that never gets past the handshake. This module covers
what is behind both: a peer holding the cluster key (a buggy or compromised member, the
trust model's inside attacker) completes the handshake, then sends well-sealed records whose
*plaintext* is hostile — noise, broken fragment headers, forged typed maps, valid messages of
every type with arbitrary fields. The daemon must close or ignore, log, and keep serving; the
mesh stays whole and exact; no background loop dies.
"""

from __future__ import annotations

import asyncio
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from nat.tcp import dial_tcp
from node.client import Client
from node.net.identity import load_keyring, new_cluster_key
from node.net.session import handshake
from nat.link import LinkClosed
from protocol.framing import fragments
from protocol.identity import Identity
from protocol.messages import encode_message
from tests.daemons import Cluster, wait_for
from tests.test_fuzz_codec import forged_maps, safe_payload_or_none, valid_messages

pytestmark = pytest.mark.slow
BUDGET = settings(suppress_health_check=list(HealthCheck))   # a module fixture is intended
KEY_FILE_TEXT = new_cluster_key()          # as `sedma keygen` writes it


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    """Two keyed daemons, joined; the test knows the key, as a member would."""
    base = tmp_path_factory.mktemp("fuzzlink")
    key_file = base / "cluster.key"
    key_file.write_bytes(KEY_FILE_TEXT)
    key_file.chmod(0o600)
    c = Cluster(base)
    try:
        c.start(2, extra=["--cluster-key", str(key_file)])
        c.wait_converged(alive=1)
        c.key = load_keyring(str(key_file))[0]
        yield c
    finally:
        c.cleanup()


# ------------------------------------------------------------------ hostile plaintexts

def framed(payload: bytes, sid: int = 1) -> list[bytes]:
    """A payload as the session layer frames it (fragment header + bytes per frame)."""
    return [b"".join(bytes(p) for p in frame) for frame in fragments(sid, [payload])]


def message_frames(msg) -> list[bytes]:
    return framed(b"".join(bytes(p) for p in encode_message(msg)))


plaintexts = st.one_of(
    st.binary(max_size=2000).map(lambda b: [b]),                      # noise as a frame
    st.binary(max_size=500).map(framed),                              # fragments of noise
    st.tuples(st.integers(0, 255), st.integers(0, 2**32 - 1), st.integers(0, 2**64 - 1))
      .map(lambda t: [struct.pack(">BIQ", *t)]),                      # headers claiming sizes
    forged_maps().map(safe_payload_or_none).filter(bool).map(framed), # forged typed maps
    valid_messages().map(message_frames),                             # every type, any fields
)


async def attack(address: str, key: bytes, frames: list[list[bytes]]) -> None:
    """Handshake as a fresh member, send each frame sealed, then read until closed."""
    host, port = address.rsplit(":", 1)
    link = await dial_tcp(host, int(port))
    session = await handshake(link, Identity.generate(), "fuzzer", [], [key], initiator=True)
    secure = session.link
    try:
        for group in frames:
            for frame in group:
                await secure.send([frame])
        for _ in range(50):            # drain the daemon's answers for at most ~1 s
            await asyncio.wait_for(secure.recv(), 0.02)
    except (LinkClosed, asyncio.TimeoutError, ConnectionError):
        pass
    finally:
        await secure.close("fuzzer done")


@BUDGET
@given(st.lists(plaintexts, min_size=1, max_size=4))
def test_hostile_plaintext_behind_a_valid_handshake_leaves_the_daemon_serving(mesh, frames):
    n1 = mesh.nodes[0]
    asyncio.run(attack(n1.address, mesh.key, frames))
    assert n1.status()["id"]


def test_after_the_fuzzing_the_mesh_is_whole_and_exact_and_no_loop_failed(mesh):
    n1, n2 = mesh.nodes
    for node in mesh.nodes:
        assert node.proc.poll() is None
    mesh.wait_converged(alive=1)
    wait_for(lambda: {p["name"] for p in n1.peers() if p["state"] == "alive"} >= {n2.name},
             30, "n2 alive in n1's view")
    failed = {name: h["last_error"] for name, h in n1.status()["loops"].items() if h["failures"]}
    assert not failed, f"background loops failed during the fuzzing: {failed}"
    log = n1.log_path.read_text()
    # the attack got past the handshake and into the session's decoders
    assert "linked to fuzzer" in log and "protocol error" in log
    assert "Traceback" not in log, "an unexpected exception: " + log[log.index("Traceback"):][:2000]
    x = np.random.default_rng(7).standard_normal((300, 80)).astype(np.float32)
    with Client(n1.socket) as c:
        got = c.matmul(x, x.T)
    want = x @ x.T
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
