"""A Connector in a lab namespace, driven over stdin/stdout with JSON lines.

The test process plays the mesh: it relays ``signal`` events between peers exactly as the
daemon relays signalling messages (encoded with the protocol codec), and drives the peer with
commands. Each process holds at most one current link (the last one made or accepted).

Commands (stdin): signal, connect, listen, send, reach, close, quit.
Events (stdout):  signal, ready, listening, connected, connect_failed, link, frame, sent,
                  closed, reach, error.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import logging
import os
import sys
from typing import Any

from nat.connector import Connector, ConnectorConfig
from nat.link import Link, LinkClosed
from nat.tcp import listen_tcp
from protocol.messages import decode_message, encode_message


def emit(ev: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"ev": ev, **fields}) + "\n")
    sys.stdout.flush()


class Peer:
    """The command interpreter around one Connector."""

    def __init__(self, args: argparse.Namespace) -> None:
        config = ConnectorConfig(
            tcp_timeout=args.tcp_timeout, stun=tuple(args.stun), turn=tuple(args.turn),
            ice_timeout=args.ice_timeout, ice_attempts=args.ice_attempts,
            ice_backoff=0.5, keepalive=args.keepalive, idle_timeout=args.idle_timeout)
        self.connector = Connector(args.id, config, send_signal=self.send_signal,
                                   on_link=self.on_link)
        self.link: Link | None = None
        self.tasks: set[asyncio.Task] = set()

    async def send_signal(self, dst: str, msg: Any) -> None:
        data = b"".join(bytes(b) for b in encode_message(msg))
        emit("signal", to=dst, data=base64.b64encode(data).decode())

    async def on_link(self, link: Link) -> None:
        emit("link", kind=link.kind, remote=link.remote)
        self.adopt(link)

    def adopt(self, link: Link) -> None:
        self.link = link
        self.spawn(self.reader(link))

    async def reader(self, link: Link) -> None:
        """Report every frame's size and digest, then why the link closed."""
        try:
            while True:
                frame = await link.recv()
                emit("frame", size=len(frame), sha=hashlib.sha256(frame).hexdigest())
        except LinkClosed as exc:
            emit("closed", reason=exc.reason)

    def spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def command(self, cmd: dict) -> bool:
        op = cmd["op"]
        if op == "signal":
            msg = decode_message(base64.b64decode(cmd["data"]))
            await self.connector.handle_signal(cmd["from"], msg)
        elif op == "connect":
            self.spawn(self.connect(cmd))
        elif op == "listen":
            await listen_tcp("0.0.0.0", cmd["port"], self.on_link)
            emit("listening", port=cmd["port"])
        elif op == "send":
            self.spawn(self.send(cmd["size"], cmd.get("count", 1)))
        elif op == "reach":
            r = await self.connector.detect_reachability()
            emit("reach", kind=r.kind, mapped=r.mapped, detail=r.detail,
                 extra=self.connector.advert_extra())
        elif op == "close" and self.link is not None:
            await self.link.close("closed by test")
        elif op == "quit":
            return False
        return True

    async def connect(self, cmd: dict) -> None:
        try:
            link = await self.connector.connect(cmd["peer"], cmd.get("addresses", []),
                                                cmd.get("extra", {}))
        except LinkClosed as exc:
            o = self.connector.outcome(cmd["peer"])
            emit("connect_failed", error=exc.reason, ms=o.setup_ms if o else None)
            return
        o = self.connector.outcome(cmd["peer"])
        emit("connected", kind=link.kind, remote=link.remote, ms=o.setup_ms)
        self.adopt(link)

    async def send(self, size: int, count: int) -> None:
        digests = []
        try:
            for _ in range(count):
                frame = os.urandom(size)
                digests.append(hashlib.sha256(frame).hexdigest())
                await self.link.send([frame])
        except LinkClosed as exc:
            emit("error", where="send", reason=exc.reason)
            return
        emit("sent", sha=digests)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--id", required=True)
    parser.add_argument("--stun", action="append", default=[])
    parser.add_argument("--turn", action="append", default=[])
    parser.add_argument("--tcp-timeout", type=float, default=1.0)
    parser.add_argument("--ice-timeout", type=float, default=10.0)
    parser.add_argument("--ice-attempts", type=int, default=2)
    parser.add_argument("--keepalive", type=float, default=1.0)
    parser.add_argument("--idle-timeout", type=float, default=5.0)
    args = parser.parse_args()
    logging.basicConfig(level=os.environ.get("SEDMA_LOG", "WARNING"), stream=sys.stderr)
    peer = Peer(args)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 22)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    emit("ready", sys_modules_has_aiortc="aiortc" in sys.modules)
    while True:
        line = await reader.readline()
        if not line:
            break
        try:
            if not await peer.command(json.loads(line)):
                break
        except Exception as exc:  # report, keep serving: the test decides what is fatal
            emit("error", where="command", reason=repr(exc))
    if peer.link is not None:
        await peer.link.close("peer process exiting")
    await peer.connector.close()


if __name__ == "__main__":
    asyncio.run(main())
