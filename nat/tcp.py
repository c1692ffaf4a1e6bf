"""Direct TCP links: length-prefixed frames over a stream socket.

Implemented on ``asyncio.BufferedProtocol`` rather than streams so received bytes go
straight into the sans-I/O :class:`~protocol.wire.FrameDecoder` -- the bulk of a big frame
straight into its own buffer, with no intermediate bytes object -- and outgoing frames are
gathered with ``writelines`` without concatenation. Backpressure both ways: ``send`` waits while the
kernel buffer is full, and reading pauses while too many frames wait to be consumed.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from typing import Awaitable, Callable

from nat.link import KIND_TCP, Buffers, Link, LinkClosed
from protocol.errors import FrameError
from protocol.framepool import thread_pool
from protocol.wire import DEFAULT_MAX_FRAME, HEADER_SIZE, FrameDecoder, frame_header

log = logging.getLogger("sedma.tcp")

#: Frames received but not yet consumed before we stop reading from the socket.
RECV_QUEUE_FRAMES = 8
WRITE_HIGH_WATER = 4 << 20
#: A peer that drains none of our send buffer for this long is gone (or hostile).
SEND_STALL_TIMEOUT = 60.0
#: Connections the kernel completes and queues for us before our loop accepts them
#: (the kernel caps it at net.core.somaxconn, 4096 here). asyncio's default is 100: a
#: daemon whose loop is busy (its own start, a storm of 99 peers joining at once on one
#: machine) had further SYNs dropped, and their dials timed out (bench/backlog.py).
#: Costs nothing until connections actually wait.
LISTEN_BACKLOG = 1024


class TcpLink(Link, asyncio.BufferedProtocol):
    """One TCP connection carrying frames."""

    kind = KIND_TCP

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        Link.__init__(self)
        self.max_frame = max_frame
        # big received frames go into reused buffers of the loop thread's pool; the
        # reader gives each back (recycle) once it has opened it
        self._pool = thread_pool(max_frame)
        self._decoder = FrameDecoder(max_frame, self._pool)
        self._queued = 0   # bytes handed to the transport (frames and their headers)
        self._transport: asyncio.Transport | None = None
        self._writable = asyncio.Event()
        self._writable.set()
        self._connected = asyncio.Event()
        self._reading_paused = False

    # asyncio.Protocol -------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = transport.get_extra_info("peername")
        self._remote = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self._connected.set()

    def get_buffer(self, sizehint: int) -> memoryview:
        # the rest of a big frame is received in place (FrameDecoder.get_buffer)
        return self._decoder.get_buffer()

    def buffer_updated(self, nbytes: int) -> None:
        try:
            frames = self._decoder.buffer_updated(nbytes)
        except FrameError as exc:
            self._abort(f"protocol error: {exc}")
            return
        self._deliver(frames)

    def data_received(self, data: bytes) -> None:
        try:
            frames = self._decoder.feed(data)
        except FrameError as exc:
            self._abort(f"protocol error: {exc}")
            return
        self._deliver(frames)

    def _deliver(self, frames: list) -> None:
        self._frames.extend(frames)
        if frames:
            self._readable.set()
        if len(self._frames) >= RECV_QUEUE_FRAMES and not self._reading_paused:
            self._reading_paused = True
            self._transport.pause_reading()

    def eof_received(self) -> bool:
        reason = "peer closed the connection"
        if self._decoder.buffered:
            reason = f"peer closed mid-frame ({self._decoder.buffered} bytes pending)"
        self._mark_closed(reason)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._mark_closed(f"connection lost: {exc}" if exc else "connection closed")

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    # Link ---------------------------------------------------------------------------
    async def send(self, frame: Buffers) -> None:
        if self.closed:
            raise LinkClosed(self.close_reason or "link closed")
        size = sum(len(b) for b in frame)
        self._transport.writelines([frame_header(size, self.max_frame), *frame])
        self._queued += HEADER_SIZE + size
        if not self._writable.is_set():
            try:
                await asyncio.wait_for(self._writable.wait(), SEND_STALL_TIMEOUT)
            except asyncio.TimeoutError:
                self._abort(f"peer read nothing for {SEND_STALL_TIMEOUT:.0f}s (send stalled)")
            if self.closed:
                raise LinkClosed(self.close_reason or "link closed")

    async def recv(self) -> bytes:
        frame = await self._next_frame()
        if self._reading_paused and len(self._frames) < RECV_QUEUE_FRAMES // 2:
            self._reading_paused = False
            if not self.closed:
                self._transport.resume_reading()
        return frame

    def queued_bytes(self) -> int:
        return self._queued

    def written_bytes(self) -> int:
        """uvloop's ``writelines`` keeps references to the frame's buffers (no copy)
        until libuv has written them; ``get_write_buffer_size`` is exactly the bytes not
        yet written (uvloop: its buffer plus libuv's write queue; asyncio: the unsent tail
        of its own copy), so everything before ``queued - unsent`` is in the kernel. A
        closed link's buffers are never declared free."""
        transport = self._transport
        if transport is None or self.closed or transport.is_closing():
            return -1
        return self._queued - transport.get_write_buffer_size()

    def recycle(self, frame: object) -> None:
        self._pool.give(frame)

    async def close(self, reason: str = "closed locally") -> None:
        """Close now. Data still unsent is dropped (abort) rather than held until TCP gives
        up, which for a dead peer takes many minutes and keeps the socket and buffer."""
        transport = self._transport
        if transport is not None and not transport.is_closing():
            if transport.get_write_buffer_size():
                transport.abort()
            else:
                transport.close()
        self._mark_closed(reason)

    # internals ----------------------------------------------------------------------
    def _abort(self, reason: str) -> None:
        log.warning("closing link to %s: %s", self._remote, reason)
        self._mark_closed(reason)
        if self._transport is not None:
            self._transport.abort()

    def _mark_closed(self, reason: str) -> None:
        if self.close_reason is None:
            self.close_reason = reason
        self._readable.set()
        self._writable.set()


