"""The link handshake: Noise XX, the cluster key as PSK, node identities proven (sans-I/O).

Every link (TCP or ICE) starts with a Noise handshake from the ``noiseprotocol`` package
and carries only AEAD records (AES-256-GCM) afterwards; nothing here is a home-made
construction. AES-GCM rather than ChaCha20-Poly1305: both are Noise ciphers, and with the
AES instructions of ordinary x86 and ARMv8 machines OpenSSL's AES-GCM ran 1.6x faster
here (3.3 vs 2.0 GB/s per core), which is most of what encryption costs a bulk link. The pattern is XX (both sides' static keys travel encrypted, forward secrecy
from the ephemeral exchange), as in libp2p's Noise handshake:

    -> [psk,] e                      (the dialler; first frame prefixed with a preamble)
    <- e, ee, s, es  + Hello of the responder
    -> s, se         + Hello of the dialler

Each Hello carries the sender's Ed25519 identity key and its signature over the Noise
static key, so the link proves the identity key, and the Hello's node id must be the hash
of that key (:mod:`protocol.identity`): a member cannot claim another node's id.

With a cluster key the pattern is ``XXpsk0`` (WireGuard mixes its PSK the same way, up
front) rather than ``XXpsk3``: the first message is already encrypted under the PSK, so a
responder learns at once whether the dialler holds a key of its keyring — it tries each key
of the keyring on that message (memberlist's keyring model: first key to dial, every key
accepted) — and a stranger never sees the responder's identity or any answer at all.
Without a cluster key (an open mesh) the pattern is plain XX: encrypted, identities
proven, but anyone may join. The preamble names the version and the mode so a mismatch is
reported as such rather than as a decryption failure.

Replay: both sides contribute fresh ephemeral keys, so a recorded handshake replayed
against a member fails (its later messages were encrypted under keys the member no longer
derives), and transport records carry Noise's counter nonces: a replayed, reordered,
dropped or altered record fails to decrypt (:class:`TransportCipher`).
"""

from __future__ import annotations

import struct
from typing import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from noise.backends.default.ciphers import AESGCMCipher
from noise.connection import Keypair, NoiseConnection
from noise import exceptions as noise_errors
from noise.constants import MAX_NONCE as NOISE_MAX_NONCE

from protocol import PROTOCOL_VERSION
from protocol.errors import FrameError, ProtocolError
from protocol.identity import Identity, node_id_for, verify
from protocol.messages import decode_message, encode_message, message

#: What noiseprotocol raises for a message that does not authenticate or parse.
NoiseError = (noise_errors.NoiseHandshakeError, noise_errors.NoiseInvalidMessage,
              noise_errors.NoiseValueError, noise_errors.NoiseMaxNonceError)

KEYED_PATTERN = b"Noise_XXpsk0_25519_AESGCM_BLAKE2s"
OPEN_PATTERN = b"Noise_XX_25519_AESGCM_BLAKE2s"
PREAMBLE = b"SEDMA"
MODE_OPEN, MODE_KEYED = 0, 1
#: Largest Noise message (the spec's limit) and the plaintext one record can carry.
MAX_NOISE_MESSAGE = 65535
TAG_BYTES = 16
MAX_RECORD_PLAINTEXT = MAX_NOISE_MESSAGE - TAG_BYTES


