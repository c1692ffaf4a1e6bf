"""The connection policy, with two Connectors in one process signalling each other directly."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

from nat import reachability
from nat.connector import Connector, ConnectorConfig
from nat.link import KIND_ICE_DIRECT, KIND_TCP, LinkClosed
from nat.signaling import IceOffer, is_signal
from nat.tcp import listen_tcp


class Pair:
    """Connectors 'a' and 'b' whose signals are delivered (or dropped) in-process."""

    def __init__(self, config: ConnectorConfig | None = None, deliver: bool = True) -> None:
        self.deliver = deliver
        self.signals: list = []
        self.accepted: asyncio.Queue = asyncio.Queue()
        config = config or ConnectorConfig(ice_timeout=10)
        self.c = {n: Connector(n, config, send_signal=self._send, on_link=self.accepted.put)
                  for n in ("a", "b")}

    async def _send(self, dst: str, msg) -> None:
        assert is_signal(msg) and msg.dst == dst
        self.signals.append(msg)
        if self.deliver:
            await self.c[dst].handle_signal(msg.src, msg)

    async def close(self) -> None:
        for c in self.c.values():
            await c.close()


def test_constructing_a_connector_does_not_import_aiortc():
    code = ("import sys; from nat.connector import Connector, ConnectorConfig\n"
            "async def nop(*a): pass\n"
            "c = Connector('x', ConnectorConfig(stun=('stun:198.51.100.1:3478',)), "
            "send_signal=nop, on_link=nop)\n"
            "assert c.advert_extra() == {'reach': 'unknown', 'ice': True, 'turn': False}\n"
            "print(sorted(m for m in ('aiortc', 'aioice') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, cwd=".")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_bad_server_urls_fail_at_construction():
    async def nop(*a):
        pass

    with pytest.raises(ValueError, match="TURN URL"):
        Connector("x", ConnectorConfig(turn=("turn:nopassword@h:1",)), send_signal=nop,
                  on_link=nop)


async def test_reachable_address_gives_tcp_without_signalling():
    accepted = asyncio.Queue()
    server = await listen_tcp("127.0.0.1", 0, accepted.put)
    port = server.sockets[0].getsockname()[1]
    pair = Pair()
    try:
        link = await pair.c["a"].connect("b", ["bogus", f"127.0.0.1:{port}"])
        assert link.kind == KIND_TCP and pair.signals == []
        assert pair.c["a"].outcome("b").kind == KIND_TCP
        await link.close()
    finally:
        server.close()
        await pair.close()


async def test_ice_when_tcp_fails_and_both_sides_record_it():
    pair = Pair(ConnectorConfig(tcp_timeout=0.5, ice_timeout=10))
    try:
        link = await pair.c["a"].connect("b", ["127.0.0.1:1"], {"reach": "cone", "ice": True})
        peer_link = await asyncio.wait_for(pair.accepted.get(), 10)
        assert link.kind == peer_link.kind == KIND_ICE_DIRECT
        assert [type(s).__name__ for s in pair.signals] == ["IceOffer", "IceAnswer"]
        assert pair.c["a"].outcome("b").kind == KIND_ICE_DIRECT
        assert pair.c["b"].outcome("a").kind == KIND_ICE_DIRECT
        await link.send([b"hello"])
        assert await asyncio.wait_for(peer_link.recv(), 5) == b"hello"
        assert pair.accepted.empty()  # on_link ran exactly once
        await link.close()
    finally:
        await pair.close()


async def test_concurrent_connects_share_one_attempt():
    pair = Pair()
    try:
        l1, l2 = await asyncio.gather(pair.c["a"].connect("b", []), pair.c["a"].connect("b", []))
        assert l1 is l2
        assert sum(isinstance(s, IceOffer) for s in pair.signals) == 1
        await l1.close()
    finally:
        await pair.close()


async def test_unanswered_offers_fail_within_bound_after_retries():
    pair = Pair(ConnectorConfig(ice_timeout=0.5, ice_attempts=3, ice_backoff=0.05),
                deliver=False)
    try:
        with pytest.raises(LinkClosed) as info:
            await asyncio.wait_for(pair.c["a"].connect("b", []), 10)
        assert ("ICE attempt 3: no working candidate pair within 0.5s "
                "(no STUN/TURN configured; gathered: host)") in info.value.reason
        assert sum(isinstance(s, IceOffer) for s in pair.signals) == 3
        outcome = pair.c["a"].outcome("b")
        assert outcome.kind == "failed" and "ICE attempt 1" in outcome.error
    finally:
        await pair.close()


async def test_symmetric_both_ends_without_turn_is_refused_without_trying():
    pair = Pair()
    pair.c["a"].reach = reachability.Reachability(reachability.SYMMETRIC)
    try:
        with pytest.raises(LinkClosed, match="symmetric NATs and neither has a TURN relay"):
            await pair.c["a"].connect("b", [], {"reach": "symmetric", "ice": True,
                                                "turn": False})
        assert pair.signals == []
    finally:
        await pair.close()


async def test_closed_answerer_refuses_and_dialler_learns_why():
    pair = Pair(ConnectorConfig(ice_timeout=10, ice_attempts=1))
    await pair.c["b"].close()
    try:
        with pytest.raises(LinkClosed, match="peer refused ICE: busy"):
            await asyncio.wait_for(pair.c["a"].connect("b", []), 5)
    finally:
        await pair.close()


async def test_misaddressed_signals_are_dropped():
    pair = Pair()
    try:
        await pair.c["b"].handle_signal("mallory", IceOffer("a", "b", 3, "s", "v=0"))
        await pair.c["b"].handle_signal("a", IceOffer("a", "c", 3, "s", "v=0"))
        assert pair.c["b"]._tasks == set() and pair.signals == []
    finally:
        await pair.close()


async def test_caller_giving_up_cancels_the_attempt():
    pair = Pair(ConnectorConfig(ice_timeout=30, ice_attempts=1), deliver=False)
    try:
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(pair.c["a"].connect("b", []), 0.5)
        await asyncio.sleep(0.1)
        assert pair.c["a"]._dialling == {}  # nothing left running for nobody
    finally:
        await pair.close()


def test_setup_bound_covers_every_attempt_and_backoff():
    async def nop(*a):
        pass

    c = Connector("x", ConnectorConfig(tcp_timeout=2, ice_timeout=5, ice_attempts=3,
                                       ice_backoff=1), send_signal=nop, on_link=nop)
    assert c.setup_bound(2) == 2 * 2 + 3 * 5 + (1 + 2)


async def test_advert_extra_probes_configured_server_and_reprobes_when_due():
    from tests.test_nat_reachability import serve

    transport, fake = await serve()
    port = transport.get_extra_info("sockname")[1]

    async def nop(*a):
        pass

    c = Connector("x", ConnectorConfig(stun=(f"stun:127.0.0.1:{port}",),
                                       reachability_every=60), send_signal=nop, on_link=nop)
    try:
        assert c.advert_extra() == {"reach": "unknown", "ice": True, "turn": False}
        await asyncio.wait_for(c._reach_task, 5)
        assert c.advert_extra()["reach"] == "public" and fake.requests == 1
        c.advert_extra()  # not due yet: no new probe
        c._reach_at -= 61                           # as if a minute had passed
        c.advert_extra()
        await asyncio.wait_for(c._reach_task, 5)
        assert fake.requests == 2
    finally:
        transport.close()
        await c.close()


async def test_no_servers_means_no_probe_at_all():
    async def nop(*a):
        pass

    c = Connector("x", ConnectorConfig(), send_signal=nop, on_link=nop)
    assert c.advert_extra() == {"reach": "unknown", "ice": True, "turn": False}
    assert c._reach_task is None


async def test_a_peer_with_turn_is_worth_trying_even_when_both_are_symmetric():
    pair = Pair(ConnectorConfig(ice_timeout=10, ice_attempts=1))
    pair.c["a"].reach = reachability.Reachability(reachability.SYMMETRIC)
    try:
        link = await pair.c["a"].connect("b", [], {"reach": "symmetric", "ice": True,
                                                   "turn": True})
        assert isinstance(pair.signals[0], IceOffer)  # it tried (and here, on one host, won)
        await link.close()
    finally:
        await pair.close()
