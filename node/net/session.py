"""A session: one encrypted, authenticated link to one peer, carrying typed messages.

The session owns the link's two directions. Outgoing messages are cut into fragments
(:mod:`protocol.framing`) and a single writer task interleaves them: small messages
(gossip, replies, pings) always go before the next fragment of a bulk transfer, so a
64 MiB weight block cannot delay a failure-detector probe by more than one fragment.
A small message that finds nothing queued and nothing being written skips the writer
task and goes to the link from its sender (one task wake-up less per request or reply).
Incoming frames are reassembled and decoded; a protocol error closes the link with a
logged reason and never reaches the rest of the daemon.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from nat.link import Link, LinkClosed, Signal
from nat.secure import SecureLink
from node.net.opening import open_records
from node.runtime import spans
from node.runtime.outcomes import ignore_outcome
from protocol.errors import FrameError, ProtocolError, RequestDecodeError
from protocol.framing import (DEFAULT_MAX_MESSAGE, PROCESS_BUDGET, ByteBudget, Reassembler,
                              fragments)
from protocol.handshake import (MAX_HANDSHAKE_MESSAGE, MAX_NOISE_MESSAGE as RECORD, Hello,
                                HandshakeError, NoiseHandshake)
from protocol.identity import Identity
from protocol.messages import decode_message_on_loop, encode_message
from protocol.rpc import Ping, Reply

log = logging.getLogger("sedma.session")

#: A message whose payload is at most this size is "control" and jumps the bulk queue.
CONTROL_BYTES = 64 << 10
HANDSHAKE_TIMEOUT = 5.0
#: The reader hands the event loop back after this many bytes of queued frames (one full
#: frame): a link's queue holds up to 64 MiB, and copying all of it in one go stalls the
#: loop ~50 ms. (A big message's records are opened off the loop, which suspends the
#: reader anyway: :mod:`node.net.opening`, where the slow opening of a 1 GiB job's share
#: was traced to the kernel zeroing its fresh pages.)
READ_YIELD_BYTES = 1 << 20
#: Likewise the writer: a send need not suspend while the transport takes bytes, and each
#: frame is sealed (AES-GCM) on the loop, so a 500 MB share written in one go held the
#: loop for 70-150 ms (tests/test_loop_lag.py).
WRITE_YIELD_BYTES = 4 << 20
#: Bulk messages the writer has started and not finished, at most. Each one is a partial
#: message in the peer's reassembler, which closes the link beyond
#: ``DEFAULT_MAX_STREAMS`` (64) of them: a coordinator fanning one request out to 16
#: blocks on one peer with 4 clients in flight had 64+ started at once and lost the link
#: (bench/stream.py at N=16384). The rest wait whole, in order, costing the peer nothing.
#: A one-frame bulk message is never partial there, so it is not held back (a 100 KiB
#: request must not wait behind 16 block copies).
OPEN_BULK = 16

Handler = Callable[["Session", Any], Awaitable[None]]


class RemoteError(Exception):
    """The peer answered a request with an error."""


@dataclass
class _Outgoing:
    frames: collections.deque  # of frames, each a list of buffer views (nothing copied)
    done: asyncio.Future


class _Queues:
    """What waits for the writer: control messages, bulk messages in turn, bulk not started."""

    __slots__ = ("control", "bulk", "bulk_waiting")

    def __init__(self) -> None:
        self.control: collections.deque[_Outgoing] = collections.deque()
        self.bulk: collections.deque[_Outgoing] = collections.deque()          # started, in turn
        self.bulk_waiting: collections.deque[_Outgoing] = collections.deque()  # not started

    def __bool__(self) -> bool:
        return bool(self.control or self.bulk or self.bulk_waiting)


@dataclass
class SessionStats:
    sent_bytes: int = 0
    recv_bytes: int = 0
    sent_messages: int = 0
    recv_messages: int = 0
    #: messages by type tag, sent and received (what an idle mesh spends its CPU on)
    sent_by_tag: collections.Counter = field(default_factory=collections.Counter)
    recv_by_tag: collections.Counter = field(default_factory=collections.Counter)


class Session:
    """An authenticated, message-level conversation with one peer over one link."""

    def __init__(self, link: Link, local: Hello, remote: Hello, *, initiator: bool,
                 max_message: int = DEFAULT_MAX_MESSAGE,
                 budget: ByteBudget = PROCESS_BUDGET) -> None:
        self.link = link
        self.local = local
        self.remote = remote
        self.initiator = initiator
        self.peer_id = remote.node_id
        self.stats = SessionStats()
        self._reassembler = Reassembler(max_message=max_message, budget=budget)
        self._sid = itertools.count(1)
        self._rid = itertools.count(1)
        self._pending: dict[int, asyncio.Future] = {}
        #: The writer's queues and task exist only while something is queued: most links
        #: of an idle mesh send their few small messages directly (see send), and three
        #: empty deques plus a parked writer task cost ~3.5 KB per connected peer.
        self._queues: _Queues | None = None
        self._writer: asyncio.Task | None = None
        self._current: _Outgoing | None = None   # the message the writer is sending now
        #: Tasks inside a direct send (see send); True once close() interrupted one.
        self._sending: dict[asyncio.Task, bool] = {}
        self._reader: asyncio.Task | None = None
        self.closed = Signal()
        self.close_reason = ""

    # lifecycle ----------------------------------------------------------------------
    def start(self, handler: Handler) -> None:
        """Run the reader; ``handler`` receives every non-reply message. The writer task
        runs only while messages are queued (see :meth:`_queue`)."""
        loop = asyncio.get_running_loop()
        self._reader = loop.create_task(self._read_loop(handler))
        if self._queues:             # queued before start: sent now, in order
            self._writer = loop.create_task(self._write_loop())

    async def close(self, reason: str) -> None:
        """Close the link; fail pending requests and queued sends with ``reason``."""
        if self.closed.is_set():
            return
        self.close_reason = reason
        self.closed.set()
        self._reassembler.discard()   # partial messages give their bytes back
        await self.link.close(reason)
        err = LinkClosed(reason)
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(err)
        self._pending.clear()
        queues, self._queues = self._queues, None
        unsent = [*queues.control, *queues.bulk, *queues.bulk_waiting] if queues else []
        if self._current is not None:
            unsent.append(self._current)
        for out in unsent:
            if not out.done.done():
                out.done.set_exception(err)
        current = asyncio.current_task()
        for task in list(self._sending):     # senders waiting inside link.send
            if task is not current:
                self._sending[task] = True
                task.cancel()
        for task in (self._reader, self._writer):
            if task is not None and task is not current:
                task.cancel()

    # sending ------------------------------------------------------------------------
    def next_rid(self) -> int:
        return next(self._rid)

    async def send(self, msg: Any) -> None:
        """Send one message; returns when its last fragment is handed to the link.

        A small message finding nothing queued and nothing being written goes to the link
        from the caller itself instead of through the writer task: the same sealing and
        order (frames are sealed and written without an await in between), one task wake-up
        less, which is a good part of a small request's latency on a busy machine.
        """
        if self.closed.is_set():
            raise LinkClosed(self.close_reason or "session closed")
        parts = encode_message(msg)
        self.stats.sent_by_tag[msg.TAG] += 1
        size = sum(len(p) for p in parts)
        frames = fragments(next(self._sid) & 0xFFFFFFFF, parts, self._fragment_size())
        if size > CONTROL_BYTES or not self._idle():
            await self._queue(frames, size)
            return
        frames = list(frames)
        if len(frames) > 1:    # a link with small frames: keep the fragments together
            await self._queue(frames, size)
            return
        frame = frames[0]
        await self._send_now(frame)
        self.stats.sent_bytes += sum(len(b) for b in frame)
        self.stats.sent_messages += 1

    async def _send_now(self, frame: list) -> None:
        """Hand one frame to the link from the calling task. If the link makes it wait
        (a full send buffer) and the session closes meanwhile, :meth:`close` interrupts
        the wait and the sender gets LinkClosed, as a queued message's sender would."""
        task = asyncio.current_task()
        self._sending[task] = False
        try:
            await self.link.send(frame)
        except asyncio.CancelledError:
            if self._sending.get(task):        # close() interrupted the send
                task.uncancel()
                raise LinkClosed(self.close_reason or "session closed") from None
            raise
        except LinkClosed as exc:
            self._sending.pop(task, None)
            await self.close(exc.reason)
            raise
        finally:
            self._sending.pop(task, None)

    def _idle(self) -> bool:
        """Nothing queued and the writer is not in the middle of a frame."""
        return not self._queues and self._current is None

    def _fragment_size(self) -> int:
        return min(self.link.max_frame - 64, 1 << 20)

    def _enqueue(self, msg: Any) -> asyncio.Future:
        """Queue one message for the writer; the future resolves once it is sent."""
        if self.closed.is_set():
            raise LinkClosed(self.close_reason or "session closed")
        parts = encode_message(msg)
        self.stats.sent_by_tag[msg.TAG] += 1
        size = sum(len(p) for p in parts)
        sid = next(self._sid) & 0xFFFFFFFF   # u32 on the wire; ids far apart never collide
        return self._queue(fragments(sid, parts, self._fragment_size()), size)

    def _queue(self, frames, size: int) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        out = _Outgoing(collections.deque(frames), loop.create_future())
        queues = self._queues
        if queues is None:
            queues = self._queues = _Queues()
        if size <= CONTROL_BYTES:
            queues.control.append(out)
        elif len(out.frames) == 1:   # never partial at the peer: takes its turn at once
            queues.bulk.append(out)
        else:
            queues.bulk_waiting.append(out)
        if self._writer is None and self._reader is not None:   # started (see start)
            self._writer = loop.create_task(self._write_loop())   # ends once all is sent
        return out.done

    async def request(self, msg: Any, timeout: float, sent: asyncio.Future | None = None) -> Any:
        """Send a request (a message with ``rid``) and return its reply's value.

        ``sent``, if given, resolves once the request is handed to the link (a caller can
        hold back CPU-heavy work that would slow the sealing of a big request).
        ``asyncio.timeout`` rather than ``wait_for``: on Python 3.11 wait_for wraps the
        send-and-wait in a task of its own, one more task and wake-up per request."""
        fut = asyncio.get_running_loop().create_future()
        self._pending[msg.rid] = fut
        try:
            async with asyncio.timeout(timeout):
                try:
                    await self.send(msg)
                finally:
                    if sent is not None and not sent.done():
                        sent.set_result(None)
                spans.mark("session.sent")
                reply: Reply = await fut
        except TimeoutError:
            raise TimeoutError(f"{type(msg).TAG} to {self.peer_id[:8]} timed out after {timeout}s") from None
        finally:
            self._pending.pop(msg.rid, None)
        if reply.error is not None:
            raise RemoteError(reply.error)
        return reply.value

    async def reply(self, rid: int, value: Any = None, error: str | None = None) -> None:
        """Answer a request; a closed link just drops the answer (the asker fails over)."""
        try:
            await self.send(Reply(rid, value, error))
        except LinkClosed:
            log.debug("reply %d to %s dropped: link closed", rid, self.peer_id[:8])

    async def ping(self, timeout: float = 5.0) -> float:
        """Measure one round trip in milliseconds and feed it to the link's estimate."""
        start = time.perf_counter()
        await self.request(Ping(self.next_rid(), time.time()), timeout)
        rtt = (time.perf_counter() - start) * 1000
        self.link.observe_rtt(rtt)
        return rtt

    async def _write_loop(self) -> None:
        """Send what is queued, in the order of :meth:`_next_outgoing`; end once nothing
        is left (the queues go with it). No await lies between finding the queues empty
        and ending, so a message queued meanwhile always finds either this writer still
        looping or none (and :meth:`_queue` starts one)."""
        since_yield = 0
        try:
            while not self.closed.is_set():
                out = self._next_outgoing()
                if out is None:
                    self._queues = None
                    return
                self._current = out
                frame = out.frames.popleft()
                await self.link.send(frame)
                self._current = None
                sent = sum(len(b) for b in frame)
                frame = None   # views of the sender's buffer (a client's shared W): let go
                self.stats.sent_bytes += sent
                since_yield += sent
                if since_yield >= WRITE_YIELD_BYTES:
                    since_yield = 0
                    await asyncio.sleep(0)
                if not out.frames:
                    self.stats.sent_messages += 1
                    if not out.done.done():
                        out.done.set_result(None)
                out = None     # nor hold the last message while waiting for the next one
        except LinkClosed as exc:
            await self.close(exc.reason)
        except Exception as exc:  # never leave senders waiting on a dead writer
            log.exception("writer to %s failed", self.peer_id[:8])
            await self.close(f"writer failed: {exc!r}")
        finally:
            if self._writer is asyncio.current_task():
                self._writer = None

    def _next_outgoing(self) -> _Outgoing | None:
        """Control messages first; bulk messages take turns fragment by fragment, at most
        ``OPEN_BULK`` of them started at a time (the others start as those finish)."""
        queues = self._queues
        if queues is None:
            return None
        while len(queues.bulk) < OPEN_BULK and queues.bulk_waiting:
            queues.bulk.append(queues.bulk_waiting.popleft())
        if queues.control:   # whole, in order: one spanning several frames stays first
            out = queues.control[0]
            if len(out.frames) <= 1:
                queues.control.popleft()
            return out
        if queues.bulk:
            out = queues.bulk.popleft()
            if len(out.frames) > 1:
                queues.bulk.append(out)
            return out
        return None

    # receiving ----------------------------------------------------------------------
    async def _read_loop(self, handler: Handler) -> None:
        since_yield = 0
        # An encrypted link's records are opened straight into the message buffer
        # (Reassembler.filling, _open_sealed): no opened copy of each frame, no second
        # copy; a big message's on the opener thread (node.net.opening).
        sealed = isinstance(self.link, SecureLink)
        try:
            while True:
                if sealed:
                    frame = await self.link.recv_sealed()
                    size = len(frame) - self.link.cipher.overhead * -(-len(frame) // RECORD)
                else:
                    frame = await self.link.recv()
                    size = len(frame)
                self.stats.recv_bytes += size
                if size > CONTROL_BYTES:
                    spans.mark("link.bulk_in")
                since_yield += size
                if since_yield >= READ_YIELD_BYTES:   # recv() need not suspend: let others run
                    since_yield = 0
                    await asyncio.sleep(0)
                if sealed:
                    try:
                        payload = await self._open_sealed(frame)
                    except FrameError as exc:
                        await self.link.fail(f"protocol error: {exc}")
                        raise LinkClosed(f"protocol error: {exc}") from None
                else:
                    payload = self._reassembler.feed(frame)
                # opened or copied into the message buffer, no view of it kept: the link
                # may put the next frame in it (protocol.framepool)
                self.link.recycle(frame)
                frame = None
                if payload is None:
                    continue
                try:
                    msg = await decode_message_on_loop(payload)
                except RequestDecodeError as exc:
                    self._refuse(exc)
                    continue
                self.stats.recv_messages += 1
                self.stats.recv_by_tag[msg.TAG] += 1
                await self._dispatch(msg, handler)
        except LinkClosed as exc:
            await self.close(exc.reason)
        except ProtocolError as exc:
            log.warning("closing link to %s (%s): %s", self.peer_id[:8], self.link.remote, exc)
            await self.close(f"protocol error: {exc}")
        except Exception as exc:   # a bug: a reader that died silently left a link no one
            # read (its peer's pings timed out: members suspected each other). Say so, close.
            log.exception("reader of the link to %s failed", self.peer_id[:8])
            await self.close(f"reader failed: {exc!r}")

    async def _open_sealed(self, frame: bytes | bytearray | memoryview
                           ) -> bytearray | Any | None:
        """Feed one sealed frame to the reassembler; a big message's records are opened
        off the event loop (:mod:`node.net.opening`: its fresh pages fault there)."""
        with self._reassembler.filling(frame, self.link.cipher) as fill:
            await open_records(fill)
            if self.closed.is_set():    # closed while the thread opened it: drop it
                raise LinkClosed("closed while a frame was being opened")
        return self._reassembler.complete(fill)

    def _refuse(self, exc: RequestDecodeError) -> None:
        """Tell the asker its request could not be read (a newer peer's message type, a
        bad field) and read on: the frame was whole, so the link is still in step. The
        answer is queued, not awaited: reads never wait on writes (see :meth:`_dispatch`)."""
        log.warning("refused an unreadable request from %s: %s", self.peer_id[:8], exc)
        try:
            self._enqueue(Reply(exc.rid, error=f"cannot read the request: {exc}")
                          ).add_done_callback(ignore_outcome)
        except LinkClosed:
            pass

    async def _dispatch(self, msg: Any, handler: Handler) -> None:
        if isinstance(msg, Reply):
            fut = self._pending.get(msg.rid)
            if fut is not None and not fut.done():
                fut.set_result(msg)
            return
        if isinstance(msg, Ping):
            # Queue the answer and read on: waiting for it to be written would stall this
            # reader behind our own bulk sends, and two peers streaming at each other then
            # each wait for the other to read -- a deadlock. Reads never wait on writes.
            try:
                self._enqueue(Reply(msg.rid, msg.sent)).add_done_callback(ignore_outcome)
            except LinkClosed:
                pass
            return
        await handler(self, msg)



async def handshake(link: Link, identity: Identity, name: str, addresses: list[str],
                    keys: list[bytes], *, initiator: bool,
                    timeout: float = HANDSHAKE_TIMEOUT) -> Session:
    """Run the Noise handshake over a fresh link; return the encrypted session or raise.

    ``keys`` is the cluster keyring (first key dials, any key is accepted; empty: an
    open mesh). See :mod:`protocol.handshake` for what is proven and why.
    """
    try:
        return await asyncio.wait_for(
            _handshake(link, NoiseHandshake(identity, name, addresses, keys,
                                            initiator=initiator)), timeout)
    except asyncio.TimeoutError:
        await link.close("handshake timed out")
        raise HandshakeError(f"handshake with {link.remote} timed out after {timeout}s") from None
    except (ProtocolError, LinkClosed) as exc:
        await link.close(f"handshake failed: {exc}")
        raise


async def _handshake(link: Link, hs: NoiseHandshake) -> Session:
    if hs.initiator:
        await link.send([hs.first()])
        await link.send([hs.on_response(await _recv_small(link))])
    else:  # nothing goes back to a dialler that did not prove a key of our keyring
        await link.send([hs.on_first(await _recv_small(link))])
        hs.on_final(await _recv_small(link))
    secure = SecureLink(link, hs.cipher())
    return Session(secure, hs.hello, hs.remote, initiator=hs.initiator)


async def _recv_small(link: Link) -> bytes:
    """One handshake message; nothing unauthenticated may make us hold more than 8 KiB."""
    frame = await link.recv()
    if len(frame) > MAX_HANDSHAKE_MESSAGE:
        raise HandshakeError(f"handshake message of {len(frame)} bytes "
                             f"(limit {MAX_HANDSHAKE_MESSAGE})")
    return frame
