"""Two encrypted sessions over a real loopback TCP link, as two daemons' links are."""

from __future__ import annotations

import asyncio
import contextlib
from typing import AsyncIterator

from nat.tcp import dial_tcp, listen_tcp


@contextlib.asynccontextmanager
async def session_pair() -> AsyncIterator[tuple]:
    """(dialler's session, listener's session), handshaken, not yet started; both closed
    and the listener shut afterwards."""
    from node.net.session import handshake
    from tests.noise_pair import A, B, KEY

    accepted: asyncio.Queue = asyncio.Queue()

    async def on_link(link):
        await accepted.put(await handshake(link, B, "b", [], [KEY], initiator=False))
    server = await listen_tcp("127.0.0.1", 0, on_link)
    try:
        link = await dial_tcp("127.0.0.1", server.sockets[0].getsockname()[1])
        sa = await handshake(link, A, "a", [], [KEY], initiator=True)
        sb = await accepted.get()
        try:
            yield sa, sb
        finally:
            await sa.close("done")
            await sb.close("done")
    finally:
        server.close()
