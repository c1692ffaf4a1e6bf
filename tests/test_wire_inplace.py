"""Receiving frames in place (protocol/wire.py FrameDecoder.get_buffer/buffer_updated, used
by nat/tcp.py's BufferedProtocol): the same frames as feed() whatever the transport's read
sizes, big frame bodies received straight into their own buffer, and the same limits."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from protocol.errors import FrameError
from protocol.wire import SCRATCH_BYTES, FrameDecoder, frame_header


def stream_of(frames: list[bytes], limit: int) -> bytes:
    return b"".join(frame_header(len(f), limit) + f for f in frames)


def receive(decoder: FrameDecoder, data: bytes, reads: list[int]) -> list[bytes]:
    """Play a transport: each read fills at most the lent buffer and its own size."""
    out, pos, i = [], 0, 0
    while pos < len(data):
        buf = decoder.get_buffer()
        n = min(len(buf), len(data) - pos, reads[i % len(reads)])
        buf[:n] = data[pos:pos + n]
        pos += n
        i += 1
        out.extend(bytes(f) for f in decoder.buffer_updated(n))
    return out


@settings(max_examples=50, deadline=None)
@given(sizes=st.lists(st.sampled_from([0, 1, 5, 100, SCRATCH_BYTES - 4, SCRATCH_BYTES,
                                       SCRATCH_BYTES + 3, 70_000]), min_size=1, max_size=6),
       reads=st.lists(st.sampled_from([1, 3, 4096, 65_536, 400_000]), min_size=1, max_size=5))
def test_in_place_receive_yields_the_frames_feed_yields(sizes, reads):
    frames = [bytes([i % 251]) * s for i, s in enumerate(sizes)]
    data = stream_of(frames, 1 << 20)
    assert receive(FrameDecoder(1 << 20), data, reads) == frames
    assert FrameDecoder(1 << 20).feed(data) == frames


def test_a_big_frame_body_is_received_into_its_own_buffer():
    decoder = FrameDecoder(1 << 20)
    body = bytes(range(256)) * 1000                  # 256000 bytes
    data = frame_header(len(body)) + body
    first = decoder.get_buffer()
    first[:1000] = data[:1000]
    assert decoder.buffer_updated(1000) == []
    rest = decoder.get_buffer()                      # the frame's buffer, not the scratch
    assert len(rest) == len(body) - (1000 - 4)
    rest[:] = data[1000:]
    (frame,) = decoder.buffer_updated(len(rest))
    assert frame == body
    assert rest.obj is frame                         # written in place: nothing copied after


def test_an_oversized_header_is_refused_in_place_too():
    decoder = FrameDecoder(1000)
    buf = decoder.get_buffer()
    buf[:4] = (5000).to_bytes(4, "big")
    with pytest.raises(FrameError, match="limit is 1000"):
        decoder.buffer_updated(4)
