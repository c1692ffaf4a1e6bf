"""IceLink without the lab: chunking, explicit servers, and two links on this host."""

from __future__ import annotations

import asyncio
import hashlib
import os

import pytest

from nat import ice
from nat.link import KIND_ICE_DIRECT, LinkClosed

MiB = 1 << 20


@pytest.mark.parametrize("size", [0, 1, ice.CHUNK_SIZE - 1, ice.CHUNK_SIZE, MiB + 64])
def test_split_and_reassemble_roundtrip(size):
    data = os.urandom(size)
    parts = [data[: size // 3], memoryview(data)[size // 3:]]
    chunks = ice.split_frame(parts)
    assert all(len(c) <= ice.CHUNK_SIZE for c in chunks)
    reasm = ice.Reassembler(MiB + 64)
    results = [reasm.feed(c[0], c[1:]) for c in chunks]
    assert results[:-1] == [None] * (len(chunks) - 1)
    assert results[-1] == data


def test_reassembler_refuses_oversized_frames():
    reasm = ice.Reassembler(max_frame=100)
    reasm.feed(0, b"x" * 60)
    with pytest.raises(LinkClosed, match="exceeds 100 bytes"):
        reasm.feed(1, b"x" * 60)


def test_candidate_types_from_sdp():
    sdp = ("a=candidate:1 1 udp 1 10.0.0.2 5000 typ host\r\n"
           "a=candidate:2 1 udp 1 198.51.100.1 6000 typ srflx raddr 10.0.0.2 rport 5000\r\n")
    assert ice.candidate_types(sdp) == ["host", "srflx"]


async def test_no_servers_means_aioice_gets_no_stun_or_turn_server(monkeypatch):
    """aiortc's default (a public STUN server) must never reach aioice."""
    import aiortc.rtcicetransport as transport

    seen: list[dict] = []
    real = transport.Connection

    def spy(*args, **kwargs):
        seen.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(transport, "Connection", spy)
    link, sdp = await ice.make_offer([], ice.IceTimers())
    try:
        assert seen and all(k.get("stun_server") is None and k.get("turn_server") is None
                            for k in seen)
        assert ice.candidate_types(sdp) == ["host"]
    finally:
        await link.close()


async def test_configured_servers_reach_aioice(monkeypatch):
    import aiortc.rtcicetransport as transport
    from nat.iceservers import parse_servers

    seen: list[dict] = []
    monkeypatch.setattr(transport, "Connection", lambda *a, **k: seen.append(k) or
                        (_ for _ in ()).throw(RuntimeError("stop before any I/O")))
    servers = parse_servers(["stun:192.0.2.1:3478"], ["turn:u:p@192.0.2.1:3479"])
    with pytest.raises(RuntimeError, match="stop before any I/O"):
        await ice.make_offer(servers, ice.IceTimers())
    assert seen[0]["stun_server"] == ("192.0.2.1", 3478)
    assert (seen[0]["turn_server"], seen[0]["turn_username"]) == (("192.0.2.1", 3479), "u")


async def link_pair(timers: ice.IceTimers | None = None):
    """Two IceLinks in this process, connected over host candidates."""
    timers = timers or ice.IceTimers()
    a, offer = await ice.make_offer([], timers)
    fut, _pc, answer = await ice.make_answer([], offer, timers)
    await ice.accept_answer(a, answer)
    b = await asyncio.wait_for(fut, 10)
    await asyncio.gather(a.wait_open(10), b.wait_open(10))
    return a, b


async def test_concurrent_large_frames_arrive_whole_in_order_under_backpressure():
    a, b = await link_pair()
    peak = 0
    real_send = a.channel.send

    def spy(data):
        nonlocal peak
        peak = max(peak, a.channel.bufferedAmount)
        real_send(data)

    a.channel.send = spy
    frames = [os.urandom(MiB) for _ in range(6)] + [b"tail"]
    try:
        assert a.kind == b.kind == KIND_ICE_DIRECT
        await asyncio.gather(*(a.send([f]) for f in frames))
        got = [await asyncio.wait_for(b.recv(), 30) for _ in frames]
        assert [hashlib.sha256(g).digest() for g in got] == \
               [hashlib.sha256(f).digest() for f in frames]
        assert peak <= ice.BUFFER_HIGH + ice.CHUNK_SIZE  # pacing held the SCTP queue bounded
    finally:
        await a.close()
        await b.close()


async def test_close_reason_reaches_the_peer():
    a, b = await link_pair()
    await a.send([b"last"])
    await a.close("shutting down")
    assert await b.recv() == b"last"  # frames already received are still delivered
    with pytest.raises(LinkClosed, match="peer closed: shutting down"):
        await asyncio.wait_for(b.recv(), 5)
    with pytest.raises(LinkClosed):
        await a.send([b"more"])


async def test_silent_path_closes_link_after_idle_timeout():
    a, b = await link_pair(ice.IceTimers(keepalive=0.2, idle_timeout=1.0))
    a.channel.remove_all_listeners("message")  # a hears nothing more: the path is gone
    try:
        with pytest.raises(LinkClosed, match="no traffic from peer"):
            await asyncio.wait_for(a.recv(), 10)
    finally:
        await a.close()
        await b.close()


async def test_rtt_is_measured_by_keepalive():
    a, b = await link_pair(ice.IceTimers(keepalive=0.1))
    try:
        for _ in range(50):
            if a.rtt_ms is not None:
                break
            await asyncio.sleep(0.1)
        assert a.rtt_ms is not None and a.rtt_ms >= 0
    finally:
        await a.close()
        await b.close()


async def test_oversized_frame_is_refused_before_sending():
    a, b = await link_pair()
    try:
        with pytest.raises(LinkClosed, match="exceeds"):
            await a.send([b"x" * (a.max_frame + 1)])
        await a.send([b"ok"])
        assert await asyncio.wait_for(b.recv(), 5) == b"ok"
    finally:
        await a.close()
        await b.close()
