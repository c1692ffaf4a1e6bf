"""ICE signalling messages, relayed hop by hop through the authenticated mesh.

An ICE attempt needs one round trip of SDP (offer with every gathered candidate, answer with
the other side's). There is no separate signalling server: these messages travel over the
mesh links the daemon already authenticated, delivered directly when the two nodes share a
link and otherwise forwarded by any member that reaches both (the bootstrap, typically).

Routing contract for the daemon: a message for which :func:`is_signal` is true carries
``src``, ``dst`` and ``ttl``. If ``dst`` is this node, ``await connector.handle_signal(src,
msg)``; otherwise forward it towards ``dst`` with ``ttl - 1`` and drop it when ``ttl``
reaches 0, so a routing loop cannot bounce a message forever.
"""

from __future__ import annotations

from typing import Any

from protocol.messages import message

#: Hops a signal may take; the mesh needs one (direct) or two (via a common member).
DEFAULT_TTL = 4


@message("ice.offer")
class IceOffer:
    """The dialling side's SDP offer, candidates included (no trickle)."""

    src: str
    dst: str
    ttl: int
    session: str
    sdp: str


@message("ice.answer")
class IceAnswer:
    """The answering side's SDP answer for ``session``."""

    src: str
    dst: str
    ttl: int
    session: str
    sdp: str


@message("ice.error")
class IceError:
    """The answering side gave up on ``session``; ``reason`` says why, for the dialler's log."""

    src: str
    dst: str
    ttl: int
    session: str
    reason: str


SIGNAL_TYPES = (IceOffer, IceAnswer, IceError)


def is_signal(msg: Any) -> bool:
    """True for messages the daemon must route by ``dst`` rather than handle itself."""
    return isinstance(msg, SIGNAL_TYPES)


def forwarded(msg: Any) -> Any | None:
    """A copy of ``msg`` with one hop spent, or None once its ttl is exhausted."""
    if msg.ttl <= 1:
        return None
    return type(msg)(**{**msg.__dict__, "ttl": msg.ttl - 1})
