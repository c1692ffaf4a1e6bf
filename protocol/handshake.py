"""The link handshake: who is on the other end, and may they join this cluster?

Both ends send :class:`Hello` as soon as a link is up. Then the dialler (initiator) proves
knowledge of the cluster key with an HMAC over the whole exchange — both fresh nonces,
both ids, the cluster and its role (:class:`Auth`) — and only after checking it does the
responder send its own proof. So a replayed handshake fails, and no member ever computes
a proof for a stranger who merely connected to it (the responder is no MAC oracle), which
is what stops an attacker from relaying one member's proof to another. The role tag keeps
a dialler's proof from passing as a responder's. (Links are authenticated, not
encrypted: run the mesh on networks you trust, or under a VPN.)
Without a key the MAC is over an empty key: it still binds the exchange, but the cluster is
open to anyone who can reach it — the daemon logs that at start.
"""

from __future__ import annotations

import hashlib
import hmac
import os

from protocol import PROTOCOL_VERSION
from protocol.errors import ProtocolError
from protocol.messages import message

NONCE_BYTES = 16
OPEN_CLUSTER = "open"


@message("hello")
class Hello:
    version: int
    node_id: str
    cluster_id: str
    name: str
    addresses: list[str]
    nonce: bytes


@message("auth")
class Auth:
    mac: bytes


class HandshakeError(ProtocolError):
    """The peer is not a member of this cluster or speaks another protocol version."""


def cluster_id_for(key: bytes | None) -> str:
    """A public name for the cluster a key defines (never reveals the key)."""
    if not key:
        return OPEN_CLUSTER
    return hashlib.sha256(b"sedma-cluster\0" + key).hexdigest()[:16]


def new_hello(node_id: str, cluster_id: str, name: str, addresses: list[str]) -> Hello:
    """Our Hello with a fresh nonce."""
    return Hello(PROTOCOL_VERSION, node_id, cluster_id, name, list(addresses),
                 os.urandom(NONCE_BYTES))


def check_hello(ours: Hello, theirs: Hello) -> None:
    """Raise :class:`HandshakeError` saying why ``theirs`` cannot join us."""
    if theirs.version != ours.version:
        raise HandshakeError(f"protocol version {theirs.version}, we speak {ours.version}")
    if theirs.cluster_id != ours.cluster_id:
        raise HandshakeError(f"cluster {theirs.cluster_id!r} is not ours ({ours.cluster_id!r})")
    if theirs.node_id == ours.node_id:
        raise HandshakeError("the peer is this node (dialled our own address)")
    if not theirs.node_id or len(theirs.node_id) > 64:
        raise HandshakeError("invalid node id")
    if len(theirs.nonce) != NONCE_BYTES:
        raise HandshakeError("invalid nonce")


def auth_for(key: bytes | None, ours: Hello, theirs: Hello, initiator: bool) -> Auth:
    """Our proof of the key, bound to both nonces, both ids and our role."""
    return Auth(_mac(key, initiator, ours, theirs, sender_is_initiator=initiator))


def verify_auth(key: bytes | None, ours: Hello, theirs: Hello, auth: Auth,
                initiator: bool) -> None:
    """Raise :class:`HandshakeError` unless ``auth`` proves the peer holds the key.

    The peer's MAC must carry the *other* role than ours: a MAC a member computed as the
    dialler can never pass as a responder's, and the reverse.
    """
    expected = _mac(key, initiator, ours, theirs, sender_is_initiator=not initiator)
    if not hmac.compare_digest(expected, auth.mac):
        raise HandshakeError("cluster key mismatch (authentication failed)")


def _mac(key: bytes | None, we_initiated: bool, ours: Hello, theirs: Hello, *,
         sender_is_initiator: bool) -> bytes:
    init, resp = (ours, theirs) if we_initiated else (theirs, ours)
    transcript = b"\0".join([
        b"sedma-auth-v2", b"initiator" if sender_is_initiator else b"responder",
        init.nonce, resp.nonce, init.node_id.encode(), resp.node_id.encode(),
        init.cluster_id.encode()])
    return hmac.new(key or b"", transcript, hashlib.sha256).digest()
