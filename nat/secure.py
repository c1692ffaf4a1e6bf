"""An encrypted link: every frame of an inner link sealed as one Noise transport record.

The cipher sits at the link boundary so nothing above it changes: a :class:`SecureLink`
is a :class:`~nat.link.Link` like the TCP or ICE link it wraps, whose ``max_frame`` is
one Noise message's plaintext (65,519 bytes). The session already cuts messages into
fragments of ``max_frame``, so each fragment becomes exactly one record and there is no
second layer of splitting. A record that fails authentication — altered, replayed,
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
from protocol.handshake import MAX_RECORD_PLAINTEXT, TransportCipher

log = logging.getLogger("sedma.secure")


class SecureLink(Link):
    """The encrypted view of an authenticated inner link."""

    def __init__(self, inner: Link, cipher: TransportCipher) -> None:
        super().__init__()
        self.inner = inner
        self.cipher = cipher
        self.max_frame = min(inner.max_frame, MAX_RECORD_PLAINTEXT)

    # Link ---------------------------------------------------------------------------
    async def send(self, frame: Buffers) -> None:
        if self.closed:
            raise LinkClosed(self.close_reason or "link closed")
        data = frame[0] if len(frame) == 1 else b"".join(frame)
        try:
            record = self.cipher.encrypt(data)
        except FrameError as exc:
            raise LinkClosed(str(exc)) from None
        await self.inner.send([record])

    async def recv(self) -> bytes:
        record = await self.inner.recv()
        try:
            return self.cipher.decrypt(record)
        except FrameError as exc:
            reason = f"protocol error: {exc}"
            log.warning("closing link to %s: %s", self.remote, reason)
            await self.close(reason)
            raise LinkClosed(reason) from None

    async def close(self, reason: str = "closed locally") -> None:
        if self._own_reason is None:
            self._own_reason = reason
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
