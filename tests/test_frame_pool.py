"""Reused frame buffers (protocol.framepool, issue 13): sealing into a pooled buffer and
receiving into one give the same frames, tampering is still caught, limits are unchanged,
and a buffer is never reused while a transport or a reader may still read the frame in it.

The aliasing tests would fail if the pool handed out a buffer too early: a frame still
queued would then be overwritten by a later one, and the receiver would see the wrong
plaintext or a record failing authentication.
"""

from __future__ import annotations

import asyncio
import socket

import pytest
import uvloop

from nat.link import Link
from nat.secure import SecureLink
from nat.tcp import TcpLink, dial_tcp, listen_tcp
from protocol.errors import FrameError
from protocol.framepool import MIN_POOLED, FramePool, LentFrames, thread_pool
from protocol.handshake import sealed_size
from protocol.wire import DEFAULT_MAX_FRAME, FrameDecoder, frame_header
from tests.noise_pair import ciphers
from tests.session_pair import session_pair

BIG = 600_000   # a pooled frame size (between MIN_POOLED and the capacity)
FRAME = (1 << 20) - 4096   # near the largest frame a session sends


def payload(i: int, size: int = BIG) -> bytes:
    return bytes([(i * 7 + j) % 251 for j in range(256)]) * (size // 256) + bytes(size % 256)


def dirty_view(size: int) -> memoryview:
    return memoryview(bytearray(b"\xaa" * DEFAULT_MAX_FRAME))[:size]


# sealing into a given buffer --------------------------------------------------------
def test_sealing_into_a_dirty_buffer_opens_to_the_frame():
    sender, receiver = ciphers()
    data = payload(1)
    out = dirty_view(sealed_size(len(data)))
    sealed = sender.seal_parts([data[:10], memoryview(data)[10:]], out)
    assert sealed is out
    assert receiver.open(sealed) == data


def test_a_tampered_frame_sealed_into_a_pooled_buffer_is_rejected():
    sender, receiver = ciphers()
    data = payload(2)
    sealed = sender.seal_parts([data], dirty_view(sealed_size(len(data))))
    sealed[70_000] ^= 1                                    # a byte of the second record
    with pytest.raises(FrameError, match="authentication"):
        receiver.open(sealed)


def test_sealing_into_a_buffer_of_the_wrong_size_is_refused():
    sender, _ = ciphers()
    with pytest.raises(ValueError, match="seals into"):
        sender.seal_parts([payload(3)], dirty_view(BIG))


# the pool ---------------------------------------------------------------------------
def test_pool_sizes_keep_and_double_give():
    pool = FramePool(DEFAULT_MAX_FRAME, keep=2)
    assert pool.take(MIN_POOLED - 1) is None               # small frames: not pooled
    assert pool.take(DEFAULT_MAX_FRAME + 1) is None        # over capacity: not pooled
    a, b, c = (pool.take(BIG) for _ in range(3))
    assert len({id(v.obj) for v in (a, b, c)}) == 3 and pool.allocated == 3
    pool.give(a)
    pool.give(a)                                           # twice: still one free buffer
    assert pool.free == 1
    d, e = pool.take(BIG), pool.take(BIG)
    assert d.obj is a.obj and e.obj is not a.obj           # never two frames in one buffer
    for v in (b, c, d, e):
        pool.give(v)
    assert pool.free == 2                                  # at most `keep` are kept
    pool.give(b"not a pooled frame")
    pool.give(memoryview(bytearray(BIG)))                  # not of the pool's capacity
    assert pool.free == 2


def test_lent_frames_come_back_only_once_written_past_their_end():
    pool = FramePool(DEFAULT_MAX_FRAME)
    lent = LentFrames(pool)
    frames = [pool.take(BIG) for _ in range(3)]
    for i, f in enumerate(frames):
        lent.lend(f, (i + 1) * 1000)
    lent.reclaim(1999)
    assert pool.free == 1 and len(lent) == 2
    lent.forget()                                          # a closed link: never reused
    lent.reclaim(1 << 40)
    assert pool.free == 1


# receiving --------------------------------------------------------------------------
def wire(frames: list[bytes]) -> bytes:
    return b"".join(frame_header(len(f)) + f for f in frames)


def feed_in_chunks(decoder: FrameDecoder, data: bytes, chunk: int = 40_000) -> list:
    out = []
    for i in range(0, len(data), chunk):
        out += decoder.feed(data[i:i + chunk])
    return out


def test_received_frames_are_never_shared_until_given_back():
    pool = FramePool(DEFAULT_MAX_FRAME)
    dec = FrameDecoder(DEFAULT_MAX_FRAME, pool)
    first = [payload(i) for i in range(3)]
    got = feed_in_chunks(dec, wire(first))
    assert [bytes(g) for g in got] == first
    assert len({id(g.obj) for g in got}) == 3             # three frames, three buffers
    pool.give(got[0])
    more = feed_in_chunks(dec, wire([payload(9)]))
    assert more[0].obj is got[0].obj                       # the given-back buffer is reused
    assert bytes(more[0]) == payload(9)
    assert [bytes(g) for g in got[1:]] == first[1:]        # frames still held: untouched
    # a frame lying whole in one fed chunk is copied into a pooled buffer too
    whole = dec.feed(wire([payload(5)]))
    assert bytes(whole[0]) == payload(5) and isinstance(whole[0], memoryview)


def test_received_small_and_oversized_frames_and_the_limit():
    pool = FramePool(200_000)
    dec = FrameDecoder(DEFAULT_MAX_FRAME, pool)
    small, big = b"s" * 100, payload(4)                    # big exceeds this pool's capacity
    got = feed_in_chunks(dec, wire([small, big]))
    assert got[0] == small and type(got[1]) is bytearray and bytes(got[1]) == big
    assert pool.allocated == 0
    with pytest.raises(FrameError, match="limit"):
        FrameDecoder(1000, pool).feed(frame_header(2000, 4000))


# through a link that keeps references (what uvloop's writelines does) ----------------
class HoldingLink(Link):
    """Keeps every sent frame's buffers, like a transport that has not written them yet,
    until ``drain`` declares the first ones written."""

    max_frame = DEFAULT_MAX_FRAME

    def __init__(self) -> None:
        super().__init__()
        self.held: list[list] = []
        self.ends: list[int] = []
        self._written = 0

    async def send(self, frame) -> None:
        self.held.append(list(frame))
        self.ends.append((self.ends[-1] if self.ends else 0) + 4 + sum(len(b) for b in frame))

    def queued_bytes(self) -> int:
        return self.ends[-1] if self.ends else 0

    def written_bytes(self) -> int:
        return self._written

    def drain(self, frames: int) -> None:
        self._written = self.ends[frames - 1]

    async def recv(self) -> bytes:
        raise AssertionError("not used")

    async def close(self, reason: str = "closed locally") -> None:
        self.close_reason = reason


async def test_a_queued_sealed_frame_is_never_overwritten_by_a_later_one():
    sender, receiver = ciphers()
    inner = HoldingLink()
    link = SecureLink(inner, sender)
    link._lent = LentFrames(FramePool(DEFAULT_MAX_FRAME))   # this test's own pool
    for i in range(6):
        await link.send([payload(i)])
    snapshot = [bytes(f[0]) for f in inner.held]
    assert len({id(f[0].obj) for f in inner.held}) == 6    # nothing written: all distinct
    inner.drain(3)                                         # the transport wrote three
    for i in range(6, 9):
        await link.send([payload(i)])
    reused = {id(f[0].obj) for f in inner.held[6:]}
    assert reused == {id(f[0].obj) for f in inner.held[:3]}   # exactly the written ones
    assert [bytes(f[0]) for f in inner.held[3:6]] == snapshot[3:6]   # queued: untouched
    opened = [receiver.open(s) for s in snapshot + [bytes(f[0]) for f in inner.held[6:]]]
    assert opened == [payload(i) for i in range(9)]


# a real TCP link with small socket buffers, on uvloop and on asyncio ----------------
async def _stream(frames: int) -> tuple[int, int]:
    sender_cipher, receiver_cipher = ciphers()
    accepted: asyncio.Queue = asyncio.Queue()

    async def on_link(link):
        await accepted.put(link)

    server = await listen_tcp("127.0.0.1", 0, on_link)
    port = server.sockets[0].getsockname()[1]
    a = await dial_tcp("127.0.0.1", port)
    b = await accepted.get()
    for link in (a, b):
        sock = link._transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 << 10)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
    tx, rx = SecureLink(a, sender_cipher), SecureLink(b, receiver_cipher)
    most_unsent = 0

    async def send_all():
        nonlocal most_unsent
        for i in range(frames):
            await tx.send([payload(i, FRAME)])
            most_unsent = max(most_unsent, a._transport.get_write_buffer_size())

    sending = asyncio.create_task(send_all())
    await asyncio.sleep(0.3)                    # the reader lags: the transport holds frames
    for i in range(frames):
        assert await rx.recv() == payload(i, FRAME), f"frame {i} differs"
    await sending
    await tx.close()
    await rx.close()
    server.close()
    return most_unsent, thread_pool(DEFAULT_MAX_FRAME).allocated