def sealed_size(plaintext: int) -> int:
    """Bytes a frame of ``plaintext`` bytes takes once sealed into records."""
    return plaintext + TAG_BYTES * max(-(-plaintext // MAX_RECORD_PLAINTEXT), 1)


def max_plaintext(max_sealed: int) -> int:
    """The largest frame whose sealed form fits in ``max_sealed`` bytes."""
    return max_sealed - TAG_BYTES * -(-max_sealed // MAX_NOISE_MESSAGE)


#: A handshake message larger than this is refused before it is even parsed.
MAX_HANDSHAKE_MESSAGE = 8 << 10
STATIC_KEY_CONTEXT = b"sedma-noise-static-key-v1"
OPEN_CLUSTER = "open"


@message("hello")
class Hello:
    """Who the sender is; travels encrypted inside the handshake."""

    version: int
    node_id: str
    name: str
    addresses: list[str]
    identity: bytes     # raw Ed25519 public key; node_id must be its hash
    static_sig: bytes   # identity's signature over this link's Noise static key


class HandshakeError(ProtocolError):
    """The peer may not join: wrong key, wrong identity, other version, or garbage."""


def cluster_id_for(key: bytes | None) -> str:
    """A public name for the cluster a key defines (never reveals the key)."""
    if not key:
        return OPEN_CLUSTER
    import hashlib   # only with a cluster key: _hashlib is ~0.6 MB of RSS (issue 13)

    return hashlib.sha256(b"sedma-cluster\0" + key).hexdigest()[:16]


def psk_for(key: bytes) -> bytes:
    """The 32-byte Noise PSK a cluster key (any length) stands for."""
    import hashlib   # only with a cluster key (see cluster_id_for)

    return hashlib.blake2s(key, digest_size=32, person=b"sedmapsk").digest()


class TransportCipher:
    """The two CipherStates of a finished handshake: one per direction.

    Noise nonces count records, so records must be decrypted in the order they were
    encrypted; any replayed, reordered, missing or altered record fails authentication.
    """

    #: Bytes a record adds to its plaintext.
    overhead = TAG_BYTES

    def __init__(self, conn: NoiseConnection) -> None:
        self._enc = conn.noise_protocol.cipher_state_encrypt
        self._dec = conn.noise_protocol.cipher_state_decrypt
        self.handshake_hash = conn.get_handshake_hash()

    def seal(self, frame: bytes | bytearray | memoryview) -> list[bytes]:
        """A whole link frame as consecutive records (each one Noise message)."""
        view = memoryview(frame)
        return [self._enc.encrypt_with_ad(None, view[i:i + MAX_RECORD_PLAINTEXT])
                for i in range(0, max(len(view), 1), MAX_RECORD_PLAINTEXT)]

    def open(self, sealed: bytes | bytearray | memoryview) -> bytes:
        """The frame a :meth:`seal` output arrived as (records cut at 65,535 bytes)."""
        view = memoryview(sealed)
        parts = [self.decrypt(view[i:i + MAX_NOISE_MESSAGE])
                 for i in range(0, max(len(view), 1), MAX_NOISE_MESSAGE)]
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def seal_parts(self, parts: Sequence[bytes | bytearray | memoryview],
                   into: memoryview | None = None) -> bytearray | memoryview:
        """A frame given as buffers, sealed into one buffer of consecutive records.

        The same records as :meth:`seal` of the joined frame, but each record is encrypted
        straight from the caller's buffers into its place in the output (AES-GCM
        ``encrypt_into``): no joined copy of the frame and no bytes object per record. Only
        a record straddling two buffers (the frame header and the first body bytes) is
        joined, at most 64 KiB. The output is ``into`` when given (exactly
        :func:`sealed_size` bytes, every one overwritten: a reused buffer needs no
        zero-fill, :mod:`protocol.framepool`), else a new buffer.

        One Python loop with everything looked up once per frame: the per-record method
        calls (nonce check, nonce formatting) were ~20 % of sealing a 1 MiB frame on the
        event loop (bench/README.md, loop5). The nonce counter moves past every record
        encrypted, also if a later one fails, so no nonce is ever used twice."""
        total = sum(len(p) for p in parts)
        size = sealed_size(total)
        if into is None:
            out = bytearray(size)
        elif len(into) != size:
            raise ValueError(f"a frame of {total} bytes seals into {size} "
                             f"bytes, not {len(into)}")
        else:
            out = into
        state = self._enc
        n = _first_nonce(state, -(-total // MAX_RECORD_PLAINTEXT) or 1)
        nonce = _nonce_format(state.cipher)
        encrypt_into = state.cipher.cipher.encrypt_into
        view = memoryview(out)
        pos = 0
        try:
            for record in _record_views(parts, total):
                end = pos + len(record) + TAG_BYTES
                encrypt_into(nonce(n), record, None, view[pos:end])
                n += 1
                pos = end
        finally:
            state.n = n
        return out

    def records(self, sealed: bytes | bytearray | memoryview) -> list[memoryview]:
        """A sealed frame cut into its records (every one but the last is 65,535 bytes)."""
        view = memoryview(sealed)
        cuts = [view[i:i + MAX_NOISE_MESSAGE]
                for i in range(0, max(len(view), 1), MAX_NOISE_MESSAGE)]
        _check_record(cuts[-1])
        return cuts

    def decrypt_records_into(self, records: Sequence[memoryview], dest: memoryview) -> None:
        """Open the next ``records`` in order straight into ``dest`` (exactly their
        plaintext, back to back), in one loop with the lookups done once (see
        :meth:`seal_parts`). The nonce counter moves only past records that
        authenticated; on a failed tag ``dest`` may hold garbage and the caller drops it
        with the link."""
        if not records:
            return
        for record in records:
            _check_record(record)
        state = self._dec
        n = _first_nonce(state, len(records))
        nonce = _nonce_format(state.cipher)
        decrypt_into = state.cipher.cipher.decrypt_into
        pos = 0
        try:
            for record in records:
                end = pos + len(record) - TAG_BYTES
                decrypt_into(nonce(n), record, None, dest[pos:end])
                n += 1
                pos = end
        except InvalidTag:
            raise FrameError("record failed authentication (tampered, replayed, reordered "
                             "or truncated)") from None
        finally:
            state.n = n

    def encrypt(self, plaintext: bytes | bytearray | memoryview) -> bytes:
        if len(plaintext) > MAX_RECORD_PLAINTEXT:
            raise FrameError(f"record of {len(plaintext)} bytes exceeds "
                             f"{MAX_RECORD_PLAINTEXT} (one Noise message)")
        return self._enc.encrypt_with_ad(None, plaintext)

    def decrypt(self, record: bytes | bytearray | memoryview) -> bytes:
        _check_record(record)
        try:
            return self._dec.decrypt_with_ad(None, record)
        except (InvalidTag, *NoiseError):
            raise FrameError("record failed authentication (tampered, replayed, reordered "
                             "or truncated)") from None


def _check_record(record: bytes | bytearray | memoryview) -> None:
    """Refuse a sealed record no Noise message can be (before any decryption)."""
    if not TAG_BYTES <= len(record) <= MAX_NOISE_MESSAGE:
        raise FrameError(f"encrypted record of {len(record)} bytes (a Noise message "
                         f"holds {TAG_BYTES} to {MAX_NOISE_MESSAGE})")


def _first_nonce(state, count: int) -> int:
    """The nonce the next of ``count`` records uses, once it is sure all of them have one
    (the counter must never wrap: Noise ends a link before that)."""
    if state.n + count > NOISE_MAX_NONCE:
        raise FrameError("the link's nonce space is used up")
    return state.n


_AESGCM_NONCE = struct.Struct(">4xQ")


def _nonce_format(cipher):
    """The nonce bytes for counter ``n``: noiseprotocol's AES-GCM layout (4 zero bytes,
    the counter as a big-endian u64) packed by a struct, or the cipher's own method for
    any other cipher."""
    if isinstance(cipher, AESGCMCipher):
        return _AESGCM_NONCE.pack
    return cipher.format_nonce


def _record_views(parts: Sequence[bytes | bytearray | memoryview], total: int):
    """The plaintext of each record of a frame given as buffers: views where a record lies
    in one buffer, a joined copy where it straddles two. An empty frame is one record."""
    pending: list[memoryview] = []
    have = 0
    for part in parts:
        view = memoryview(part)
        if view.format != "B" or view.ndim != 1:
            view = view.cast("B")
        while len(view):
            take = min(MAX_RECORD_PLAINTEXT - have, len(view))
            if not pending and take == MAX_RECORD_PLAINTEXT:
                yield view[:take]
            else:
                pending.append(view[:take])
                have += take
                if have == MAX_RECORD_PLAINTEXT:
                    yield b"".join(pending)
                    pending, have = [], 0
            view = view[take:]
    if pending or total == 0:
        yield b"".join(pending)


class NoiseHandshake:
    """One side of the handshake, driven by the I/O shell with whole messages.

    Dialler: ``first()`` -> send; ``on_response(msg2)`` -> send the result; then
    ``remote`` and ``cipher()``. Responder: ``on_first(msg1)`` -> send the result;
    ``on_final(msg3)``; then ``remote`` and ``cipher()``. Every method raises
    :class:`HandshakeError` saying why the peer is refused.
    """

    def __init__(self, identity: Identity, name: str, addresses: list[str],
                 keys: list[bytes], *, initiator: bool) -> None:
        self.identity = identity
        self.keys = list(keys)
        self.initiator = initiator
        self.mode = MODE_KEYED if self.keys else MODE_OPEN
        static = X25519PrivateKey.generate()
        self._static = static.private_bytes(serialization.Encoding.Raw,
                                            serialization.PrivateFormat.Raw,
                                            serialization.NoEncryption())
        static_pub = static.public_key().public_bytes(serialization.Encoding.Raw,
                                                      serialization.PublicFormat.Raw)
        self.hello = Hello(PROTOCOL_VERSION, identity.node_id, name, list(addresses),
                           identity.public_key,
                           identity.sign(STATIC_KEY_CONTEXT, static_pub))
        self._conn: NoiseConnection | None = None
        self.remote: Hello | None = None
        #: Index in the keyring of the key the peer used (None in an open mesh).
        self.key_index: int | None = None

    # dialler ------------------------------------------------------------------------
    def first(self) -> bytes:
        """The dialler's first message, under the first key of the keyring."""
        self._conn = self._connection(self.keys[0] if self.keys else None)
        self.key_index = 0 if self.keys else None
        return PREAMBLE + bytes([PROTOCOL_VERSION, self.mode]) + self._write(b"")

    def on_response(self, msg2: bytes) -> bytes:
        """Check the responder's identity; return our final message (with our Hello)."""
        self.remote = self._read_hello(msg2)
        return self._write(_encode(self.hello))

    # responder ----------------------------------------------------------------------
    def on_first(self, msg1: bytes) -> bytes:
        """Admit the dialler if it used a key of our keyring; return our response."""
        body = self._check_preamble(msg1)
        for index, key in enumerate(self.keys or [None]):
            conn = self._connection(key)
            try:
                conn.read_message(body)
            except (*NoiseError, InvalidTag, ValueError):
                continue
            self._conn, self.key_index = conn, (index if key else None)
            return self._write(_encode(self.hello))
        if self.keys:
            raise HandshakeError("cluster key mismatch: no key of our keyring "
                                 "authenticates the dialler")
        raise HandshakeError("malformed first handshake message")

    def on_final(self, msg3: bytes) -> None:
        """Check the dialler's identity; the handshake is then complete."""
        self.remote = self._read_hello(msg3)

    # both ---------------------------------------------------------------------------
    def cipher(self) -> TransportCipher:
        if self._conn is None or not self._conn.handshake_finished or self.remote is None:
            raise HandshakeError("handshake not finished")
        return TransportCipher(self._conn)

    def _connection(self, key: bytes | None) -> NoiseConnection:
        conn = NoiseConnection.from_name(KEYED_PATTERN if key else OPEN_PATTERN)
        if key:
            conn.set_psks(psk=psk_for(key))
        conn.set_prologue(PREAMBLE + bytes([PROTOCOL_VERSION, self.mode]))
        conn.set_keypair_from_private_bytes(Keypair.STATIC, self._static)
        if self.initiator:
            conn.set_as_initiator()
        else:
            conn.set_as_responder()
        conn.start_handshake()
        return conn

    def _check_preamble(self, msg1: bytes) -> bytes:
        head = len(PREAMBLE) + 2
        if len(msg1) < head or not msg1.startswith(PREAMBLE):
            raise HandshakeError("not a sedma handshake")
        version, mode = msg1[len(PREAMBLE)], msg1[len(PREAMBLE) + 1]
        if version != PROTOCOL_VERSION:
            raise HandshakeError(f"protocol version {version}, we speak {PROTOCOL_VERSION}")
        if mode != self.mode:
            raise HandshakeError("the dialler has a cluster key, this mesh is open"
                                 if mode == MODE_KEYED else
                                 "the dialler has no cluster key, this mesh requires one")
        return msg1[head:]

    def _write(self, payload: bytes) -> bytes:
        try:
            return bytes(self._conn.write_message(payload))
        except (*NoiseError, ValueError) as exc:
            raise HandshakeError(f"handshake failed: {exc}") from None

    def _read_hello(self, data: bytes) -> Hello:
        if self._conn is None:
            raise HandshakeError("handshake message out of order")
        state = self._conn.noise_protocol.handshake_state  # gone once the read finishes it
        try:
            payload = self._conn.read_message(data)
        except (*NoiseError, InvalidTag, ValueError):
            raise HandshakeError("handshake message failed authentication (wrong cluster "
                                 "key, replayed or forged)") from None
        static_pub = state.rs.public_bytes
        try:
            hello = decode_message(bytes(payload))
        except ProtocolError as exc:
            raise HandshakeError(f"bad hello: {exc}") from None
        if not isinstance(hello, Hello):
            raise HandshakeError(f"expected hello, got {type(hello).TAG}")
        check_hello(self.hello, hello, static_pub)
        return hello


def check_hello(ours: Hello, theirs: Hello, static_pub: bytes) -> None:
    """Raise :class:`HandshakeError` unless ``theirs`` is a valid, proven identity."""
    if theirs.version != ours.version:
        raise HandshakeError(f"protocol version {theirs.version}, we speak {ours.version}")
    if node_id_for(theirs.identity) != theirs.node_id:
        raise HandshakeError(f"node id {theirs.node_id[:8]!r} is not the hash of the peer's "
                             "identity key (id spoofing)")
    if not verify(theirs.identity, STATIC_KEY_CONTEXT, static_pub, theirs.static_sig):
        raise HandshakeError("the peer's identity key did not sign its Noise static key")
    if theirs.node_id == ours.node_id:
        raise HandshakeError("the peer is this node (dialled our own address)")
    if len(theirs.name) > 64 or len(theirs.addresses) > 64:
        raise HandshakeError("hello too large (name or address list)")


def _encode(msg: Hello) -> bytes:
    return b"".join(bytes(p) for p in encode_message(msg))
