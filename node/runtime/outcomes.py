"""What to do with the outcome of a future nobody will await.

asyncio logs "exception was never retrieved" for a failed future no one looked at. Some
futures are dropped on purpose: a pong lost with its link (the asker times out and
retries), a chunk request given up after its share failed over, a held operand's
validation no chunk waited for. Their failure is not news; this callback says so once.
"""

from __future__ import annotations

import asyncio


def ignore_outcome(fut: asyncio.Future) -> None:
    """Done-callback: mark a dropped future's exception as seen (cancelled: nothing to see)."""
    if not fut.cancelled():
        fut.exception()
