"""Request/response plumbing shared by every peer-to-peer operation.

A request is any message with an ``rid`` field; the answer is a :class:`Reply` carrying the
same ``rid`` and either a value or an error string. Errors travel as text: a peer's
exception never becomes executable state on our side.
"""

from __future__ import annotations

from typing import Any

from protocol.messages import message


@message("rpc.reply")
class Reply:
    rid: int
    value: Any = None
    error: str | None = None


@message("rpc.ping")
class Ping:
    """Measures a link's round trip; answered with a Reply carrying ``sent`` back."""

    rid: int
    sent: float


@message("bye")
class Bye:
    """The sender is shutting down gracefully; the link will close."""

    reason: str = ""
