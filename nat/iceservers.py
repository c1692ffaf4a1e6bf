"""ICE server configuration from the command line, validated before anything is contacted.

The daemon takes ``--stun stun:HOST:PORT`` and ``--turn turn:USER:PASS@HOST:PORT[?transport=tcp]``.
Credentials ride inside the TURN URL so one flag describes one server; aiortc wants them
split out into an ``RTCIceServer``. Parsing happens eagerly (at startup) so a typo is a
clear ``ValueError`` then, not a silently missing relay when a peer turns out to need one.

This module deliberately does not import aiortc at module import time (it is heavy); the
``to_rtc`` conversion imports it when the first ICE link is built.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

_HOST = r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.\-]+)"
_PORT = r"(?P<port>[0-9]{1,5})"
_STUN_RE = re.compile(rf"stun:{_HOST}(?::{_PORT})?")
_TURN_RE = re.compile(
    rf"turn:(?P<user>[^:@/?]+):(?P<password>[^@/?]+)@{_HOST}(?::{_PORT})?"
    r"(?:\?transport=(?P<transport>udp|tcp))?")
DEFAULT_PORT = 3478


@dataclass(frozen=True)
class IceServer:
    """One STUN or TURN server, parsed and checked."""

    scheme: str          # 'stun' | 'turn'
    host: str
    port: int
    username: str = ""
    password: str = ""
    transport: str = "udp"

    @property
    def url(self) -> str:
        """The credential-free URL in the form aiortc understands."""
        base = f"{self.scheme}:{_bracket(self.host)}:{self.port}"
        return base + ("?transport=tcp" if self.scheme == "turn" and self.transport == "tcp" else "")

    def __str__(self) -> str:  # never print the password in logs
        return self.url


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _port(text: str | None, url: str) -> int:
    port = int(text) if text else DEFAULT_PORT
    if not 0 < port < 65536:
        raise ValueError(f"port out of range in {url!r}")
    return port


def parse_stun(url: str) -> IceServer:
    """Parse ``stun:HOST[:PORT]``; ValueError naming the URL otherwise."""
    m = _STUN_RE.fullmatch(url.strip())
    if m is None:
        raise ValueError(f"not a STUN URL (want stun:HOST:PORT): {url!r}")
    return IceServer("stun", m["host"].strip("[]"), _port(m["port"], url))


def parse_turn(url: str) -> IceServer:
    """Parse ``turn:USER:PASS@HOST[:PORT][?transport=udp|tcp]``; ValueError otherwise."""
    m = _TURN_RE.fullmatch(url.strip())
    if m is None:
        shown = re.sub(r"(turn:[^:@]*:)[^@]*@", r"\1***@", url)  # keep secrets out of errors
        raise ValueError(
            f"not a TURN URL (want turn:USER:PASS@HOST:PORT[?transport=tcp]): {shown!r}")
    return IceServer("turn", m["host"].strip("[]"), _port(m["port"], url), m["user"],
                     m["password"], m["transport"] or "udp")


def parse_servers(stun: tuple[str, ...] | list[str] = (),
                  turn: tuple[str, ...] | list[str] = ()) -> list[IceServer]:
    """Parse every configured server; the result may be empty (host candidates only)."""
    return [parse_stun(u) for u in stun] + [parse_turn(u) for u in turn]


def to_rtc(servers: list[IceServer]) -> list[Any]:
    """The explicit ``RTCIceServer`` list for ``RTCConfiguration`` (never ``None``).

    Passing a list, even an empty one, is what keeps aiortc from falling back to its
    built-in public STUN server.
    """
    from aiortc import RTCIceServer

    out = []
    for s in servers:
        if s.scheme == "turn":
            out.append(RTCIceServer(urls=s.url, username=s.username, credential=s.password))
        else:
            out.append(RTCIceServer(urls=s.url))
    return out
