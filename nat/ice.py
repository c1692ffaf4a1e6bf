"""ICE links: frames over an aiortc data channel, hole-punched or relayed through TURN.

A data channel carries messages of bounded size (aiortc refuses anything larger than the
peer's advertised SCTP max message size, 64 KiB unless the SDP says otherwise), while mesh
frames reach ~1 MiB. So each frame is cut into chunks, each prefixed by one type byte, and
reassembled in order (the channel is reliable and ordered). The same byte also marks
keepalive pings, which double as RTT probes and as the only way to notice a dead path
quickly: aioice's consent checks take ~30 s, a flushed NAT mapping should cost less.

Sends are paced by the channel's ``bufferedAmount``: above a high-water mark a sender waits
for the ``bufferedamountlow`` event, for at most ``send_stall`` seconds, after which the
link is declared dead (a peer that stops acknowledging must not park senders forever).

aiortc is imported inside functions only: importing it costs about a second, and a node
whose peers are all reachable over TCP should never pay that.
"""

from __future__ import annotations

import asyncio
import logging
import re
import struct
import time
from dataclasses import dataclass
from typing import Any

from nat.iceservers import IceServer, to_rtc
from nat.link import KIND_ICE_DIRECT, KIND_ICE_RELAY, Buffers, Link, LinkClosed
from protocol.wire import DEFAULT_MAX_FRAME

log = logging.getLogger("sedma.ice")

#: Data-channel message size we send: within the SCTP default every peer accepts.
CHUNK_SIZE = 65536
_MORE, _END, _PING, _PONG, _BYE = 0, 1, 2, 3, 4
_TS = struct.Struct(">d")
#: Pause sending while this much is queued in SCTP; resume below the low mark.
BUFFER_HIGH = 1 << 20
BUFFER_LOW = 256 << 10
#: Received-but-unconsumed bytes tolerated before the link is closed (a data channel
#: cannot be paused, so an unread link must not grow memory without bound).
RECV_QUEUE_BYTES = 64 << 20


@dataclass
class IceTimers:
    """Liveness bounds of an established ICE link."""

    keepalive: float = 2.0       # seconds between pings
    idle_timeout: float = 10.0   # no message at all for this long: the path is gone
    send_stall: float = 30.0     # bufferedAmount not draining for this long: peer is gone
    close_timeout: float = 3.0   # bound on tearing down the peer connection


def split_frame(frame: Buffers, chunk_size: int = CHUNK_SIZE) -> list[bytes]:
    """Cut one frame into data-channel messages: type byte + at most ``chunk_size - 1`` bytes."""
    data = b"".join(frame) if len(frame) != 1 else bytes(frame[0])
    step = chunk_size - 1
    if len(data) <= step:
        return [bytes([_END]) + data]
    out = [bytes([_MORE]) + data[i:i + step] for i in range(0, len(data), step)]
    out[-1] = bytes([_END]) + out[-1][1:]
    return out


class Reassembler:
    """Rebuild frames from chunks, refusing any frame that grows past ``max_frame``."""

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._parts: list[bytes] = []
        self._size = 0

    def feed(self, kind: int, body: bytes) -> bytes | None:
        """Add one data chunk; return the frame it completes, if any."""
        self._size += len(body)
        if self._size > self.max_frame:
            raise LinkClosed(f"protocol error: frame exceeds {self.max_frame} bytes")
        self._parts.append(body)
        if kind != _END:
            return None
        frame = b"".join(self._parts)
        self._parts, self._size = [], 0
        return frame


