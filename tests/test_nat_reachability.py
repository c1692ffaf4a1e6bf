"""Reachability: STUN Binding parsing, the verdict, and a probe against a local fake server."""

from __future__ import annotations

import asyncio
import ipaddress
import struct

import pytest

from nat import reachability as r
from nat.iceservers import parse_servers


def attr(atype: int, addr: tuple[str, int], txid: bytes = b"", xor: bool = False) -> bytes:
    ip, port = ipaddress.ip_address(addr[0]).packed, addr[1]
    if xor:
        port ^= 0x2112
        ip = bytes(a ^ b for a, b in zip(ip, struct.pack(">I", 0x2112A442)))
    value = struct.pack(">BBH", 0, 1, port) + ip
    return struct.pack(">HH", atype, len(value)) + value


def response(txid: bytes, *attrs: bytes, mtype: int = 0x0101) -> bytes:
    body = b"".join(attrs)
    return struct.pack(">HHI12s", mtype, len(body), 0x2112A442, txid) + body


TX = bytes(range(12))


def test_parses_xor_mapped_and_other_address():
    data = response(TX, attr(0x0020, ("198.51.100.7", 40000), TX, xor=True),
                    attr(0x802C, ("203.0.113.3", 3479)))
    assert r.parse_binding_response(data, TX) == (("198.51.100.7", 40000), ("203.0.113.3", 3479))


def test_ignores_foreign_transactions_and_errors():
    data = response(TX, attr(0x0020, ("198.51.100.7", 1), TX, xor=True))
    assert r.parse_binding_response(data, bytes(12)) == (None, None)
    assert r.parse_binding_response(response(TX, mtype=0x0111), TX) == (None, None)
    assert r.parse_binding_response(b"\x01\x01", TX) == (None, None)


@pytest.mark.parametrize("first, second, kind", [
    (None, None, r.UNKNOWN),
    (("10.0.0.2", 5000), None, r.PUBLIC),
    (("198.51.100.1", 5000), None, r.UNKNOWN),
    (("198.51.100.1", 5000), ("198.51.100.1", 5000), r.CONE),
    (("198.51.100.1", 5000), ("198.51.100.1", 6123), r.SYMMETRIC),
])
def test_classify(first, second, kind):
    assert r.classify(("10.0.0.2", 5000), first, second)[0] == kind


class FakeStun(asyncio.DatagramProtocol):
    """Answers Binding requests with a fixed mapped address chosen by the test."""

    def __init__(self, mapped=None) -> None:
        self.mapped = mapped
        self.requests = 0

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data, addr) -> None:
        self.requests += 1
        txid = data[8:20]
        self.transport.sendto(response(txid, attr(0x0020, self.mapped or addr, txid, xor=True)),
                              addr)


async def serve(mapped=None):
    loop = asyncio.get_running_loop()
    return await loop.create_datagram_endpoint(lambda: FakeStun(mapped),
                                                local_addr=("127.0.0.1", 0))


async def test_detects_public_when_mapping_equals_local_address():
    transport, fake = await serve()
    port = transport.get_extra_info("sockname")[1]
    try:
        verdict = await r.detect(parse_servers([f"stun:127.0.0.1:{port}"]), timeout=2)
    finally:
        transport.close()
    assert verdict.kind == r.PUBLIC and fake.requests == 1


async def test_symmetric_when_two_servers_see_different_mappings():
    t1, _ = await serve(("198.51.100.9", 1111))
    t2, _ = await serve(("198.51.100.9", 2222))
    urls = [f"stun:127.0.0.1:{t.get_extra_info('sockname')[1]}" for t in (t1, t2)]
    try:
        verdict = await r.detect(parse_servers(urls), timeout=2)
    finally:
        t1.close()
        t2.close()
    assert verdict.kind == r.SYMMETRIC and verdict.mapped == "198.51.100.9:1111"


async def test_unknown_without_servers_or_replies():
    assert (await r.detect([])).kind == r.UNKNOWN
    silent = await asyncio.get_running_loop().create_datagram_endpoint(
        asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0))
    port = silent[0].get_extra_info("sockname")[1]
    try:
        verdict = await r.detect(parse_servers([f"stun:127.0.0.1:{port}"]), timeout=0.6)
    finally:
        silent[0].close()
    assert verdict.kind == r.UNKNOWN and verdict.detail == "no STUN reply"
