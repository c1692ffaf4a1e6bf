"""The link handshake: who is on the other end, and may they join this cluster?

Both ends send :class:`Hello` as soon as a link is up (no client/server roles, so the same
code serves TCP links and ICE links). Each then proves knowledge of the cluster key with an
HMAC over the *other* side's fresh nonce (:class:`Auth`), so a replayed handshake fails.
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


def auth_for(key: bytes | None, ours: Hello, theirs: Hello) -> Auth:
    """Our proof of the key, bound to their nonce and both ids."""
    return Auth(_mac(key, theirs.nonce, ours.node_id, theirs.node_id))


def verify_auth(key: bytes | None, ours: Hello, theirs: Hello, auth: Auth) -> None:
    """Raise :class:`HandshakeError` unless ``auth`` proves the peer holds the key."""
    expected = _mac(key, ours.nonce, theirs.node_id, ours.node_id)
    if not hmac.compare_digest(expected, auth.mac):
        raise HandshakeError("cluster key mismatch (authentication failed)")


def _mac(key: bytes | None, nonce: bytes, sender: str, receiver: str) -> bytes:
    data = b"sedma-auth\0" + nonce + sender.encode() + b"\0" + receiver.encode()
    return hmac.new(key or b"", data, hashlib.sha256).digest()
