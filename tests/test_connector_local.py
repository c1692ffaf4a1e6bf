"""A peer on this host is dialled again, never reached by ICE (issue 13's start-up storm).

At 100 daemons starting at once on one machine a few direct dials time out (the peer's
loop, or ours, had no core in time); falling back to ICE then loaded aiortc (~45 MB that
stays) only to find the same loopback path. :func:`nat.connector.direct_only` is the
rule, :meth:`Connector._retry_direct` the bounded retry.
"""

from __future__ import annotations

import asyncio
import socket

import pytest

from nat import connector as connector_mod
from nat.connector import Connector, ConnectorConfig, direct_only, is_loopback_address
from nat.link import KIND_TCP, LinkClosed
from nat.tcp import LISTEN_BACKLOG, listen_tcp


@pytest.mark.parametrize("addresses, extra, servers, expected", [
    (["127.0.0.1:7946"], {}, False, True),
    (["[::1]:7946"], {"reach": "unknown"}, False, True),
    (["127.0.0.1:7946", "127.0.0.2:7946"], {"reach": "public"}, False, True),
    (["10.0.0.6:7946"], {}, False, False),                  # not loopback: maybe another host
    (["172.17.0.2:7946"], {"reach": "unknown"}, False, False),  # a container's address
    (["127.0.0.1:7946", "10.0.0.6:7946"], {}, False, False),    # one address elsewhere
    (["127.0.0.1:7946"], {"reach": "cone"}, False, False),  # says it is behind a NAT
    (["127.0.0.1:7946"], {"reach": "symmetric"}, False, False),
    (["127.0.0.1:7946"], {}, True, False),                  # we have STUN/TURN: ICE may help
    (["127.0.0.1:7946"], {"turn": True}, False, False),     # the peer offers a relay
    ([], {}, False, False),                                 # nothing to dial
    (["bogus"], {}, False, False),                          # unparsable: keep every option
    (["peer.example:7946"], {}, False, False),              # a name: not judged
])
def test_direct_only_rule(addresses, extra, servers, expected):
    assert direct_only(addresses, extra, servers) is expected


def test_only_loopback_addresses_count_as_surely_this_host():
    assert is_loopback_address("127.0.0.1") and is_loopback_address("127.3.4.5")
    assert is_loopback_address("::1")
    assert not is_loopback_address("192.0.2.1") and not is_loopback_address("10.0.0.5")
    assert not is_loopback_address("0.0.0.0") and not is_loopback_address("localhost")


def test_setup_bound_covers_the_local_retries_too():
    async def nop(*a):
        pass

    c = Connector("x", ConnectorConfig(tcp_timeout=2, ice_timeout=1, ice_attempts=1,
                                       local_retries=3, local_backoff=1),
                  send_signal=nop, on_link=nop)
    assert c.setup_bound(1) == 2 * 4 + (1 + 2 + 4)
    c.config.ice_timeout = 30
    assert c.setup_bound(1) == 2 + 30


