"""The link handshake (Noise XX, cluster key as PSK): who may join, and what is proven."""

import asyncio

import pytest

from nat.link import Link, LinkClosed
from node.net.session import handshake
from protocol.errors import ProtocolError
from protocol.handshake import HandshakeError, NoiseHandshake
from protocol.identity import Identity, node_id_for
from protocol.rpc import Bye

KEY = b"k" * 32
OTHER = b"o" * 32


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
        item = await self.inbox.get()
        if item is None:
            raise LinkClosed("peer closed")
        return item

    async def close(self, reason: str = "closed locally") -> None:
        self.close_reason = self.close_reason or reason
        if self.peer is not None:
            self.peer.inbox.put_nowait(None)


def pipe() -> tuple[MemoryLink, MemoryLink]:
    a, b = MemoryLink(), MemoryLink()
    a.peer, b.peer = b, a
    return a, b


A, B = Identity.generate(), Identity.generate()


async def connect(keys_a, keys_b, ida=A, idb=B):
    a, b = pipe()
    return a, b, await asyncio.gather(handshake(a, ida, "a", ["a:1"], keys_a, initiator=True),
                                      handshake(b, idb, "b", ["b:1"], keys_b, initiator=False),
                                      return_exceptions=True)


async def test_members_with_the_same_key_prove_their_identities_and_talk_encrypted():
    a, b, (sa, sb) = await connect([KEY], [KEY])
    assert (sa.peer_id, sb.peer_id) == (B.node_id, A.node_id)
    assert sa.peer_id == node_id_for(sa.remote.identity)
    got: asyncio.Queue = asyncio.Queue()
    sa.start(handler=lambda s, m: got.put(m))
    sb.start(handler=lambda s, m: got.put(m))
    await sa.send(Bye("a secret reason"))
    assert (await asyncio.wait_for(got.get(), 5)).reason == "a secret reason"
    assert not any(b"a secret reason" in f for f in a.sent)   # only ciphertext on the link
    await sa.close("done")
    await sb.close("done")


async def test_a_wrong_key_is_refused_and_the_responder_sends_nothing_at_all():
    a, b, results = await connect([OTHER], [KEY])
    assert all(isinstance(r, (ProtocolError, LinkClosed)) for r in results)
    assert isinstance(results[1], HandshakeError) and "cluster key mismatch" in str(results[1])
    assert b.sent == []        # a stranger learns nothing: not even the responder's identity


async def test_a_keyring_admits_every_key_and_dials_with_the_first():
    _, _, (sa, sb) = await connect([OTHER, KEY], [KEY, OTHER])
    assert sa.peer_id == B.node_id and sb.peer_id == A.node_id


@pytest.mark.parametrize("keys_a, keys_b, reason", [
    ([], [KEY], "no cluster key, this mesh requires one"),
    ([KEY], [], "has a cluster key, this mesh is open")])
async def test_open_and_keyed_meshes_are_told_apart_with_a_clear_reason(keys_a, keys_b, reason):
    _, _, results = await connect(keys_a, keys_b)
    assert reason in str(results[1])


async def test_open_mode_still_encrypts_and_proves_identities():
    a, _, (sa, sb) = await connect([], [])
    assert sa.peer_id == B.node_id and sb.peer_id == A.node_id
    sa.start(handler=lambda s, m: asyncio.sleep(0))
    await sa.send(Bye("plain?"))
    assert not any(b"plain?" in f for f in a.sent)


async def test_a_member_cannot_claim_another_nodes_id(monkeypatch):
    victim = Identity.generate()
    real_init = NoiseHandshake.__init__

    def spoofing_init(self, identity, *args, **kw):
        real_init(self, identity, *args, **kw)
        if identity is A:  # A holds the cluster key but claims the victim's id
            self.hello.node_id = victim.node_id
    monkeypatch.setattr(NoiseHandshake, "__init__", spoofing_init)
    _, _, results = await connect([KEY], [KEY])
    assert isinstance(results[1], HandshakeError) and "id spoofing" in str(results[1])


async def test_a_borrowed_identity_key_without_its_signature_is_refused(monkeypatch):
    victim = Identity.generate()
    real_init = NoiseHandshake.__init__

    def borrowing_init(self, identity, *args, **kw):
        real_init(self, identity, *args, **kw)
        if identity is A:  # claims the victim's id and public key, cannot sign with it
            self.hello.node_id, self.hello.identity = victim.node_id, victim.public_key
    monkeypatch.setattr(NoiseHandshake, "__init__", borrowing_init)
    _, _, results = await connect([KEY], [KEY])
    assert "did not sign its Noise static key" in str(results[1])


async def test_a_recorded_session_replayed_against_the_member_is_rejected():
    a, _, (sa, sb) = await connect([KEY], [KEY])
    sa.start(handler=lambda s, m: asyncio.sleep(0))
    await sa.send(Bye("recorded"))
    recording = list(a.sent)           # the dialler's handshake messages and a record
    replay_a, replay_b = pipe()
    responder = asyncio.ensure_future(handshake(replay_b, B, "b", [], [KEY], initiator=False))
    for frame in recording:
        await replay_a.send([frame])
    with pytest.raises(HandshakeError, match="failed authentication"):
        await asyncio.wait_for(responder, 5)