class IceLink(Link):
    """One data channel (on its own RTCPeerConnection) carrying frames to one peer."""

    kind = KIND_ICE_DIRECT

    def __init__(self, pc: Any, channel: Any, timers: IceTimers | None = None,
                 max_frame: int = DEFAULT_MAX_FRAME) -> None:
        super().__init__()
        self.max_frame = max_frame
        self.timers = timers or IceTimers()
        self.pc = pc
        self.channel = channel
        self._queued = 0
        self._drained = asyncio.Event()
        self._drained.set()
        self._opened = asyncio.Event()
        self._send_lock = asyncio.Lock()
        self._reasm = Reassembler(max_frame)
        self._last_rx = time.monotonic()
        self._tasks: set[asyncio.Task] = set()
        self._tearing_down = False
        channel.bufferedAmountLowThreshold = BUFFER_LOW
        channel.on("message", self._on_message)
        channel.on("open", self._on_open)
        channel.on("close", lambda: self._mark_closed("data channel closed by peer"))
        channel.on("bufferedamountlow", self._drained.set)
        pc.on("connectionstatechange", self._on_pc_state)
        if channel.readyState == "open":
            self._on_open()

    # setup ------------------------------------------------------------------------
    async def wait_open(self, timeout: float) -> None:
        """Wait until the channel is open; LinkClosed (with why) on failure or timeout."""
        opened = asyncio.ensure_future(self._opened.wait())
        closed = asyncio.ensure_future(self._readable.wait())
        try:
            await asyncio.wait({opened, closed}, timeout=timeout,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            opened.cancel()
            closed.cancel()
        if self._opened.is_set() and not self.closed:
            return
        reason = self.close_reason or f"ICE did not connect within {timeout:.0f}s"
        raise LinkClosed(reason)

    def _on_open(self) -> None:
        if self._opened.is_set():
            return
        self._last_rx = time.monotonic()
        self._classify()
        self._opened.set()
        self._spawn(self._keepalive())

    def _classify(self) -> None:
        """Set ``kind`` from the nominated candidate pair: any relay end means TURN."""
        pair = selected_pair(self.pc)
        if pair is None:
            return
        local, remote = pair
        if "relay" in (local.type, remote.type):
            self.kind = KIND_ICE_RELAY
        self._remote = f"{remote.host}:{remote.port} ({local.type}->{remote.type})"

    def _on_pc_state(self) -> None:
        if self._tearing_down:
            return
        state = self.pc.connectionState
        if state in ("failed", "closed"):
            self._mark_closed(f"ICE connection {state}")

    # receive ----------------------------------------------------------------------
    def _on_message(self, msg: bytes | str) -> None:
        if self.closed or not isinstance(msg, bytes) or not msg:
            return
        self._last_rx = time.monotonic()
        kind, body = msg[0], msg[1:]
        if kind in (_MORE, _END):
            self._on_chunk(kind, body)
        elif kind == _PING:
            self._send_now(bytes([_PONG]) + body)
        elif kind == _PONG and len(body) == _TS.size:
            self.observe_rtt((time.monotonic() - _TS.unpack(body)[0]) * 1000)
        elif kind == _BYE:
            self._mark_closed(f"peer closed: {body.decode(errors='replace')}")

    def _on_chunk(self, kind: int, body: bytes) -> None:
        try:
            frame = self._reasm.feed(kind, body)
        except LinkClosed as exc:
            self._spawn(self.close(exc.reason))
            return
        if frame is None:
            return
        self._frames.append(frame)
        self._queued += len(frame)
        self._readable.set()
        if self._queued > RECV_QUEUE_BYTES:
            self._spawn(self.close(f"receiver overrun: {self._queued} bytes unread"))

    async def recv(self) -> bytes:
        frame = await self._next_frame()
        self._queued -= len(frame)
        return frame

    # send -------------------------------------------------------------------------
    async def send(self, frame: Buffers) -> None:
        size = sum(len(b) for b in frame)
        if size > self.max_frame:
            raise LinkClosed(f"frame of {size} bytes exceeds the {self.max_frame}-byte limit")
        async with self._send_lock:  # chunks of two frames must not interleave
            for chunk in split_frame(frame):
                await self._wait_drained()
                self._send_now(chunk)

    async def _wait_drained(self) -> None:
        """Backpressure: wait (bounded) while SCTP holds more than ``BUFFER_HIGH`` bytes."""
        if self.closed:
            raise LinkClosed(self.close_reason or "link closed")
        if self.channel.bufferedAmount <= BUFFER_HIGH:
            return
        self._drained.clear()
        try:
            await asyncio.wait_for(self._drained.wait(), self.timers.send_stall)
        except asyncio.TimeoutError:
            await self.close(f"send stalled: peer acknowledged nothing for "
                             f"{self.timers.send_stall:.0f}s")
        if self.closed:
            raise LinkClosed(self.close_reason or "link closed")

    def _send_now(self, data: bytes) -> None:
        if self.channel.readyState != "open":
            self._mark_closed(self.close_reason or "data channel closed")
            raise LinkClosed(self.close_reason or "data channel closed")
        self.channel.send(data)

    async def _keepalive(self) -> None:
        """Ping on a timer; close when nothing at all has arrived for ``idle_timeout``."""
        while not self.closed:
            await asyncio.sleep(self.timers.keepalive)
            idle = time.monotonic() - self._last_rx
            if idle > self.timers.idle_timeout:
                await self.close(f"no traffic from peer for {idle:.1f}s (path lost)")
                return
            try:
                self._send_now(bytes([_PING]) + _TS.pack(time.monotonic()))
            except LinkClosed:
                return

    # close ------------------------------------------------------------------------
    async def close(self, reason: str = "closed locally") -> None:
        if self._tearing_down:
            return
        self._tearing_down = True
        say_bye = self.close_reason is None and self.channel.readyState == "open"
        self._mark_closed(reason)  # before the goodbye: the peer's reaction must not win
        if say_bye:
            self.channel.send(bytes([_BYE]) + reason.encode()[:200])
            await asyncio.sleep(0.05)  # let the goodbye leave before SCTP shuts down
        try:
            await asyncio.wait_for(self.pc.close(), self.timers.close_timeout)
        except (asyncio.TimeoutError, Exception) as exc:  # teardown must not raise
            log.debug("peer connection close: %r", exc)
        for task in list(self._tasks):
            if task is not asyncio.current_task():
                task.cancel()

    def _mark_closed(self, reason: str) -> None:
        """Record why the link ended and wake every waiter; teardown follows in a task."""
        if self.close_reason is None:
            self.close_reason = reason
            log.info("ICE link to %s closed: %s", self._remote, reason)
        if not self._tearing_down:
            self._spawn(self.close(reason))
        self._readable.set()
        self._drained.set()

    def _spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def selected_pair(pc: Any) -> tuple[Any, Any] | None:
    """(local, remote) aioice candidates of the nominated pair, or None if not known yet.

    aiortc exposes no public accessor, so this reaches through the ICE transport to the
    aioice connection; any change there degrades to None rather than an exception.
    """
    try:
        connection = pc.sctp.transport.transport._connection
        pair = connection._nominated.get(1)
        return (pair.local_candidate, pair.remote_candidate) if pair else None
    except AttributeError:
        return None


def candidate_types(sdp: str) -> list[str]:
    """The sorted distinct candidate types (host, srflx, relay) an SDP offers."""
    return sorted(set(re.findall(r"^a=candidate:.* typ (\w+)", sdp, re.MULTILINE)))


def new_peer_connection(servers: list[IceServer]) -> Any:
    """An RTCPeerConnection with an explicit (possibly empty) ICE server list."""
    from aiortc import RTCConfiguration, RTCPeerConnection

    return RTCPeerConnection(RTCConfiguration(iceServers=to_rtc(servers)))


async def make_offer(servers: list[IceServer], timers: IceTimers) -> tuple[IceLink, str]:
    """Dialling side: a channel plus the SDP offer with every gathered candidate."""
    pc = new_peer_connection(servers)
    link = IceLink(pc, pc.createDataChannel("sedma", ordered=True), timers)
    try:
        await pc.setLocalDescription(await pc.createOffer())
    except BaseException:
        await link.close("gathering failed")
        raise
    return link, pc.localDescription.sdp


async def accept_answer(link: IceLink, sdp: str) -> None:
    """Dialling side: apply the peer's answer, which starts connectivity checks."""
    from aiortc import RTCSessionDescription

    await link.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))


async def make_answer(servers: list[IceServer], offer_sdp: str, timers: IceTimers
                      ) -> tuple[asyncio.Future, Any, str]:
    """Answering side: returns (future of the IceLink once the peer's channel arrives, pc, SDP)."""
    from aiortc import RTCSessionDescription

    pc = new_peer_connection(servers)
    loop = asyncio.get_running_loop()
    fut: asyncio.Future = loop.create_future()

    @pc.on("datachannel")
    def _on_channel(channel: Any) -> None:
        if not fut.done():
            fut.set_result(IceLink(pc, channel, timers))

    try:
        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
        await pc.setLocalDescription(await pc.createAnswer())
    except BaseException:
        await asyncio.wait_for(pc.close(), timers.close_timeout)
        raise
    return fut, pc, pc.localDescription.sdp
