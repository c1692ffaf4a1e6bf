"""Sealing and opening frames in place (issue 13): TransportCipher.seal_parts and
Reassembler.feed_sealed against the plain seal/open path they replace.

seal_parts encrypts a frame's records straight from the caller's buffers; feed_sealed
opens records straight into the message buffer. Both must produce exactly the records and
payloads of the joined path (same nonces, same order), keep every limit, and fail an
altered, replayed or reordered frame without delivering it or keeping its budget.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from protocol.errors import FrameError
from protocol.framing import ByteBudget, Reassembler, fragments
from protocol.handshake import MAX_RECORD_PLAINTEXT, sealed_size
from tests.noise_pair import ciphers



def split(data: bytes, cuts: list[int]) -> list[memoryview]:
    edges = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [memoryview(data)[a:b] for a, b in zip(edges, edges[1:])] or [memoryview(data)]


@settings(max_examples=60, deadline=None)
@given(size=st.sampled_from([0, 1, 100, MAX_RECORD_PLAINTEXT - 1, MAX_RECORD_PLAINTEXT,
                             MAX_RECORD_PLAINTEXT + 1, 3 * MAX_RECORD_PLAINTEXT + 7, 200_003]),
       cuts=st.lists(st.integers(0, 1 << 20), max_size=5))
def test_seal_parts_makes_the_records_the_joined_seal_makes(size, cuts):
    data = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes()
    mine, _ = ciphers()
    twin, _ = ciphers()
    # the two dialler ciphers have different keys: compare what each receiver opens, and
    # the record layout (sizes) the joined seal produces
    sealed = mine.seal_parts(split(data, cuts))
    assert len(sealed) == sealed_size(size) == len(b"".join(twin.seal(data)))
    opener = ciphers()
    sender, receiver = opener
    assert receiver.open(sender.seal_parts(split(data, cuts))) == data
    assert receiver.open(b"".join(sender.seal(data))) == data   # nonces continue in order


def message_frames(sender, payload: bytes, fragment: int) -> list[bytearray]:
    return [sender.seal_parts(frame) for frame in fragments(7, [payload], fragment)]


@settings(max_examples=40, deadline=None)
@given(size=st.integers(0, 300_000), fragment=st.sampled_from([1000, 65_000, 1 << 20]))
def test_feed_sealed_delivers_what_feed_of_the_opened_frames_delivers(size, fragment):
    payload = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes()
    sender, receiver = ciphers()
    budget = ByteBudget(1 << 30)
    r = Reassembler(budget=budget)
    frames = message_frames(sender, payload, fragment)
    out = [r.feed_sealed(f, receiver) for f in frames]
    assert all(o is None for o in out[:-1])
    assert bytes(out[-1]) == payload
    assert r.buffered == 0 and budget.used == 0


def test_a_tampered_record_fails_and_returns_its_budget():
    sender, receiver = ciphers()
    budget = ByteBudget(1 << 30)
    r = Reassembler(budget=budget)
    payload = bytes(range(256)) * 2000          # 512000 bytes: several records per frame
    frames = message_frames(sender, payload, 1 << 20)
    bad = bytearray(frames[0])
    bad[3 * 65_535 + 10] ^= 1                    # a byte of the fourth record
    with pytest.raises(FrameError, match="authentication"):
        r.feed_sealed(bad, receiver)
    assert r.buffered == 0 and budget.used == 0
    r.discard()
    assert budget.used == 0


def test_a_replayed_or_reordered_frame_fails():
    sender, receiver = ciphers()
    r = Reassembler()
    first, second = message_frames(sender, b"x" * 150_000, 100_000)
    with pytest.raises(FrameError, match="authentication"):
        r.feed_sealed(second, receiver)          # out of order: wrong nonce
    sender, receiver = ciphers()
    r = Reassembler()
    first, second = message_frames(sender, b"x" * 150_000, 100_000)
    assert r.feed_sealed(first, receiver) is None
    with pytest.raises(FrameError, match="authentication"):
        r.feed_sealed(first, receiver)           # replayed


def test_limits_hold_before_any_byte_is_written():
    sender, receiver = ciphers()
    r = Reassembler(max_message=100_000)
    (frame,) = message_frames(sender, b"y" * 200_000, 1 << 20)
    with pytest.raises(FrameError, match="exceeds the 100000 limit"):
        r.feed_sealed(frame, receiver)
    sender, receiver = ciphers()
    r = Reassembler(max_buffered=50_000)
    frames = message_frames(sender, b"z" * 200_000, 60_000)
    with pytest.raises(FrameError, match="buffer budget"):
        r.feed_sealed(frames[0], receiver)
    assert r.buffered == 0


def test_a_truncated_last_record_is_refused():
    sender, receiver = ciphers()
    (frame,) = message_frames(sender, b"w" * 70_000, 1 << 20)
    with pytest.raises(FrameError, match="encrypted record of"):
        Reassembler().feed_sealed(frame[:65_535 + 10], receiver)
