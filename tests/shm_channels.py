"""Two ends of a local API connection's shared-memory channel, as a client and its daemon
set them up (node.api / node.client), over a socketpair: for tests of node/shm.py."""

from __future__ import annotations

import socket
from typing import Iterator

from node import shm


def channel_pair(files: bool = False) -> Iterator[tuple[shm.Channel, shm.Channel]]:
    """Yield (client, daemon) channels; closes both and their sockets afterwards."""
    a, b = socket.socketpair(socket.AF_UNIX)
    client = shm.Channel(a, send=True, follow=False, writable=True, arenas=True, files=files)
    daemon = shm.Channel(b, send=False, follow=True, writable=False)
    try:
        yield client, daemon
    finally:
        client.close()
        daemon.close()
        a.close()
        b.close()