@pytest.mark.parametrize("loop_kind", ["uvloop", "asyncio"])
def test_frames_through_a_congested_tcp_link_arrive_intact(loop_kind):
    loop = uvloop.new_event_loop() if loop_kind == "uvloop" else asyncio.new_event_loop()
    before = thread_pool(DEFAULT_MAX_FRAME).allocated
    try:
        most_unsent, after = loop.run_until_complete(asyncio.wait_for(_stream(60), 60))
    finally:
        loop.close()
    assert most_unsent > 0            # the transport really held unsent frames
    # 120 frames moved (60 sealed, 60 received); new buffers only for the ~30 the lagging
    # reader leaves in flight at once (receive queue, transport), the rest reused
    assert after - before < 60


# encrypted sessions both ways over uvloop TCP: what a daemon's links do ----------------
async def _sessions_both_ways(messages: int) -> tuple[int, int]:
    async with session_pair() as (sa, sb):
        return await _stream_both_ways(sa, sb, messages)


async def _stream_both_ways(sa, sb, messages: int) -> tuple[int, int]:
    import numpy as np
    from protocol.work import StageResult

    got: dict[str, list] = {"a": [], "b": []}

    def handler(who):
        async def on_message(session, msg):
            got[who].append(msg)
        return on_message
    sa.start(handler("a"))
    sb.start(handler("b"))
    before = thread_pool(DEFAULT_MAX_FRAME).allocated
    arrays = [np.full((1 << 20,), i, np.float32) for i in range(messages)]   # 4 MiB each

    async def stream(s):
        for i, y in enumerate(arrays):
            await s.send(StageResult(0, str(i), y))
    await asyncio.gather(stream(sa), stream(sb))
    while len(got["a"]) < messages or len(got["b"]) < messages:
        await asyncio.sleep(0.01)
    for who in ("a", "b"):
        for i, msg in enumerate(got[who]):
            assert msg.request == str(i) and np.array_equal(msg.y, arrays[i]), (who, i)
    allocated = thread_pool(DEFAULT_MAX_FRAME).allocated - before
    return allocated, 2 * messages * 4 * 2     # ~4 frames per message, sealed and received


def test_encrypted_sessions_streaming_both_ways_deliver_every_message_and_reuse_buffers():
    loop = uvloop.new_event_loop()
    try:
        allocated, frame_buffers = loop.run_until_complete(
            asyncio.wait_for(_sessions_both_ways(12), 60))
    finally:
        loop.close()
    # 96 pooled frames (4 full fragments a message), each sealed into and received into
    # a pooled buffer: without reuse that is 192 buffers (a session not recycling what it
    # read: over 96)
    assert allocated < frame_buffers // 2