async def dial_tcp(host: str, port: int, timeout: float = 5.0,
                   max_frame: int = DEFAULT_MAX_FRAME) -> TcpLink:
    """Open a TCP link to ``host:port`` within ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    try:
        _, link = await asyncio.wait_for(
            loop.create_connection(lambda: TcpLink(max_frame), host, port), timeout)
    except asyncio.TimeoutError:
        raise LinkClosed(f"connect to {host}:{port} timed out after {timeout}s") from None
    except OSError as exc:
        kind = ConnectRefused if _refused(exc) else LinkClosed
        raise kind(f"connect to {host}:{port} failed: {exc.strerror or exc}") from None
    return link


class ConnectRefused(LinkClosed):
    """The address answered that nothing listens there (a TCP reset): the host is up, the
    daemon is not. Unlike a timeout this is an answer, so callers need not wait longer."""


def _refused(exc: OSError) -> bool:
    return isinstance(exc, ConnectionRefusedError) or exc.errno == errno.ECONNREFUSED


async def listen_tcp(host: str, port: int, on_link: Callable[[TcpLink], Awaitable[None]],
                     max_frame: int = DEFAULT_MAX_FRAME) -> asyncio.Server:
    """Accept TCP links on ``host:port``; ``on_link`` runs as a task for each one."""
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task] = set()

    def factory() -> TcpLink:
        link = TcpLink(max_frame)
        task = loop.create_task(_after_connect(link, on_link))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        return link

    return await loop.create_server(factory, host, port, reuse_address=True,
                                    backlog=LISTEN_BACKLOG)


async def _after_connect(link: TcpLink, on_link) -> None:
    await link._connected.wait()
    try:
        await on_link(link)
    except Exception:
        log.exception("handler for link from %s failed", link.remote)
        await link.close("handler failed")
