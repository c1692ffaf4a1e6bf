"""Node identity as pure functions: an Ed25519 key, the id derived from it, signatures.

A node id is the hash of the node's Ed25519 public key (as in libp2p, where a peer id is
a multihash of the identity key): nobody can claim an id without holding the private key
that hashes to it, and anything the node signs is checkable by whoever sees the public key
next to the id — adverts and handshakes are therefore *self-certifying*, no directory of
keys is needed. The id keeps the format ids always had here (32 lowercase hex digits),
so logs, the CLI and the database need no change.

Every signature is over a domain-separated message (``context`` + NUL + data) so a
signature made for one purpose (a Noise static key, an alive record, an ICE fingerprint)
can never be replayed as another. Ed25519 comes from ``cryptography`` (OpenSSL).
"""

from __future__ import annotations

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import (Ed25519PrivateKey,
                                                               Ed25519PublicKey)

PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64
NODE_ID_CHARS = 32
_ID_DOMAIN = b"sedma-node-id-v1\0"


def node_id_for(public_key: bytes) -> str:
    """The node id a raw Ed25519 public key stands for (128 bits of SHA-256, hex).

    SHA-256 from ``cryptography`` (loaded for Ed25519 anyway) rather than ``hashlib``,
    whose OpenSSL binding ``_hashlib`` costs an idle daemon ~0.6 MB of RSS (issue 13)."""
    digest = hashes.Hash(hashes.SHA256())
    digest.update(_ID_DOMAIN + bytes(public_key))
    return digest.finalize().hex()[:NODE_ID_CHARS]


def sign(private_key: Ed25519PrivateKey, context: bytes, data: bytes) -> bytes:
    """Sign ``data`` for the purpose named by ``context``."""
    return private_key.sign(context + b"\0" + data)


def verify(public_key: bytes, context: bytes, data: bytes, signature: bytes) -> bool:
    """True iff ``signature`` is the key's signature of ``data`` for ``context``."""
    if len(public_key) != PUBLIC_KEY_BYTES or len(signature) != SIGNATURE_BYTES:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(bytes(public_key)).verify(
            bytes(signature), context + b"\0" + bytes(data))
    except (InvalidSignature, ValueError):
        return False
    return True


def verify_claim(node_id: str, public_key: bytes, context: bytes, data: bytes,
                 signature: bytes) -> str | None:
    """Why a signed claim of ``node_id`` is not acceptable, or None if it is.

    Acceptable means: the key hashes to the id, and the signature is the key's.
    """
    if len(public_key) != PUBLIC_KEY_BYTES:
        return "no identity key"
    if node_id_for(public_key) != node_id:
        return f"identity key does not hash to node id {node_id[:8]}"
    if not verify(public_key, context, data, signature):
        return "bad signature"
    return None


def raw_public_key(private_key: Ed25519PrivateKey) -> bytes:
    """The 32-byte raw public key of ``private_key``."""
    from cryptography.hazmat.primitives import serialization

    return private_key.public_key().public_bytes(serialization.Encoding.Raw,
                                                 serialization.PublicFormat.Raw)


class Identity:
    """A node's key pair and the id it implies (the private key never leaves this object)."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._key = private_key
        self.public_key = raw_public_key(private_key)
        self.node_id = node_id_for(self.public_key)

    @classmethod
    def generate(cls) -> "Identity":
        return cls(Ed25519PrivateKey.generate())

    def sign(self, context: bytes, data: bytes) -> bytes:
        return sign(self._key, context, data)

    def private_bytes(self) -> bytes:
        """The key as unencrypted PKCS#8 PEM, for the data dir (written mode 0600)."""
        from cryptography.hazmat.primitives import serialization

        return self._key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption())
