"""Property-based fuzzing of the byte-level decoders: frames and fragment reassembly.

Whatever bytes a peer sends, the decoders either return frames/messages or raise
:class:`FrameError` (a :class:`ProtocolError`): never another exception, never more memory
than their limits allow. Valid traffic, cut at arbitrary points, always comes back intact.
Budget: the hypothesis profile (``ci`` a few hundred examples, ``make fuzz`` 10,000).
"""

from __future__ import annotations

import struct

from hypothesis import given, strategies as st

from protocol.errors import FrameError
from protocol.framing import FIRST, LAST, Reassembler, fragments
from protocol.wire import HEADER_SIZE, FrameDecoder, frame_header

SMALL_FRAME = 256


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` split at the given (sorted, deduplicated) offsets."""
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, prev = [], 0
    for p in points + [len(data)]:
        out.append(data[prev:p])
        prev = p
    return out


# ------------------------------------------------------------------------ frames (wire.py)

@given(st.lists(st.binary(max_size=600), max_size=12))
def test_arbitrary_bytes_give_frames_or_a_frame_error(chunks):
    dec = FrameDecoder(max_frame=SMALL_FRAME)
    try:
        for chunk in chunks:
            for frame in dec.feed(chunk):
                assert len(frame) <= SMALL_FRAME
            # never more than one partial frame (plus a partial header) is held
            assert dec.buffered <= SMALL_FRAME + HEADER_SIZE
    except FrameError:
        pass


@given(st.lists(st.binary(max_size=SMALL_FRAME), max_size=10), st.lists(st.integers(0, 10**6)))
def test_valid_frames_survive_any_split(frames, cuts):
    stream = b"".join(frame_header(len(f), SMALL_FRAME) + f for f in frames)
    dec = FrameDecoder(max_frame=SMALL_FRAME)
    got = [f for chunk in chunked(stream, cuts) for f in dec.feed(chunk)]
    assert got == frames
    assert dec.buffered == 0


@given(st.integers(SMALL_FRAME + 1, 2**32 - 1), st.binary(max_size=64))
def test_an_oversized_header_is_refused_before_its_body_arrives(size, tail):
    dec = FrameDecoder(max_frame=SMALL_FRAME)
    try:
        dec.feed(struct.pack(">I", size) + tail)
    except FrameError as exc:
        assert str(size) in str(exc)
    else:
        raise AssertionError("an oversized header was accepted")


# ------------------------------------------------------------- fragments (framing.py)

def held(r: Reassembler) -> int:
    """Bytes the reassembler holds for partial messages (public name first, if it has one)."""
    return getattr(r, "buffered", None) if hasattr(r, "buffered") else r._buffered


LIMITS = dict(max_message=4096, max_streams=4, max_buffered=8192)

flags = st.sampled_from([0, FIRST, LAST, FIRST | LAST]) | st.integers(0, 255)
fragment_frames = st.builds(
    lambda f, sid, total, body, raw: raw if raw is not None else (
        struct.pack(">BI", f, sid) + (struct.pack(">Q", total) if f & FIRST else b"") + body),
    flags, st.integers(0, 5) | st.integers(0, 2**32 - 1),
    st.integers(0, 6000) | st.integers(0, 2**64 - 1), st.binary(max_size=300),
    st.none() | st.binary(max_size=40))


@given(st.lists(fragment_frames, max_size=30))
def test_arbitrary_fragments_give_messages_or_a_frame_error_within_limits(frames):
    r = Reassembler(**LIMITS)
    try:
        for frame in frames:
            msg = r.feed(frame)
            if msg is not None:
                assert len(msg) <= LIMITS["max_message"]
            assert r.in_flight <= LIMITS["max_streams"]
            assert held(r) <= LIMITS["max_buffered"]
    except FrameError:
        pass


@st.composite
def interleaved_messages(draw):
    """Several messages fragmented, their frames interleaved as a sender would."""
    bodies = draw(st.lists(st.binary(max_size=1500), min_size=1, max_size=4))
    size = draw(st.integers(1, 700))
    queues = [list(fragments(sid, [body], size)) for sid, body in enumerate(bodies, start=1)]
    order = []
    while any(queues):
        live = [q for q in queues if q]
        q = live[draw(st.integers(0, len(live) - 1))]
        order.append(b"".join(bytes(p) for p in q.pop(0)))
    return bodies, order


@given(interleaved_messages())
def test_interleaved_fragments_reassemble_exactly(case):
    bodies, frames = case
    r = Reassembler(**LIMITS)
    got = [bytes(m) for m in map(r.feed, frames) if m is not None]
    assert sorted(got) == sorted(bodies)
    assert r.in_flight == 0 and held(r) == 0


@given(interleaved_messages(), st.data())
def test_a_corrupted_fragment_stream_is_refused_or_still_bounded(case, data):
    bodies, frames = case
    i = data.draw(st.integers(0, len(frames) - 1))
    frame = bytearray(frames[i])
    pos = data.draw(st.integers(0, len(frame) - 1))
    frame[pos] ^= data.draw(st.integers(1, 255))
    frames = frames[:i] + [bytes(frame)] + frames[i + 1:]
    r = Reassembler(**LIMITS)
    try:
        for f in frames:
            msg = r.feed(f)
            assert msg is None or len(msg) <= LIMITS["max_message"]
    except FrameError:
        pass
    assert held(r) <= LIMITS["max_buffered"]
