"""Errors raised when bytes from a peer or a client do not form a valid message.

One exception type per layer so the daemon can log *why* it closed a link while every
caller can still catch the common base.
"""


class ProtocolError(Exception):
    """Input from a peer or client broke the protocol; the link carrying it is closed."""


class FrameError(ProtocolError):
    """A frame's length prefix or fragment header is invalid or over the limit."""


class DecodeError(ProtocolError):
    """A frame was well-formed but its payload is not a valid sedma message."""


class RequestDecodeError(DecodeError):
    """A whole request (a map with an integer ``rid``) this node cannot read: an unknown
    message type, say a newer peer's, or a field of the wrong type. Unlike a broken frame
    the link stays in step, so the asker gets the reason as its request's error and the
    link, with the membership traffic it carries, stays open."""

    def __init__(self, rid: int, reason: str) -> None:
        super().__init__(reason)
        self.rid = rid
