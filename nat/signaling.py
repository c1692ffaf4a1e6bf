"""ICE signalling messages, relayed hop by hop through the authenticated mesh.

An ICE attempt needs one round trip of SDP (offer with every gathered candidate, answer with
the other side's). There is no separate signalling server: these messages travel over the
mesh links the daemon already authenticated, delivered directly when the two nodes share a
link and otherwise forwarded by any member that reaches both (the bootstrap, typically).

Routing contract for the daemon: a message for which :func:`is_signal` is true carries
``src``, ``dst`` and ``ttl``. If ``dst`` is this node, ``await connector.handle_signal(src,
msg)``; otherwise forward it towards ``dst`` with ``ttl - 1`` and drop it when ``ttl``
reaches 0, so a routing loop cannot bounce a message forever.

Offers and answers are signed by their sender's identity key (:func:`signed`) over the
whole SDP — which holds the DTLS certificate fingerprint aiortc checks the peer's
certificate against — and carry the public key, whose hash must be ``src``
(:func:`check`). So a member relaying the signal cannot substitute its own fingerprint
(or candidates) and sit in the middle of the DTLS session: the receiver drops any offer
or answer whose SDP is not exactly what ``src`` signed. (The link then also runs the
Noise handshake, which proves the identity key a second time, end to end.)
"""

from __future__ import annotations

import dataclasses
from typing import Any

import msgpack

from protocol.identity import Identity, verify_claim
from protocol.messages import message

SDP_CONTEXT = b"sedma-ice-sdp-v1"

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
    identity: bytes = b""    # src's Ed25519 public key
    sig: bytes = b""         # its signature over (kind, src, dst, session, sdp)


@message("ice.answer")
class IceAnswer:
    """The answering side's SDP answer for ``session``."""

    src: str
    dst: str
    ttl: int
    session: str
    sdp: str
    identity: bytes = b""
    sig: bytes = b""


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


def _signed_part(msg: IceOffer | IceAnswer) -> bytes:
    """What the signature covers: everything but the hop count, which relays change."""
    return msgpack.packb([msg.TAG, msg.src, msg.dst, msg.session, msg.sdp], use_bin_type=True)


def signed(msg: Any, identity: Identity) -> Any:
    """``msg`` signed by ``identity`` if it is an offer or answer this node sends."""
    if not isinstance(msg, (IceOffer, IceAnswer)) or msg.src != identity.node_id:
        return msg
    return dataclasses.replace(msg, identity=identity.public_key,
                               sig=identity.sign(SDP_CONTEXT, _signed_part(msg)))


def check(msg: Any) -> str | None:
    """Why an offer/answer is not what its ``src`` signed (None when it is, or for
    messages that need no signature)."""
    if not isinstance(msg, (IceOffer, IceAnswer)):
        return None
    return verify_claim(msg.src, msg.identity, SDP_CONTEXT, _signed_part(msg), msg.sig)
