"""The connection policy: how this node gets a ``Link`` to a peer it knows by advertisement.

Direct TCP to each advertised address first, each attempt bounded; every outcome is
recorded so ``sedma peers`` can say which kind of link a peer has, or why it has none.
(The ICE path — hole punching and TURN relays, signalled through the mesh — plugs in here.)
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from nat.link import Link, LinkClosed
from nat.tcp import dial_tcp

log = logging.getLogger("sedma.connector")

SendSignal = Callable[[str, Any], Awaitable[None]]
OnLink = Callable[[Link], Awaitable[None]]


@dataclass
class LinkOutcome:
    """What the last attempt to reach a peer produced."""

    kind: str            # 'tcp' | 'ice-direct' | 'ice-relay' | 'failed'
    setup_ms: float
    error: str = ""
    at: float = 0.0


@dataclass
class ConnectorConfig:
    """Bounds on link attempts and the ICE servers to use (explicit: never a default)."""

    tcp_timeout: float = 3.0
    stun: tuple[str, ...] = ()
    turn: tuple[str, ...] = ()
    ice_timeout: float = 15.0


def split_host_port(address: str) -> tuple[str, int]:
    """Parse ``host:port`` or ``[v6]:port``; ValueError with the offending text otherwise."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"not a HOST:PORT address: {address!r}")
    return host.strip("[]"), int(port)


class Connector:
    """Obtain links to peers, recording how each attempt went."""

    def __init__(self, local_id: str, config: ConnectorConfig, *,
                 send_signal: SendSignal, on_link: OnLink) -> None:
        self.local_id = local_id
        self.config = config
        self.send_signal = send_signal
        self.on_link = on_link
        self.outcomes: dict[str, LinkOutcome] = {}

    async def connect(self, node_id: str, addresses: list[str], extra: dict | None = None) -> Link:
        """Return a link to ``node_id`` or raise :class:`LinkClosed` saying why not."""
        start = time.monotonic()
        errors: list[str] = []
        for address in addresses:
            try:
                host, port = split_host_port(address)
                link = await dial_tcp(host, port, timeout=self.config.tcp_timeout)
            except (ValueError, LinkClosed) as exc:
                errors.append(str(exc))
                continue
            self._record(node_id, link.kind, start)
            return link
        reason = "; ".join(errors) or "peer advertises no address"
        self._record(node_id, "failed", start, reason)
        raise LinkClosed(f"cannot reach {node_id[:8]}: {reason}")

    async def handle_signal(self, sender: str, msg: Any) -> None:
        """A signalling message for this node arrived through the mesh."""
        log.debug("ignoring signal %s from %s: no ICE support configured", type(msg).__name__, sender)

    def outcome(self, node_id: str) -> LinkOutcome | None:
        """The last recorded attempt to reach ``node_id``."""
        return self.outcomes.get(node_id)

    async def close(self) -> None:
        """Stop any attempt in progress."""

    def _record(self, node_id: str, kind: str, start: float, error: str = "") -> None:
        self.outcomes[node_id] = LinkOutcome(kind, (time.monotonic() - start) * 1000, error,
                                             time.time())
