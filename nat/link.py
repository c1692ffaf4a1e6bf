"""The ``Link`` interface: how the mesh moves frames between two nodes.

The mesh never touches sockets. It hands a link whole frames (each a list of buffers whose
concatenation is the frame) and reads frames back, in order, reliably. A direct TCP link
(:mod:`nat.tcp`) and an ICE data-channel link (:mod:`nat.ice`) are interchangeable behind
this interface, which is what lets the connection policy pick whichever one works.
"""

from __future__ import annotations

import abc
import asyncio
import collections
from typing import Sequence

Buffers = Sequence[bytes | memoryview]

#: Link kinds as reported in ``sedma peers``.
KIND_TCP = "tcp"
KIND_ICE_DIRECT = "ice-direct"
KIND_ICE_RELAY = "ice-relay"


class Signal:
    """A flag tasks can wait on: the part of :class:`asyncio.Event` a link or session uses.

    Why not ``asyncio.Event``: each one allocates a 624-byte waiter deque up front, and a
    connected peer had six of them (~4.5 KB per peer, most never waited on: an idle
    daemon at 100 members carried ~0.5 MB of empty deques). A signal holds its waiters'
    futures in a list made by the first ``wait`` and dropped once it is woken, so an idle
    one is two slots. Same semantics as ``asyncio.Event``: ``set`` wakes every waiter and
    stays set until ``clear``; a cancelled waiter just leaves.
    """

    __slots__ = ("_value", "_waiters")

    def __init__(self) -> None:
        self._value = False
        self._waiters: list[asyncio.Future] | None = None

    def is_set(self) -> bool:
        return self._value

    def set(self) -> None:
        if self._value:
            return
        self._value = True
        waiters, self._waiters = self._waiters, None
        for fut in waiters or ():
            if not fut.done():
                fut.set_result(True)

    def clear(self) -> None:
        self._value = False

    async def wait(self) -> bool:
        if self._value:
            return True
        fut = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(fut)
        try:
            return await fut
        finally:
            waiters = self._waiters
            if waiters is not None:      # cancelled or timed out before set(): leave
                try:
                    waiters.remove(fut)
                except ValueError:
                    pass
                if not waiters:
                    self._waiters = None


class LinkClosed(ConnectionError):
    """The link is closed; ``reason`` says why (peer hung up, protocol error, timeout...)."""

    def __init__(self, reason: str = "link closed") -> None:
        super().__init__(reason)
        self.reason = reason


class Link(abc.ABC):
    """A reliable, ordered, message-preserving pipe of frames to one peer."""

    #: One of ``tcp``, ``ice-direct``, ``ice-relay``.
    kind: str = "none"
    #: Largest frame this link accepts, in bytes.
    max_frame: int

    def __init__(self) -> None:
        self._rtt_ms: float | None = None
        self._remote = "?"
        #: Frames received and not yet handed to ``recv``; ``_readable`` wakes a waiter.
        self._frames: collections.deque[bytes] = collections.deque()
        self._readable = Signal()
        #: Why the link ended (None while it is open); set once, by whoever saw it first.
        self.close_reason: str | None = None

    @abc.abstractmethod
    async def send(self, frame: Buffers) -> None:
        """Queue one frame; wait while the link's send buffer is full (backpressure).

        Raises :class:`LinkClosed` if the link is or becomes closed.
        """

    @abc.abstractmethod
    async def recv(self) -> bytes:
        """Return the next frame; raise :class:`LinkClosed` once the link is closed."""

    @abc.abstractmethod
    async def close(self, reason: str = "closed locally") -> None:
        """Close the link (idempotent); pending and future ``recv`` calls raise."""

    # Buffer reuse (protocol.framepool) ---------------------------------------------
    def queued_bytes(self) -> int:
        """Bytes of frames this link has queued so far, a position in its outgoing stream.
        A link that is done with a frame's buffers when ``send`` returns (it copied them,
        like the ICE link) keeps the default 0."""
        return 0

    def written_bytes(self) -> int:
        """How far the outgoing stream no longer needs the callers' buffers: a frame
        queued ending at :meth:`queued_bytes` ``m`` may be reused once this reaches ``m``
        (never, once the link closed)."""
        return 0

    def recycle(self, frame: object) -> None:
        """A frame :meth:`recv` returned, which its reader has finished with and holds no
        view of: its buffer may take the next frame. Optional (unrecycled frames are just
        garbage); the default does nothing."""

    async def _next_frame(self) -> bytes:
        """The oldest received frame, waiting for one; LinkClosed once closed and drained."""
        while not self._frames:
            if self.closed:
                raise LinkClosed(self.close_reason or "link closed")
            self._readable.clear()
            await self._readable.wait()
        return self._frames.popleft()

    @property
    def closed(self) -> bool:
        """True once the link can carry no more frames."""
        return self.close_reason is not None

    @property
    def remote(self) -> str:
        """Human-readable remote address, for logs."""
        return self._remote

    @property
    def rtt_ms(self) -> float | None:
        """Smoothed round-trip time in milliseconds, or None before the first sample."""
        return self._rtt_ms

    def observe_rtt(self, sample_ms: float) -> None:
        """Fold one RTT sample into the smoothed estimate (RFC 6298 style, alpha 1/8)."""
        if self._rtt_ms is None:
            self._rtt_ms = sample_ms
        else:
            self._rtt_ms += (sample_ms - self._rtt_ms) / 8
