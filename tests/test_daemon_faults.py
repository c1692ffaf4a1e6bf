"""Faults inside a running daemon: loops keep running, errors are told apart."""

from __future__ import annotations

import asyncio
import time

import numpy as np

from node import api
from tests.inproc import running_daemon
from tests.replying_session import FakeSession


async def _until(pred, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_status_shows_a_background_loop_that_keeps_failing(tmp_path, monkeypatch):
    async with running_daemon(tmp_path) as d:
        calls = 0

        def broken_fields():
            nonlocal calls
            calls += 1
            raise RuntimeError("dictionary changed size during iteration")

        real = d._load_fields
        monkeypatch.setattr(d, "_load_fields", broken_fields)
        await _until(lambda: d.status()["loops"]["advertise"]["failures"] >= 2)
        status = d.status()
        loop = status["loops"]["advertise"]
        assert loop["consecutive"] >= 2
        assert "dictionary changed size" in loop["last_error"]
        assert status["loops"]["memory"]["failures"] == 0
        assert set(status["loops"]) >= {"gossip", "reconfigure", "housekeeping"}
        # the daemon answered its local API throughout
        resp = await api._answer(api.StatusRequest(), d._on_local_request)
        assert resp.ok and resp.value["loops"]["advertise"]["failures"] >= 2
        healthy = 0

        def counting():
            nonlocal healthy
            healthy += 1
            return real()

        monkeypatch.setattr(d, "_load_fields", counting)   # the fault goes away
        await _until(lambda: healthy >= 2, timeout=15)       # and the loop came back


async def test_a_bug_is_an_internal_error_not_a_user_error(tmp_path, monkeypatch):
    async with running_daemon(tmp_path) as d:
        def buggy(job_id):
            raise KeyError("job-table")          # a bug, not the user's fault

        monkeypatch.setattr(d.jobs, "get", buggy)
        resp = await api._answer(api.JobRequest("x"), d._on_local_request)
        assert not resp.ok
        assert resp.error.startswith("internal error")
        # a user mistake is still reported as such
        monkeypatch.undo()
        resp = await api._answer(api.JobRequest("nope"), d._on_local_request)
        assert not resp.ok and not resp.error.startswith("internal error")
        assert "no job" in resp.error
        bad = await api._answer(api.SubmitRequest("matmul", np.ones((2, 3), np.float32),
                                                  np.ones((4, 2), np.float32)),
                                d._on_local_request)
        assert not bad.ok and "align" in bad.error and "internal" not in bad.error


async def test_peer_requests_tell_bugs_from_bad_requests(tmp_path, monkeypatch):
    from protocol.work import GetPlan, MatmulShare
    async with running_daemon(tmp_path) as d:
        s = FakeSession()
        bad_device = MatmulShare(1, "j", np.ones((2, 2), np.float32),
                                 np.ones((2, 2), np.float32), "no-such-device", 0, 0)
        await d.holder.handle(s, bad_device)
        assert s.replies[-1][2] and not s.replies[-1][2].startswith("internal error")
        assert "no-such-device" in s.replies[-1][2]

        def buggy(name):
            raise KeyError("plans table")
        monkeypatch.setattr(d.plans, "versioned", buggy)
        await d.holder.handle(s, GetPlan(2, "w"))
        assert s.replies[-1][0] == 2 and s.replies[-1][2].startswith("internal error")
        assert d.holder.serving == 0


async def test_links_beyond_the_cap_are_refused_and_the_daemon_keeps_serving(tmp_path,
                                                                          monkeypatch):
    from nat.link import LinkClosed
    from nat.tcp import dial_tcp
    from node.net import mesh as mesh_module
    from node.net.session import handshake
    from protocol.errors import ProtocolError
    from protocol.identity import Identity

    async with running_daemon(tmp_path) as d:
        monkeypatch.setattr(mesh_module, "MAX_LINKS", 0)
        host, port = d.mesh.bound
        link = await dial_tcp(host, port)
        try:
            await handshake(link, Identity.generate(), "x", ["127.0.0.1:1"], [],
                            initiator=True, timeout=5)
            refused = False
        except (ProtocolError, LinkClosed):
            refused = True
        assert refused
        assert d.mesh.sessions == {}
        assert (await api._answer(api.StatusRequest(), d._on_local_request)).ok
