"""A request this node cannot read (a newer peer's message type, a field of the wrong
type) is answered with the reason, and the link stays open: the frame was whole, so the
stream is still in step, and closing it would drop the membership traffic it carries. A
reply that cannot be read still closes the link: there is no one to tell."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from node.net.session import RemoteError, Session
from protocol.errors import DecodeError, RequestDecodeError
from protocol.messages import from_wire
from protocol.rpc import Ping
from tests.test_session_bulk import BoundedLink, _hello


@dataclasses.dataclass
class FromTheFuture:
    """A request type this build does not know (never registered)."""

    TAG = "work.from_the_future"
    rid: int
    payload: bytes = b"x"


@dataclasses.dataclass
class BadPing:
    """A known type whose field has the wrong type."""

    TAG = "rpc.ping"
    rid: int
    sent: str = "yesterday"


def _pair():
    a, b = BoundedLink(8), BoundedLink(8)
    a.peer, b.peer = b, a
    ha, hb = _hello("aa"), _hello("bb")
    return Session(a, ha, hb, initiator=True), Session(b, hb, ha, initiator=False)


@pytest.mark.parametrize("make, why", [
    (lambda rid: FromTheFuture(rid), "unknown message type 'work.from_the_future'"),
    (lambda rid: BadPing(rid), "rpc.ping.sent"),
], ids=["unknown type", "bad field"])
async def test_an_unreadable_request_gets_the_reason_and_the_link_stays_open(make, why):
    asker, server = _pair()
    handled = []

    async def handler(session, msg):
        handled.append(msg)

    asker.start(handler)
    server.start(handler)
    try:
        with pytest.raises(RemoteError, match="cannot read the request") as err:
            await asker.request(make(asker.next_rid()), timeout=5)
        assert why in str(err.value)
        assert not server.closed.is_set() and not asker.closed.is_set()
        rtt = await asker.ping(timeout=5)          # the same link still answers
        assert rtt >= 0 and handled == []
    finally:
        await asker.close("test over")
        await server.close("test over")


def test_a_bad_request_names_its_rid_and_a_bad_reply_does_not():
    with pytest.raises(DecodeError) as err:
        from_wire({"t": "rpc.reply", "rid": 3, "value": 1, "bogus": 2})
    assert not isinstance(err.value, RequestDecodeError)
    with pytest.raises(RequestDecodeError) as err:
        from_wire({"t": "rpc.ping", "rid": 4, "sent": "soon"})
    assert err.value.rid == 4
    assert isinstance(from_wire({"t": "rpc.ping", "rid": 5, "sent": 1.0}), Ping)
