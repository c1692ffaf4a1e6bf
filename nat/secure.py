"""An encrypted link: every frame of an inner link sealed as consecutive Noise records.

The cipher sits at the link boundary so nothing above it changes: a :class:`SecureLink`
is a :class:`~nat.link.Link` like the TCP or ICE link it wraps. Each frame (a session
fragment, up to ~1 MiB) is cut into records of one Noise message each (at most 65,535
bytes: 65,519 of plaintext and the 16-byte tag), and the records of one frame travel
together as one inner frame, so the link handles as many frames as it did in plaintext
and the only added work is the cipher itself (records are fixed-size, so the receiver
cuts them apart without any header). ``max_frame`` shrinks by the tags so the sealed
frame still fits the inner link. A record that fails authentication — altered, replayed,
reordered, dropped, truncated — closes the link with that reason in the log; the rest of
the daemon only sees the link close.

Order matters (Noise nonces count records): ``send`` encrypts and hands the record to the
inner link without awaiting in between, so records reach the wire in nonce order even if
two tasks sent at once; the session has a single writer anyway.
"""

from __future__ import annotations

import logging

from nat.link import Buffers, Link, LinkClosed
from protocol.errors import FrameError
from protocol.framepool import LentFrames, thread_pool
from protocol.handshake import TransportCipher, max_plaintext, sealed_size

log = logging.getLogger("sedma.secure")


class SecureLink(Link):
    """The encrypted view of an authenticated inner link."""

    def __init__(self, inner: Link, cipher: TransportCipher) -> None:
        super().__init__()
        self.inner = inner
        self.cipher = cipher
        self.max_frame = max_plaintext(inner.max_frame)
        # big frames are sealed into reused buffers (no zero-fill, no fresh pages); one
        # goes back to the pool only once the inner link's transport has written it
        self._lent = LentFrames(thread_pool(inner.max_frame))

    # Link ---------------------------------------------------------------------------
    async def send(self, frame: Buffers) -> None:
        if self.closed:
            raise LinkClosed(self.close_reason or "link closed")
        size = sum(len(b) for b in frame)
        if size > self.max_frame:
            raise LinkClosed(f"frame of {size} bytes exceeds the {self.max_frame}-byte limit")
        # records sealed straight from the frame's buffers into one output buffer: a
        # pooled one the transport has finished writing, for a big frame
        self._lent.reclaim(self.inner.written_bytes())
        out = self._lent.pool.take(sealed_size(size))
        await self.inner.send([self.cipher.seal_parts(frame, out)])
        if out is not None:    # not on an exception: the transport may still hold it
            self._lent.lend(out, self.inner.queued_bytes())

    async def recv(self) -> bytes:
        sealed = await self.inner.recv()
        try:
            opened = self.cipher.open(sealed)    # a new buffer: the sealed one is done
        except FrameError as exc:
            reason = f"protocol error: {exc}"
            log.warning("closing link to %s: %s", self.remote, reason)
            await self.close(reason)
            raise LinkClosed(reason) from None
        self.inner.recycle(sealed)
        return opened

    async def recv_sealed(self) -> bytes | bytearray | memoryview:
        """The next frame still sealed, for a reader that opens its records in place
        (:meth:`protocol.framing.Reassembler.filling` with :attr:`cipher`). The
        caller must open every frame it takes, in order, and close the link with
        :meth:`fail` when one does not open; it gives an opened frame back with
        :meth:`recycle`."""
        return await self.inner.recv()

    def recycle(self, frame: object) -> None:
        self.inner.recycle(frame)

    async def fail(self, reason: str) -> None:
        """A sealed frame did not open: log it and close the link."""
        log.warning("closing link to %s: %s", self.remote, reason)
        await self.close(reason)

    async def close(self, reason: str = "closed locally") -> None:
        if self._own_reason is None:
            self._own_reason = reason
        self._lent.forget()
        await self.inner.close(reason)

    # delegated state ----------------------------------------------------------------
    @property
    def close_reason(self) -> str | None:  # type: ignore[override]
        return self._own_reason or self.inner.close_reason

    @close_reason.setter
    def close_reason(self, value: str | None) -> None:
        self._own_reason = value

    @property
    def kind(self) -> str:  # type: ignore[override]
        return self.inner.kind

    @property
    def remote(self) -> str:
        return self.inner.remote

    @property
    def rtt_ms(self) -> float | None:
        return self.inner.rtt_ms

    def observe_rtt(self, sample_ms: float) -> None:
        self.inner.observe_rtt(sample_ms)
