"""What one connected peer costs: an idle session runs one task and holds no writer queues.

An idle daemon at 100 members carried ~45 KB per connected peer (bench/README.md, idle
memory). Per session end: two tasks (reader, and a writer parked on an Event), six
``asyncio.Event``s each with a 624-byte waiter deque, three empty writer deques. These
tests pin what the cuts bought: the writer and its queues exist only while something is
queued, and the wake-up flags (``nat.link.Signal``) hold no waiter storage while nobody
waits, while keeping Event's behaviour.
"""

from __future__ import annotations

import asyncio

import pytest

from nat.link import Signal
from nat.tcp import dial_tcp, listen_tcp
from node.net.session import Session, handshake
from protocol.identity import Identity
from protocol.rpc import Reply


async def _pair():
    """Two handshaked sessions over loopback TCP, both started; and the server."""
    a, b = Identity.generate(), Identity.generate()
    accepted: asyncio.Queue = asyncio.Queue()
    got: asyncio.Queue = asyncio.Queue()

    async def handler(sess, msg):
        await got.put(msg)

    async def on_link(link):
        s = await handshake(link, b, "b", ["127.0.0.1:1"], [], initiator=False)
        s.start(handler)
        await accepted.put(s)

    server = await listen_tcp("127.0.0.1", 0, on_link)
    link = await dial_tcp("127.0.0.1", server.sockets[0].getsockname()[1])
    sa = await handshake(link, a, "a", ["127.0.0.1:2"], [], initiator=True)
    sa.start(handler)
    sb = await asyncio.wait_for(accepted.get(), 5)
    return sa, sb, server, got


async def _settle(sa: Session, sb: Session) -> None:
    for _ in range(200):
        if sa._writer is None and sb._writer is None:
            return
        await asyncio.sleep(0.01)


async def test_an_idle_session_runs_one_task_and_holds_no_queues():
    sa, sb, server, _ = await _pair()
    try:
        await sa.ping(5.0)       # the answer is queued (reads never wait on writes)
        await sb.ping(5.0)
        await _settle(sa, sb)
        for s in (sa, sb):
            assert s._writer is None and s._queues is None
        own = {t for t in asyncio.all_tasks()
               if t.get_coro().__qualname__.startswith("Session.")}
        assert len(own) == 2     # one reader per session end, no parked writer
    finally:
        await sa.close("done")
        await sb.close("done")
        server.close()


async def test_the_writer_comes_back_for_queued_messages_in_order():
    """After the writer ended on an empty queue, queued messages still arrive, in order,
    and their futures resolve; then the writer ends again."""
    sa, sb, server, got = await _pair()
    try:
        await _settle(sa, sb)
        futs = [sa._enqueue(Reply(0, i)) for i in range(3)]   # rid 0: nobody waits for it
        big = sa._enqueue(Reply(0, b"z" * (200 << 10)))          # a bulk message
        await asyncio.wait_for(asyncio.gather(*futs, big), 5)
        await _settle(sa, sb)
        assert sa._writer is None and sa._queues is None
        assert await sa.ping(5.0) >= 0
    finally:
        await sa.close("done")
        await sb.close("done")
        server.close()


async def test_close_fails_queued_sends_and_ends_the_writer():
    sa, sb, server, _ = await _pair()
    try:
        fut = sa._enqueue(Reply(0, b"q" * (1 << 20)))
        await sa.close("test closes")
        with pytest.raises(ConnectionError):
            await asyncio.wait_for(fut, 5)
        await asyncio.sleep(0)
        assert sa._writer is None or sa._writer.done() or sa._writer.cancelling()
    finally:
        await sb.close("done")
        server.close()


async def test_signal_behaves_like_an_event_and_keeps_no_waiters_when_idle():
    sig = Signal()
    assert not sig.is_set() and sig._waiters is None
    waiters = [asyncio.ensure_future(sig.wait()) for _ in range(3)]
    await asyncio.sleep(0)
    assert len(sig._waiters) == 3
    sig.set()
    assert await asyncio.gather(*waiters) == [True, True, True]
    assert sig._waiters is None and sig.is_set()
    assert await sig.wait() is True            # stays set until cleared
    sig.clear()
    with pytest.raises(TimeoutError):          # a timed-out waiter leaves no storage
        await asyncio.wait_for(sig.wait(), 0.01)
    assert sig._waiters is None and not sig.is_set()
    waiter = asyncio.ensure_future(sig.wait())
    await asyncio.sleep(0)
    waiter.cancel()
    await asyncio.sleep(0)
    assert waiter.cancelled() and sig._waiters is None
