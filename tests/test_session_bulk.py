"""Two peers streaming bulk data at each other over real TCP keep reading and answering.

Each session's reader used to send the answer to a ping itself and wait until it was
written. With both writers blocked on full socket buffers (each peer streaming large
messages), both readers then waited on writes, nobody read, and the link froze until the
60 s send-stall guard killed it. Reads must never wait on writes.

The first test uses links with small buffers (``BoundedLink``: a send waits while the
peer's inbox is full, as a TCP send waits on a full socket buffer), where the deadlock
happens every time on the old code. The second runs the same traffic over real TCP
links, whose 64 MiB receive queues make the freeze rarer but not impossible.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from nat.link import Link, LinkClosed
from nat.tcp import dial_tcp, listen_tcp
from node.net.session import OPEN_BULK, Session
from protocol import PROTOCOL_VERSION
from protocol.handshake import Hello
from protocol.rpc import Reply

MESSAGE = 16 << 20        # bytes per bulk message (fragments of 1 MiB)
MESSAGES = 24             # per direction
BOUND = 45.0              # well below the 60 s stall guard


def _hello(node: str):
    return Hello(PROTOCOL_VERSION, node, node, [f"{node}:1"], b"", b"")


class BoundedLink(Link):
    """One end of an in-memory frame pipe whose receive side holds at most ``depth`` frames."""

    kind = "tcp"
    max_frame = (1 << 20) + 64

    def __init__(self, depth: int) -> None:
        super().__init__()
        self.inbox: asyncio.Queue = asyncio.Queue(depth)
        self.peer: BoundedLink | None = None

    async def send(self, frame) -> None:
        if self.closed:
            raise LinkClosed(self.close_reason)
        await self.peer.inbox.put(b"".join(bytes(b) for b in frame))

    async def recv(self) -> bytes:
        if self.closed:
            raise LinkClosed(self.close_reason)
        return await self.inbox.get()

    async def close(self, reason: str = "closed locally") -> None:
        self.close_reason = self.close_reason or reason


async def test_bulk_both_ways_over_small_buffers_keeps_answering_pings():
    a, b = BoundedLink(2), BoundedLink(2)
    a.peer, b.peer = b, a
    ha, hb = _hello("aa"), _hello("bb")
    sa, sb = Session(a, ha, hb, initiator=True), Session(b, hb, ha, initiator=False)

    async def handler(session, msg):
        pass

    sa.start(handler)
    sb.start(handler)
    payload = np.ones((4 << 20) // 4, dtype=np.float32)   # 4 fragments per message

    async def stream(s: Session):
        for i in range(20):
            await s.send(Reply(1_000_000 + i, payload))

    async def pings(s: Session):   # many in flight: one lands while the writer is stuck
        await asyncio.gather(*(s.ping(timeout=15) for _ in range(50)))

    try:
        await asyncio.wait_for(asyncio.gather(stream(sa), stream(sb), pings(sa), pings(sb)),
                               20)
    finally:
        await sa.close("test over")
        await sb.close("test over")
    assert sa.stats.recv_messages >= 20 + 50 and sb.stats.recv_messages >= 20 + 50


async def _linked_sessions():
    accepted: asyncio.Future = asyncio.get_running_loop().create_future()

    async def on_link(link):
        accepted.set_result(link)
        await asyncio.sleep(3600)

    server = await listen_tcp("127.0.0.1", 0, on_link)
    port = server.sockets[0].getsockname()[1]
    a = await dial_tcp("127.0.0.1", port)
    b = await asyncio.wait_for(accepted, 5)
    ha, hb = _hello("aa"), _hello("bb")
    return server, Session(a, ha, hb, initiator=True), Session(b, hb, ha, initiator=False)


@pytest.mark.slow
async def test_two_peers_streaming_at_each_other_never_deadlock():
    server, sa, sb = await _linked_sessions()
    received = {"aa": 0, "bb": 0}

    async def handler(session, msg):   # not reached: bulk rides as unmatched replies
        pass

    sa.start(handler)
    sb.start(handler)
    payload = np.ones(MESSAGE // 4, dtype=np.float32)
    done = asyncio.Event()
    rtts: list[float] = []
    failures: list[str] = []

    async def stream(s: Session):
        for i in range(MESSAGES):
            await s.send(Reply(1_000_000 + i, payload))   # no waiter: dropped on arrival
            received[s.peer_id] += 1

    async def pinger(s: Session):
        while not done.is_set():
            try:
                rtts.append(await s.ping(timeout=10))
            except (TimeoutError, ConnectionError) as exc:
                failures.append(repr(exc))
            await asyncio.sleep(0.001)

    pingers = [asyncio.create_task(pinger(s)) for s in (sa, sb) for _ in range(4)]
    start = time.monotonic()
    try:
        await asyncio.wait_for(asyncio.gather(stream(sa), stream(sb)), BOUND)
    finally:
        done.set()
        await asyncio.gather(*pingers, return_exceptions=True)
        elapsed = time.monotonic() - start
        await sa.close("test over")
        await sb.close("test over")
        server.close()
    assert received == {"aa": MESSAGES, "bb": MESSAGES}
    assert not failures, failures
    assert rtts, "no ping was answered"
    assert sb.stats.recv_messages >= MESSAGES and sa.stats.recv_messages >= MESSAGES
    print(f"{2 * MESSAGES * MESSAGE / elapsed / 1e6:.0f} MB/s both ways, "
          f"{len(rtts)} pings, max rtt {max(rtts):.0f} ms")


class SmallFrameLink(BoundedLink):
    """Frames of 16 KiB: an 80 KiB bulk message is six fragments."""

    max_frame = (16 << 10) + 64


async def test_a_fan_out_of_many_bulk_messages_stays_within_the_peers_stream_limit():
    """A coordinator sending one share to each of a peer's blocks for several requests at
    once queues more multi-fragment messages than the peer's reassembler accepts partial
    (64): the writer must start only ``OPEN_BULK`` at a time, or the honest peer closes
    the link with "more than 64 messages in flight" (seen at N=16384, 4 clients)."""
    a, b = SmallFrameLink(64), SmallFrameLink(64)
    a.peer, b.peer = b, a
    ha, hb = _hello("aa"), _hello("bb")
    sa, sb = Session(a, ha, hb, initiator=True), Session(b, hb, ha, initiator=False)
    partial: list[int] = []
    feed = sb._reassembler.feed

    def watched(frame):
        out = feed(frame)
        partial.append(sb._reassembler.in_flight)
        return out

    sb._reassembler.feed = watched

    async def handler(session, msg):
        pass

    sa.start(handler)
    sb.start(handler)
    payload = np.ones((80 << 10) // 4, dtype=np.float32)
    try:
        await asyncio.wait_for(
            asyncio.gather(*(sa.send(Reply(1_000_000 + i, payload)) for i in range(100))), 20)
        await asyncio.wait_for(_until(lambda: sb.stats.recv_messages >= 100), 20)
    finally:
        closed_early = sb.closed.is_set()
        await sa.close("test over")
        await sb.close("test over")
    assert not closed_early, sb.close_reason
    assert sb.stats.recv_messages == 100
    assert max(partial) <= OPEN_BULK + 1


async def _until(predicate) -> None:
    while not predicate():
        await asyncio.sleep(0.01)


async def test_a_one_frame_bulk_message_is_not_held_behind_started_multi_frame_ones():
    """Only multi-fragment messages count against ``OPEN_BULK``: with that many big
    messages started and more waiting, a one-frame bulk message (a 100 KiB request) still
    takes its turn at once instead of waiting for a big one to finish."""
    a, b = SmallFrameLink(256), SmallFrameLink(256)
    a.peer, b.peer = b, a
    ha, hb = _hello("aa"), _hello("bb")
    sa = Session(a, ha, hb, initiator=True)
    big = [sa._queue([[b"x"]] * 50, 1 << 20) for _ in range(OPEN_BULK + 4)]
    small = sa._queue([[b"y"]], 100 << 10)
    order = []
    for _ in range(2 * (OPEN_BULK + 1)):    # the writer's next choices, without a link
        out = sa._next_outgoing()
        order.append(len(out.frames))
        if len(out.frames) == 1:
            out.frames.popleft()
            break
        out.frames.popleft()
    assert order[-1] == 1 and len(order) <= OPEN_BULK + 1   # its turn came in the first round
    assert sa._queues.bulk_waiting                            # while big ones still wait
    for fut in big + [small]:
        fut.cancel()
