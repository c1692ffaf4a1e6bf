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