def tampered(frame: bytes) -> bytes:
    return frame[:-1] + bytes([frame[-1] ^ 1])


@pytest.mark.parametrize("attack", ["tamper", "replay", "reorder", "truncate"])
async def test_an_altered_record_stream_closes_the_link_with_a_reason(attack):
    _, b, (sa, sb) = await connect([KEY], [KEY])
    frames: list[bytes] = []
    link = sa.link.inner
    real_send = link.send

    async def capture(frame):
        frames.append(b"".join(bytes(x) for x in frame))
    link.send = capture
    sa.start(handler=lambda s, m: asyncio.sleep(0))
    for i in range(2):
        await sa.send(Bye(f"m{i}"))
    link.send = real_send
    first, second = frames
    sequence = {"tamper": [tampered(first)], "replay": [first, first],
                "reorder": [second, first], "truncate": [first[:-5]]}[attack]
    got: asyncio.Queue = asyncio.Queue()
    sb.start(handler=lambda s, m: got.put(m))
    for frame in sequence:
        await b.inbox.put(frame)
    await asyncio.wait_for(sb.closed.wait(), 5)
    assert "failed authentication" in sb.close_reason
    delivered = [got.get_nowait().reason for _ in range(got.qsize())]
    assert delivered in ([], ["m0"])   # nothing altered or out of order is ever delivered


def test_the_handshake_core_is_sans_io():
    """Three messages, no sockets: the core alone runs the whole exchange."""
    dialler = NoiseHandshake(A, "a", [], [KEY], initiator=True)
    responder = NoiseHandshake(B, "b", [], [OTHER, KEY], initiator=False)
    responder.on_final(dialler.on_response(responder.on_first(dialler.first())))
    assert dialler.remote.node_id == B.node_id and responder.remote.node_id == A.node_id
    assert responder.key_index == 1
    record = dialler.cipher().encrypt(b"x" * 100)
    assert responder.cipher().decrypt(record) == b"x" * 100


from hypothesis import given, settings, strategies as st  # noqa: E402

from protocol.errors import FrameError  # noqa: E402


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.sampled_from([[KEY], []]))
def test_any_first_message_is_refused_with_a_handshake_error(data, keys):
    """Keyed: nothing but a PSK-authenticated message passes. Open: XX's first message is
    a bare ephemeral key, so 32 arbitrary bytes are one (the dialler is checked later);
    anything else is refused — and never with another exception than HandshakeError."""
    for msg in (data, b"SEDMA\x02" + bytes([1 if keys else 0]) + data):
        responder = NoiseHandshake(B, "b", [], keys, initiator=False)
        try:
            responder.on_first(msg)
        except HandshakeError:
            continue
        assert not keys and msg.startswith(b"SEDMA") and len(data) >= 32


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_any_response_or_record_is_refused_with_a_clear_error(data):
    dialler = NoiseHandshake(A, "a", [], [KEY], initiator=True)
    dialler.first()
    with pytest.raises(HandshakeError):
        dialler.on_response(data)
    x = NoiseHandshake(A, "a", [], [KEY], initiator=True)
    y = NoiseHandshake(B, "b", [], [KEY], initiator=False)
    y.on_final(x.on_response(y.on_first(x.first())))
    with pytest.raises(FrameError):
        y.cipher().decrypt(data)


def sealed_pair():
    x = NoiseHandshake(A, "a", [], [KEY], initiator=True)
    y = NoiseHandshake(B, "b", [], [KEY], initiator=False)
    y.on_final(x.on_response(y.on_first(x.first())))
    return x.cipher(), y.cipher()


@pytest.mark.parametrize("size", [0, 1, 65519, 65520, 1 << 20])
def test_a_frame_is_sealed_as_noise_sized_records_and_opened_whole(size):
    from protocol.handshake import MAX_NOISE_MESSAGE, sealed_size
    enc, dec = sealed_pair()
    frame = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    records = enc.seal(frame)
    assert all(len(r) <= MAX_NOISE_MESSAGE for r in records)
    assert sum(map(len, records)) == sealed_size(size)
    assert dec.open(b"".join(records)) == frame


def test_records_of_one_frame_cannot_be_swapped_or_cut():
    enc, dec = sealed_pair()
    records = enc.seal(b"y" * 200_000)                       # four records
    with pytest.raises(FrameError, match="failed authentication"):
        dec.open(b"".join([records[1], records[0], *records[2:]]))
    enc, dec = sealed_pair()
    records = enc.seal(b"y" * 200_000)
    with pytest.raises(FrameError, match="failed authentication"):
        dec.open(b"".join(records)[:-1])                    # the last record cut short
    enc, dec = sealed_pair()
    records = enc.seal(b"y" * 200_000)
    assert dec.open(b"".join(records)) == b"y" * 200_000   # the same, untouched, opens
