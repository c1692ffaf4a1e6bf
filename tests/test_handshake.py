"""The link handshake: who may join, and why a stranger cannot borrow a member's proof."""

import asyncio

import pytest

from nat.link import Link, LinkClosed
from node.net.session import handshake
from protocol.errors import ProtocolError
from protocol.handshake import (Auth, HandshakeError, auth_for, cluster_id_for, new_hello,
                                verify_auth)
from protocol.messages import decode_message

KEY = b"k" * 32


class MemoryLink(Link):
    """One end of an in-memory frame pipe (records what it sent)."""

    kind = "tcp"
    max_frame = 1 << 20

    def __init__(self) -> None:
        super().__init__()
        self.inbox: asyncio.Queue = asyncio.Queue()
        self.peer: "MemoryLink | None" = None
        self.sent: list[bytes] = []

    async def send(self, frame) -> None:
        if self.closed:
            raise LinkClosed(self.close_reason)
        data = b"".join(bytes(b) for b in frame)
        self.sent.append(data)
        await self.peer.inbox.put(data)

    async def recv(self) -> bytes:
        if self.closed:
            raise LinkClosed(self.close_reason)
        return await self.inbox.get()

    async def close(self, reason: str = "closed locally") -> None:
        self.close_reason = self.close_reason or reason


def pipe() -> tuple[MemoryLink, MemoryLink]:
    a, b = MemoryLink(), MemoryLink()
    a.peer, b.peer = b, a
    return a, b


def hello(node: str, key: bytes | None = KEY):
    return new_hello(node, cluster_id_for(key), node, [f"{node}:1"])


async def test_members_with_the_same_key_complete_the_handshake():
    a, b = pipe()
    sa, sb = await asyncio.gather(handshake(a, hello("aa"), KEY, initiator=True),
                                  handshake(b, hello("bb"), KEY, initiator=False))
    assert (sa.peer_id, sb.peer_id) == ("bb", "aa")


async def test_a_wrong_key_is_refused_and_the_responder_never_proves_anything():
    a, b = pipe()
    impostor = new_hello("aa", cluster_id_for(KEY), "aa", [])    # knows the public cluster id
    results = await asyncio.gather(handshake(a, impostor, b"wrong" * 8, initiator=True),
                                   handshake(b, hello("bb"), KEY, initiator=False),
                                   return_exceptions=True)
    assert all(isinstance(r, (ProtocolError, LinkClosed)) for r in results)
    assert isinstance(results[1], HandshakeError) and "authentication failed" in str(results[1])
    sent_by_responder = [type(decode_message(f[13:])) for f in b.sent]
    assert Auth not in [t for t in sent_by_responder]


def test_a_dialler_proof_cannot_pass_as_a_responder_proof_or_for_other_nonces():
    z, x = hello("zz"), hello("xx")
    proof = auth_for(KEY, z, x, initiator=True)             # z dialled x
    verify_auth(KEY, x, z, proof, initiator=False)          # x accepts it
    with pytest.raises(HandshakeError):                     # but not as a responder's proof
        verify_auth(KEY, x, z, proof, initiator=True)
    with pytest.raises(HandshakeError):                     # nor in another exchange
        verify_auth(KEY, hello("xx"), z, proof, initiator=False)


async def test_different_clusters_are_told_apart_before_any_proof():
    a, b = pipe()
    results = await asyncio.gather(handshake(a, hello("aa", None), None, initiator=True),
                                   handshake(b, hello("bb"), KEY, initiator=False),
                                   return_exceptions=True)
    assert any("cluster" in str(r) for r in results)
