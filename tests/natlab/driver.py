"""Test-side handles on lab peers: spawn them in namespaces, relay their signals, await events.

:class:`Mesh` stands in for the daemon's signal routing: a ``signal`` event from one peer is
written to the addressed peer's stdin, as the daemon would deliver an ``ice.*`` message over
its authenticated links. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from tests.natlab.lab import REPO, Lab


class PeerProc:
    """One ``tests.natlab.peer`` process and the queue of its events."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process, mesh: "Mesh") -> None:
        self.name = name
        self.proc = proc
        self.mesh = mesh
        self.events: asyncio.Queue[dict] = asyncio.Queue()
        self.stderr = b""
        self._reader = asyncio.ensure_future(self._read())
        self._err = asyncio.ensure_future(self._read_err())

    async def _read(self) -> None:
        while True:
            line = await self.proc.stdout.readline()
            if not line:
                await self.events.put({"ev": "exited"})
                return
            event = json.loads(line)
            if event["ev"] == "signal":
                await self.mesh.deliver(self.name, event)
            else:
                await self.events.put(event)

    async def _read_err(self) -> None:
        while chunk := await self.proc.stderr.read(65536):
            self.stderr = (self.stderr + chunk)[-20000:]

    async def cmd(self, op: str, **fields: Any) -> None:
        self.proc.stdin.write((json.dumps({"op": op, **fields}) + "\n").encode())
        await self.proc.stdin.drain()

    async def expect(self, *kinds: str, timeout: float = 30.0) -> dict:
        """The next event of one of ``kinds`` (others are skipped); AssertionError on timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            left = deadline - loop.time()
            try:
                event = await asyncio.wait_for(self.events.get(), max(left, 0.001))
            except asyncio.TimeoutError:
                raise AssertionError(f"{self.name}: no {kinds} event within {timeout}s; "
                                     f"stderr tail: {self.stderr[-1500:].decode(errors='replace')}")
            if event["ev"] in kinds:
                return event
            if event["ev"] in ("exited", "error"):
                raise AssertionError(f"{self.name}: {event}; stderr tail: "
                                     f"{self.stderr[-1500:].decode(errors='replace')}")

    async def stop(self) -> None:
        if self.proc.returncode is None:
            try:
                await self.cmd("quit")
                await asyncio.wait_for(self.proc.wait(), 5)
            except (asyncio.TimeoutError, ConnectionError):
                self.proc.kill()
                await self.proc.wait()
        self._reader.cancel()
        self._err.cancel()


class Mesh:
    """Spawns peers and relays their signalling messages to each other."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.peers: dict[str, PeerProc] = {}
        self.relayed = 0

    async def spawn(self, name: str, ns: str, *args: str) -> PeerProc:
        argv = self.lab.python_argv(ns, "tests.natlab.peer", "--id", name, *args)
        proc = await asyncio.create_subprocess_exec(
            *argv, cwd=REPO, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, limit=1 << 22)
        self.lab.track(proc)
        peer = PeerProc(name, proc, self)
        self.peers[name] = peer
        ready = await peer.expect("ready", timeout=30)
        assert ready["sys_modules_has_aiortc"] is False  # lazy import holds in a real process
        return peer

    async def deliver(self, src: str, event: dict) -> None:
        dst = self.peers.get(event["to"])
        if dst is not None and dst.proc.returncode is None:
            self.relayed += 1
            await dst.cmd("signal", **{"from": src, "data": event["data"]})

    async def close(self) -> None:
        await asyncio.gather(*(p.stop() for p in self.peers.values()), return_exceptions=True)
