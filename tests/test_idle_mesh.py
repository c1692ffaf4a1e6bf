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