class _FullListener:
    """A loopback listener whose accept queue is full: the kernel drops further SYNs, so
    a dial times out (as when a daemon's loop is too busy to accept) until :meth:`drain`."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(0)                     # Linux queues one connection
        self.port = self.sock.getsockname()[1]
        self.fillers = []
        for _ in range(2):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", self.port))
            self.fillers.append(filler)

    def drain(self) -> None:
        self.sock.setblocking(False)
        try:
            while True:
                self.fillers.append(self.sock.accept()[0])
        except BlockingIOError:
            pass
        self.sock.listen(16)

    def close(self) -> None:
        for s in [*self.fillers, self.sock]:
            s.close()


async def _dial_busy_local_peer(config: ConnectorConfig, monkeypatch):
    """Dial a peer on 127.0.0.1 whose first dial times out; the listener drains once the
    first dial failed. Returns (link or exception, TCP rounds, whether ICE was tried)."""
    listener = _FullListener()
    rounds, ice = [], []
    real_try_tcp = Connector._try_tcp

    async def counting_try_tcp(self, addresses, errors):
        result = await real_try_tcp(self, addresses, errors)
        rounds.append(result[0] is not None)
        if len(rounds) == 1:
            listener.drain()                   # the busy peer gets to its accept queue
        return result

    async def no_ice(self, node_id, extra, errors):
        ice.append(node_id)
        errors.append("ICE (not run in this test)")
        return None

    monkeypatch.setattr(Connector, "_try_tcp", counting_try_tcp)
    monkeypatch.setattr(Connector, "_try_ice", no_ice)

    async def nop(*a):
        pass

    c = Connector("a", config, send_signal=nop, on_link=nop)
    try:
        try:
            result = await asyncio.wait_for(
                c.connect("b", [f"127.0.0.1:{listener.port}"], {"reach": "unknown"}), 20)
        except LinkClosed as exc:
            result = exc
        return result, rounds, ice, c.outcome("b")
    finally:
        if not isinstance(result, Exception):
            await result.close()
        await c.close()
        listener.close()


async def test_a_loopback_peer_whose_first_dial_times_out_is_reached_by_tcp(monkeypatch):
    config = ConnectorConfig(tcp_timeout=0.5, local_retries=3, local_backoff=0.1)
    link, rounds, ice, outcome = await _dial_busy_local_peer(config, monkeypatch)
    assert not isinstance(link, Exception), link
    assert link.kind == KIND_TCP and outcome.kind == KIND_TCP
    assert rounds[0] is False and rounds[-1] is True    # the first dial did time out
    assert ice == []


async def test_without_retries_a_timed_out_local_dial_fails_and_still_skips_ice(monkeypatch):
    """With ``local_retries=0`` the same busy peer is not reached: the test above passes
    because of the retries, not by luck."""
    config = ConnectorConfig(tcp_timeout=0.5, local_retries=0)
    result, rounds, ice, outcome = await _dial_busy_local_peer(config, monkeypatch)
    assert isinstance(result, LinkClosed) and rounds == [False]
    assert ice == []                    # local_retries=0: still no ICE for a local peer
    assert "ICE not tried: the peer's addresses are on this host" in result.reason
    assert outcome.kind == "failed"


async def test_a_peer_elsewhere_still_gets_ice(monkeypatch):
    monkeypatch.setattr(connector_mod, "is_loopback_address", lambda host: False)
    config = ConnectorConfig(tcp_timeout=0.5, local_retries=3, local_backoff=0.1)
    result, rounds, ice, _ = await _dial_busy_local_peer(config, monkeypatch)
    assert isinstance(result, LinkClosed) and rounds == [False] and ice == ["b"]


async def test_a_refusing_local_peer_is_not_dialled_again(monkeypatch):
    async def nop(*a):
        pass

    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()                                  # nothing listens there now
    rounds = []
    real_try_tcp = Connector._try_tcp

    async def counting_try_tcp(self, addresses, errors):
        rounds.append(1)
        return await real_try_tcp(self, addresses, errors)

    monkeypatch.setattr(Connector, "_try_tcp", counting_try_tcp)
    c = Connector("a", ConnectorConfig(local_backoff=0.05), send_signal=nop, on_link=nop)
    try:
        with pytest.raises(LinkClosed, match="refused"):
            await asyncio.wait_for(c.connect("b", [f"127.0.0.1:{port}"]), 10)
        assert rounds == [1]
    finally:
        await c.close()


def _somaxconn() -> int:
    try:
        with open("/proc/sys/net/core/somaxconn") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 0


@pytest.mark.skipif(_somaxconn() < 151, reason="the kernel caps every listen backlog at "
                    "net.core.somaxconn, below the 150 dials this test queues")
async def test_the_listener_queues_more_than_asyncios_default_backlog():
    """150 dials while the daemon's loop is busy (here: blocked in this test) all complete
    in the kernel; with asyncio's default backlog of 100 the rest had their SYNs dropped."""
    import select

    links = []

    async def keep(link):
        links.append(link)

    server = await listen_tcp("127.0.0.1", 0, keep)
    port = server.sockets[0].getsockname()[1]
    dials = [socket.socket() for _ in range(150)]
    try:
        poll = select.poll()
        for s in dials:
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            poll.register(s, select.POLLOUT)
        done: set[int] = set()
        for _ in range(20):           # up to 1 s, without yielding to the loop
            done |= {fd for fd, _ in poll.poll(50)}
            if len(done) == len(dials):
                break
        connected = [s for s in dials if s.fileno() in done
                     and s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0]
        assert LISTEN_BACKLOG > 100
        assert len(connected) == len(dials)
    finally:
        for s in dials:
            s.close()
        server.close()
        for link in links:
            await link.close()
