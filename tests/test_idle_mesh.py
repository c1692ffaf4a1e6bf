"""Idle cost of a mesh (issue 13): what an idle daemon does per message and per peer."""

from __future__ import annotations

import typing

import numpy as np

import protocol.messages as messages
from protocol.membership import Ping
from protocol.work import MatmulShare


def test_message_hints_are_resolved_once_also_before_numpy_is_loaded(monkeypatch):
    """Resolving a class's hints costs ~50 us, more than decoding a probe; an idle daemon
    never loads numpy, so the cache must serve it too, and be redone once numpy is in."""
    calls = []
    real = typing.get_type_hints
    monkeypatch.setattr(typing, "get_type_hints",
                        lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    monkeypatch.setattr(messages, "_HINT_CACHE", {})
    monkeypatch.setattr(messages, "_HINT_CACHE_NO_NUMPY", {})
    monkeypatch.setattr(messages, "loaded", lambda: None)          # numpy not loaded
    for _ in range(3):
        messages._hints(Ping)
        unloaded = messages._hints(MatmulShare)
    assert calls == [Ping, MatmulShare]
    assert unloaded["a"] is messages._Unloaded
    monkeypatch.setattr(messages, "loaded", lambda: np)            # now it is
    assert messages._hints(MatmulShare)["a"] is np.ndarray
    messages._hints(MatmulShare)
    assert calls == [Ping, MatmulShare, MatmulShare]


def test_links_of_one_thread_share_one_receive_scratch_area_and_keep_their_frames():
    """A 64 KiB scratch area per link was ~6 MB per daemon of a 100-daemon mesh: links of
    a thread share one, and two links' partial frames (a split length prefix, a body that
    started in the scratch) still come out whole and apart."""
    import threading

    from protocol.wire import FrameDecoder, frame_header

    a, b = FrameDecoder(1 << 20), FrameDecoder(1 << 20)
    fa = [b"x" * 10, b"y" * 70_000, b"z"]
    fb = [b"1" * 3, b"2" * 5000]
    streams = {a: b"".join(frame_header(len(f)) + f for f in fa),
               b: b"".join(frame_header(len(f)) + f for f in fb)}
    got: dict = {a: [], b: []}
    pos = {a: 0, b: 0}
    areas = set()
    while any(pos[d] < len(streams[d]) for d in (a, b)):
        for d in (a, b):                        # interleaved reads, 2 bytes to 9 KiB each
            data = streams[d]
            if pos[d] >= len(data):
                continue
            buf = d.get_buffer()
            if len(buf) == 64 << 10:
                areas.add(id(buf.obj))
            n = min(len(buf), len(data) - pos[d], 2 if pos[d] < 3 else 9000)
            buf[:n] = data[pos[d]:pos[d] + n]
            pos[d] += n
            got[d] += [bytes(f) for f in d.buffer_updated(n)]
            assert d._scratch is None           # nothing of the area kept per link
    assert got[a] == fa and got[b] == fb
    assert len(areas) == 1                      # one area for both links

    other: list = []
    t = threading.Thread(target=lambda: other.append(id(FrameDecoder().get_buffer().obj)))
    t.start()
    t.join()
    assert other[0] not in areas                # another thread gets its own


def test_an_unchanged_advert_offer_costs_no_rebuild_and_changes_still_publish(monkeypatch):
    """The daemon offers its load fields every second; an idle node's are the same each
    time, and rebuilding (validating) the advert twice per offer was half the offer's
    cost. A real change still goes through the usual rules."""
    import random

    from protocol.advert import Advertisement
    from protocol.membership import Membership, MembershipConfig

    a = Membership(Advertisement("a", "a", ["a:1"], load=0.0, memory_free=5),
                   MembershipConfig(), now=0.0, rng=random.Random(1))
    built = []
    real = Advertisement.replace
    monkeypatch.setattr(Advertisement, "replace",
                        lambda self, **f: built.append(f) or real(self, **f))
    for t in range(1, 20):
        a.update_advert(float(t), load=0.0, memory_free=5, name="a")
        a.tick(float(t))
    assert built == [] and a.member("a").advert.version == 0
    a.update_advert(20.0, load=9.0, memory_free=5)                 # a big change: at once
    assert a.member("a").advert.version == 1 and a.member("a").advert.load == 9.0
    import pytest
    with pytest.raises(ValueError):
        a.update_advert(21.0, no_such_field=1)                     # still refused


class _Timers:
    """A stand-in membership whose next deadline the test moves (as acks and messages
    move the real one), counting the ticks the mesh's loop makes."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.ticks: list[float] = []

    def tick(self, now: float):
        from protocol.membership import Output
        self.ticks.append(now)
        if now >= self.deadline:
            self.deadline = now + 10.0       # the timer ran; the next one is far off
        return Output()

    def next_deadline(self) -> float:
        return self.deadline


async def test_the_tick_loop_does_not_wake_for_a_timer_that_was_cancelled():
    """Every probe arms a timeout that its ack cancels; the loop slept for it and woke for
    nothing once a second. A deadline that moved later re-times the sleep; one that moved
    earlier still wakes it at once. Exact: the mesh runs on a fake clock and the test
    fires the armed timer itself, so no wall-clock sleep decides anything."""
    import asyncio

    from nat.connector import ConnectorConfig
    from node.net.mesh import Mesh
    from protocol.identity import Identity
    from protocol.membership import Output

    async def settle() -> None:              # let the tick loop run what is ready
        for _ in range(5):
            await asyncio.sleep(0)

    now = [100.0]
    mesh = Mesh(Identity.generate(), "a", [], "127.0.0.1:0", [], None, ConnectorConfig())
    mesh.clock = lambda: now[0]
    timers = _Timers(100.3)                  # the probe timeout
    mesh.membership = timers
    loop_task = asyncio.get_running_loop().create_task(mesh._tick_loop())
    try:
        await settle()
        assert timers.ticks == [100.0]       # the loop's first tick, at start
        assert mesh._sleep_until == 100.3
        armed = mesh._timer
        timers.deadline = 100.6              # the ack came: the timeout was cancelled
        mesh._process(Output())
        assert armed.cancelled() and not mesh._wake.is_set()   # re-timed, not woken
        assert mesh._sleep_until == 100.6 and not mesh._timer.cancelled()
        now[0] = 100.6                       # the one armed timer fires
        mesh._timer._run()
        await settle()
        assert timers.ticks == [100.0, 100.6]    # no tick at the cancelled 100.3
        assert mesh._sleep_until == 110.6
        now[0] = 101.0
        timers.deadline = 101.05             # a message brought a deadline closer
        mesh._process(Output())
        assert mesh._wake.is_set()           # woken at once: the loop re-reads it
        await settle()
        assert timers.ticks == [100.0, 100.6, 101.0]
    finally:
        loop_task.cancel()
        await asyncio.gather(loop_task, return_exceptions=True)


def test_an_acked_direct_probe_is_an_rtt_sample_and_nothing_else_is():
    """RTT samples come from the membership's probes (a separate RTT ping was a quarter
    of an idle daemon's messages): a direct ping's ack from its target is one; an ack
    relayed by a helper, an unknown seq or a second ack are not; the table is bounded."""
    from types import SimpleNamespace

    from nat.connector import ConnectorConfig
    from node.net.mesh import PROBES_TIMED, Mesh
    from protocol.identity import Identity

    mesh = Mesh(Identity.generate(), "a", [], "127.0.0.1:0", [], None, ConnectorConfig())
    samples, observed = [], []
    mesh.rtt_hooks.append(lambda peer, ms: samples.append((peer, ms)))

    def session(peer):
        return SimpleNamespace(peer_id=peer, link=SimpleNamespace(observe_rtt=observed.append))
    mesh._time_probe(7, "b")
    mesh._probe_acked(session("b"), 7)
    assert [p for p, _ in samples] == ["b"] and samples[0][1] >= 0 and len(observed) == 1
    mesh._probe_acked(session("b"), 7)                 # a duplicate ack
    mesh._probe_acked(session("b"), 8)                 # not ours
    mesh._time_probe(9, "c")
    mesh._probe_acked(session("h"), 9)                 # relayed by helper h: not a round trip
    assert len(samples) == 1 and len(observed) == 1
    for seq in range(100, 100 + 3 * PROBES_TIMED):     # acks that never come
        mesh._time_probe(seq, "d")
    assert len(mesh._probes_out) == PROBES_TIMED


async def test_two_daemons_get_rtt_samples_without_rtt_pings(tmp_path):
    """End to end: the daemons' latency figures and per-link RTT fill from SWIM probes,
    and no separate rpc.ping is sent."""
    import asyncio

    from tests.inproc import running_daemon

    async with running_daemon(tmp_path, "a") as a:
        async with running_daemon(tmp_path, "b", bootstrap=[a.addresses()[0]]) as b:
            for _ in range(150):
                if a.metrics.latency()["p50_ms"] is not None and \
                        b.metrics.latency()["p50_ms"] is not None:
                    break
                await asyncio.sleep(0.1)
            assert a.metrics.latency()["p50_ms"] is not None
            assert b.metrics.latency()["p50_ms"] is not None
            assert a.mesh.sessions[b.node_id].link.rtt_ms is not None
            for d in (a, b):
                assert "rpc.ping" not in d.mesh.traffic()["sent"]
                assert d.mesh.traffic()["sent"].get("swim.ping", 0) >= 1


async def test_the_session_writer_lets_go_of_the_last_message_it_sent(tmp_path):
    """The writer kept its last frame (views of the sender's array) until the next queued
    message: an RTT ping's reply every 2 s happened to release it; without those pings
    (RTT samples now come from SWIM probes) a client's 64 MiB shared W stayed mapped."""
    import asyncio
    import gc
    import weakref

    from nat.tcp import dial_tcp, listen_tcp
    from node.net.session import handshake
    from protocol.identity import Identity

    key = b"k" * 32
    ida, idb = Identity.generate(), Identity.generate()
    accepted: asyncio.Queue = asyncio.Queue()
    got: asyncio.Queue = asyncio.Queue()

    async def on_link(link):
        await accepted.put(await handshake(link, idb, "b", [], [key], initiator=False))
    server = await listen_tcp("127.0.0.1", 0, on_link)
    a = await handshake(await dial_tcp("127.0.0.1", server.sockets[0].getsockname()[1]),
                        ida, "a", [], [key], initiator=True)
    b = await accepted.get()

    async def receive(_session, msg):
        await got.put(msg)
    a.start(receive)
    b.start(receive)
    try:
        arr = np.ones((512, 256), dtype=np.float32)            # 512 KiB: the writer's path
        alive = weakref.ref(arr)
        await a.send(MatmulShare(1, "j", arr, arr[:1], None, 0, 0))
        received = await asyncio.wait_for(got.get(), 10)
        assert received.a.shape == (512, 256)
        del arr, received
        gc.collect()
        assert alive() is None
    finally:
        await a.close("test over")
        await b.close("test over")
        server.close()


def test_a_value_kept_for_a_period_is_recomputed_only_once_the_period_passed():
    from node.runtime.beat import Every

    now = [100.0]
    calls = []
    every = Every(10.0, clock=lambda: now[0])

    def compute():
        calls.append(now[0])
        return len(calls)
    assert every.get(compute) == 1                     # never computed: at once
    for t in (100.5, 104.0, 109.99):
        now[0] = t
        assert every.get(compute) == 1
    now[0] = 110.0
    assert every.get(compute) == 2 and calls == [100.0, 110.0]


async def test_the_advert_rereads_status_figures_every_report_period_and_status_is_current(
        tmp_path):
    """The advert loop runs every second for load; the status-only figures are re-read
    every REPORT_EVERY (they travel by push-pull anyway); ``status --mesh`` shows this
    node's as they are now. The figures placement reads are taken every call."""
    from node.daemon import REPORT_EVERY
    from tests.inproc import running_daemon

    async with running_daemon(tmp_path, "a") as a:
        now = [1000.0]
        a._report._clock = lambda: now[0]
        a._report._at = -1e9
        a.metrics.rtt(5.0)
        first = a._own_stats()
        assert first["latency_p50_ms"] == 5.0
        for _ in range(50):
            a.metrics.rtt(80.0)
        a.memory.served_gflops = 42.0
        now[0] += REPORT_EVERY / 2
        half = a._own_stats()
        assert half["latency_p50_ms"] == 5.0 and half["served_gflops"] == 42.0
        assert a.mesh_status()["per_node"][a.node_id]["latency_p50_ms"] == 80.0
        now[0] += REPORT_EVERY / 2
        assert a._own_stats()["latency_p50_ms"] == 80.0
