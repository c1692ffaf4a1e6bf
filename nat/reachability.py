"""Reachability detection: is this node public, behind a cone NAT, or a symmetric one?

Peers and the scorer use the verdict (advertised in gossip) to predict a link's kind: two
cone-NATed nodes can hole-punch; a symmetric NAT on both ends needs a TURN relay. The test
is the classic one (RFC 5780 section 4.3, reduced): from ONE local UDP socket ask a STUN
server for our mapped address, then ask a second server address (the server's
OTHER-ADDRESS, or a second configured server). Same mapping for both destinations means
endpoint-independent mapping (cone); different means symmetric; a mapping equal to our own
address means no NAT at all.

The STUN Binding exchange is a few lines of struct packing, kept here rather than borrowed
from aioice so that detection does not import the ICE stack. Only configured servers are
ever contacted; every exchange is bounded by a timeout and a retry count.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
import struct
from dataclasses import dataclass

from nat.iceservers import IceServer

PUBLIC, CONE, SYMMETRIC, UNKNOWN = "public", "cone", "symmetric", "unknown"

_MAGIC = 0x2112A442
_BINDING_REQUEST, _BINDING_SUCCESS = 0x0001, 0x0101
_MAPPED, _XOR_MAPPED, _CHANGED, _OTHER = 0x0001, 0x0020, 0x0005, 0x802C
_HEADER = struct.Struct(">HHI12s")

Addr = tuple[str, int]


@dataclass
class Reachability:
    """The verdict and what it was based on (for logs and ``sedma peers``)."""

    kind: str = UNKNOWN
    mapped: str = ""
    detail: str = "not probed"


def binding_request(txid: bytes) -> bytes:
    """A STUN Binding request with no attributes."""
    return _HEADER.pack(_BINDING_REQUEST, 0, _MAGIC, txid)


def parse_binding_response(data: bytes, txid: bytes) -> tuple[Addr | None, Addr | None]:
    """(mapped address, other address) from a Binding success; (None, None) if not ours."""
    if len(data) < _HEADER.size:
        return None, None
    mtype, length, magic, rxid = _HEADER.unpack_from(data)
    if mtype != _BINDING_SUCCESS or magic != _MAGIC or rxid != txid:
        return None, None
    mapped = other = None
    pos, end = _HEADER.size, min(len(data), _HEADER.size + length)
    while pos + 4 <= end:
        atype, alen = struct.unpack_from(">HH", data, pos)
        value = data[pos + 4:pos + 4 + alen]
        if atype == _XOR_MAPPED:
            mapped = _address(value, xor=True, txid=txid) or mapped
        elif atype == _MAPPED and mapped is None:
            mapped = _address(value)
        elif atype in (_OTHER, _CHANGED):
            other = _address(value)
        pos += 4 + alen + (-alen % 4)
    return mapped, other


def _address(value: bytes, xor: bool = False, txid: bytes = b"") -> Addr | None:
    if len(value) < 8:
        return None
    family, port = value[1], struct.unpack_from(">H", value, 2)[0]
    raw = value[4:8] if family == 1 else value[4:20]
    if xor:
        port ^= _MAGIC >> 16
        key = struct.pack(">I", _MAGIC) + txid
        raw = bytes(a ^ b for a, b in zip(raw, key))
    try:
        return str(ipaddress.ip_address(raw)), port
    except ValueError:
        return None


class _Probe(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.waiting: dict[bytes, asyncio.Future] = {}

    def datagram_received(self, data: bytes, addr: Addr) -> None:
        if len(data) >= _HEADER.size:
            fut = self.waiting.get(data[8:20])
            if fut is not None and not fut.done():
                fut.set_result(data)


async def _bind(transport: asyncio.DatagramTransport, probe: _Probe, dest: Addr,
                timeout: float) -> tuple[Addr | None, Addr | None]:
    """One Binding exchange, retransmitted a few times within ``timeout``."""
    txid = os.urandom(12)
    fut = asyncio.get_running_loop().create_future()
    probe.waiting[txid] = fut
    try:
        for _ in range(3):
            transport.sendto(binding_request(txid), dest)
            done, _pending = await asyncio.wait({fut}, timeout=timeout / 3)
            if done:
                return parse_binding_response(fut.result(), txid)
        return None, None
    finally:
        probe.waiting.pop(txid, None)


def _local_ip(dest: Addr) -> str:
    """The source address the kernel would use towards ``dest`` (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(dest)
        return s.getsockname()[0]


def classify(local: Addr, first: Addr | None, second: Addr | None) -> tuple[str, str]:
    """The verdict from our address and the mappings two destinations saw."""
    if first is None:
        return UNKNOWN, "no STUN reply"
    if first == local:
        return PUBLIC, "mapped address equals local address"
    if second is None:
        return UNKNOWN, "behind NAT, type unknown (no second STUN address to compare)"
    if second == first:
        return CONE, "same mapping towards two destinations"
    return SYMMETRIC, f"mapping changes per destination ({first[1]} vs {second[1]})"


async def detect(servers: list[IceServer], timeout: float = 3.0) -> Reachability:
    """Probe configured STUN (and TURN, which also answer STUN over UDP) servers."""
    dests = [(s.host, s.port) for s in servers if s.transport == "udp"]
    if not dests:
        return Reachability(UNKNOWN, "", "no STUN/TURN server configured")
    loop = asyncio.get_running_loop()
    try:
        dest = (socket.gethostbyname(dests[0][0]), dests[0][1])
        local_ip = _local_ip(dest)
        transport, probe = await loop.create_datagram_endpoint(
            _Probe, local_addr=(local_ip, 0), family=socket.AF_INET)
    except OSError as exc:
        return Reachability(UNKNOWN, "", f"cannot probe: {exc}")
    try:
        local = transport.get_extra_info("sockname")[:2]
        first, other = await _bind(transport, probe, dest, timeout)
        second_dest = other or _second(dests, dest)
        second = None
        if first is not None and first != local and second_dest is not None:
            second, _ = await _bind(transport, probe, second_dest, timeout)
        kind, detail = classify(local, first, second)
        return Reachability(kind, f"{first[0]}:{first[1]}" if first else "", detail)
    finally:
        transport.close()


def _second(dests: list[Addr], first: Addr) -> Addr | None:
    for host, port in dests[1:]:
        try:
            addr = (socket.gethostbyname(host), port)
        except OSError:
            continue
        if addr != first:
            return addr
    return None
