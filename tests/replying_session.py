"""A stand-in for a peer's :class:`node.net.session.Session` as a holder's request handler
sees it: it records the replies the handler sends (``(rid, value, error)``), so tests can
read what the peer would have received."""

from __future__ import annotations


class FakeSession:
    peer_id = "peer0000"

    def __init__(self) -> None:
        self.replies: list[tuple[int, object, object]] = []

    async def reply(self, rid, value=None, error=None) -> None:
        self.replies.append((rid, value, error))
