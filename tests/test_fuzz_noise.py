"""Property-based fuzzing of encrypted link records (protocol/handshake.py TransportCipher).

After the Noise handshake every frame travels as one ChaCha20-Poly1305 record whose nonce
counts records. Whatever an attacker on the path does to a recorded stream — flip bits,
truncate, drop, replay or reorder records, inject noise — the receiver delivers exactly
the untouched prefix of what was sent and then fails with :class:`FrameError` (the link
closes); it never delivers an altered or out-of-order plaintext and never raises anything
else. Handshake messages themselves are fuzzed in tests/test_handshake.py.
"""

from __future__ import annotations

from hypothesis import given, strategies as st

from protocol.errors import FrameError
from tests.noise_pair import ciphers



@st.composite
def attacked_streams(draw):
    plaintexts = draw(st.lists(st.binary(max_size=200), min_size=1, max_size=6))
    attack = draw(st.sampled_from(["flip", "truncate", "drop", "replay", "swap", "inject",
                                   "extend"]))
    return plaintexts, attack, draw(st.data())


@given(attacked_streams())
def test_an_attacked_record_stream_delivers_only_the_untouched_prefix(case):
    plaintexts, attack, data = case
    send, recv = ciphers()
    records = [send.encrypt(p) for p in plaintexts]
    i = data.draw(st.integers(0, len(records) - 1))
    wire = list(records)
    if attack == "flip":
        rec = bytearray(wire[i])
        pos = data.draw(st.integers(0, len(rec) - 1))
        rec[pos] ^= data.draw(st.integers(1, 255))
        wire[i] = bytes(rec)
    elif attack == "truncate":
        wire[i] = wire[i][:data.draw(st.integers(0, len(wire[i]) - 1))]
    elif attack == "drop":
        del wire[i]
    elif attack == "replay":
        wire.insert(data.draw(st.integers(i + 1, len(wire))), wire[i])
    elif attack == "swap":
        j = data.draw(st.integers(0, len(wire) - 1))
        wire[i], wire[j] = wire[j], wire[i]
    elif attack == "inject":
        wire.insert(i, data.draw(st.binary(max_size=250)))
    else:
        wire[i] = wire[i] + data.draw(st.binary(min_size=1, max_size=20))
    delivered = []
    try:
        for rec in wire:
            delivered.append(recv.decrypt(rec))
    except FrameError:
        pass
    # only an in-order prefix of what was sent ever comes out
    assert delivered == plaintexts[:len(delivered)]
    if wire != records[:len(wire)]:   # any real change must stop the stream before its end
        assert len(delivered) < len(wire)


@given(st.lists(st.binary(max_size=300), min_size=1, max_size=5))
def test_noise_is_never_a_record(blobs):
    _, recv = ciphers()
    for blob in blobs:
        try:
            recv.decrypt(blob)
        except FrameError:
            continue
        raise AssertionError("random bytes authenticated as a record")
