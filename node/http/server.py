"""The dashboard's HTTP server: aiohttp, read-only, bounded, token-guarded off loopback.

The port is bound at start with plain asyncio; aiohttp (:mod:`node.http.app`) is imported
on a short-lived thread when the first connection arrives, which then waits (reading
paused) until the application is ready. An idle daemon whose dashboard nobody opens never
pays for aiohttp and prometheus_client (about 15 MB of RSS, issue 13).

Limits (a slow or huge client must not stall the daemon or pile up):
- GET and HEAD only (anything else 405); no request bodies beyond ``MAX_BODY`` bytes.
- Request line and each header at most ``MAX_FIELD`` bytes, at most ``MAX_HEADERS`` headers
  (aiohttp's parser answers 400 past them).
- At most ``MAX_CONNECTIONS`` connections at once; more are closed on arrival.
- Every connection lives at most ``MAX_CONNECTION_SECONDS`` (a client trickling its
  headers byte by byte is cut there), idle keep-alive ``KEEPALIVE_SECONDS``.
Every page polls short JSON requests, so nothing needs a long-lived connection.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib
import json
import logging
import math
import sys
import threading
from pathlib import Path
from types import ModuleType
from typing import Any, Awaitable, Callable

from node.runtime.beat import sleep_to_beat
from node.config import ConfigError, DEFAULT_HTTP, is_loopback, parse_address
from node.http.history import History
from node.http.linktotals import LinkTotals

log = logging.getLogger("sedma.http")

MAX_CONNECTIONS = 64
MAX_CONNECTION_SECONDS = 30.0
KEEPALIVE_SECONDS = 5.0
MAX_FIELD = 8190
MAX_HEADERS = 64
MAX_BODY = 1024
#: Bytes buffered from a connection that arrived before the app finished loading.
MAX_EARLY_BYTES = MAX_FIELD * (MAX_HEADERS + 1) + MAX_BODY
SAMPLE_EVERY = 1.0
#: The files the pages are made of (nothing else under /static is served).
STATIC_FILES = ("index.html", "app.js", "style.css")
STATIC_DIR = Path(__file__).resolve().parent / "static"
SECURITY_HEADERS = {
    # No inline script and nothing from elsewhere: data shown is never run.
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; "
                               "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def read_token(path: str) -> str:
    """The token in ``path`` (surrounding whitespace ignored); ConfigError if unusable."""
    try:
        token = Path(path).expanduser().read_text().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read --http-token {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"--http-token {path} is not text") from None
    if len(token) < 16:
        raise ConfigError(f"--http-token {path} holds {len(token)} characters; use at "
                          "least 16 (e.g. head -c 24 /dev/urandom | base64)")
    return token


class _ConnectionGuard(asyncio.Protocol):
    """Caps connections and their lifetime; hands the connection to aiohttp's protocol
    once the application is loaded (reading stays paused until then)."""

    def __init__(self, server: "HttpServer") -> None:
        self.server = server
        self.inner: asyncio.Protocol | None = None
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.counted = False
        self.early: list[bytes] = []     # bytes that arrived before the app was loaded
        self.early_eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.server.connections >= MAX_CONNECTIONS:
            log.warning("refusing HTTP connection: %d open", self.server.connections)
            transport.abort()
            return
        self.server.connections += 1
        self.counted = True
        self.transport = transport
        self.timer = asyncio.get_running_loop().call_later(MAX_CONNECTION_SECONDS,
                                                           transport.abort)
        if self.server.factory is not None:
            self.attach(self.server.factory)
        else:
            transport.pause_reading()
            self.server.when_loaded(self)

    def attach(self, factory: Callable[[], asyncio.Protocol]) -> None:
        """Give the connection to aiohttp (unless it closed while the app was loading)."""
        if self.transport.is_closing():
            return
        self.inner = factory()
        self.inner.connection_made(self.transport)
        early, self.early = self.early, []
        for data in early:
            self.inner.data_received(data)
        if self.early_eof:
            if not self.inner.eof_received():
                self.transport.close()
            return
        self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.counted:
            return
        self.server.connections -= 1
        self.timer.cancel()
        if self.inner is not None:
            self.inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.inner is not None:
            self.inner.data_received(data)
            return
        # Reading is paused while the app loads, but a read already under way is
        # delivered: keep it for aiohttp, within the limit of one request head.
        self.early.append(data)
        if sum(map(len, self.early)) > MAX_EARLY_BYTES:
            log.warning("HTTP client sent over %d bytes before the dashboard loaded; closed",
                        MAX_EARLY_BYTES)
            self.transport.abort()

    def eof_received(self) -> bool | None:
        if self.inner is not None:
            return self.inner.eof_received()
        self.early_eof = True
        return True        # keep the transport half-open until aiohttp has seen the rest

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()


class HttpServer:
    """Serves one daemon's dashboard and metrics; ``start`` binds, ``stop`` closes."""

    def __init__(self, daemon: Any, token: str | None) -> None:
        self.daemon = daemon
        self.token = token
        self.connections = 0
        self.links = LinkTotals()
        self.history = History()
        # Beside this module, not through importlib.resources: that imports tempfile,
        # shutil, lzma, bz2 and zipfile (~1 MB of RSS in every idle daemon, issue 13).
        self.static = {name: (STATIC_DIR / name).read_bytes() for name in STATIC_FILES}
        self.url: str | None = None
        #: aiohttp's per-connection protocol factory, once the app is loaded
        self.factory: Callable[[], asyncio.Protocol] | None = None
        self._app: Any = None            # node.http.app.DashboardApp, once loaded
        self._loading: asyncio.Task | None = None
        self._waiting: list[_ConnectionGuard] = []
        self._server: asyncio.AbstractServer | None = None
        self._sampler: asyncio.Task | None = None

    async def start(self, host: str, port: int) -> None:
        self._server = await asyncio.get_running_loop().create_server(
            lambda: _ConnectionGuard(self), host, port)
        bound = self._server.sockets[0].getsockname()
        shown = bound[0]
        if shown in ("0.0.0.0", "::"):     # a wildcard: show an address people can open
            shown = parse_address(self.daemon.addresses()[0])[0]
        shown = f"[{shown}]" if ":" in shown else shown
        self.url = f"http://{shown}:{bound[1]}/"
        log.info("dashboard and /metrics on %s%s", self.url,
                 " (token required)" if self.token else "")

    def when_loaded(self, guard: _ConnectionGuard) -> None:
        """Attach ``guard``'s connection once the app is loaded (starting the load)."""
        self._waiting.append(guard)
        if self._loading is None:
            self._loading = asyncio.get_running_loop().create_task(self._load())

    async def _load(self) -> None:
        try:
            module = await import_off_loop("node.http.app")
            app = module.DashboardApp(self, sys.modules[__name__])
            self.factory = await app.protocol_factory()
            self._app = app
        except Exception:
            log.exception("the dashboard application failed to load; retried on the next "
                          "connection")
            waiting, self._waiting, self._loading = self._waiting, [], None
            for guard in waiting:
                guard.transport.abort()
            return
        waiting, self._waiting = self._waiting, []
        for guard in waiting:
            guard.attach(self.factory)

    async def stop(self) -> None:
        if self._sampler is not None:
            self._sampler.cancel()
            await asyncio.gather(self._sampler, return_exceptions=True)
        if self._server is not None:
            self._server.close()
        if self._loading is not None and not self._loading.done():
            self._loading.cancel()
            await asyncio.gather(self._loading, return_exceptions=True)
        if self._app is not None:
            await self._app.close()
        for guard in self._waiting:
            guard.transport.abort()

    def start_sampler(self, supervise: Callable[[str, Callable[[], Awaitable]], Any] | None
                      ) -> None:
        """Sample the daemon once a second, under its supervisor when it has one (which
        then owns the loop: restarts it after a failure, stops it at shutdown)."""
        if supervise is not None:
            supervise("dashboard", self._sample_loop)
        else:
            self._sampler = asyncio.get_running_loop().create_task(self._sample_loop())

    async def _sample_loop(self) -> None:
        """Once a second: a history point, and closed links folded into the totals."""
        while True:
            await sleep_to_beat(SAMPLE_EVERY)   # with the daemon's other 1 s loops
            self.history.sample(self.daemon.metrics)
            self.links.update(list(self.daemon.mesh.sessions.values()))


async def import_off_loop(name: str) -> ModuleType:
    """Import ``name`` on a thread of its own (ending with the import), so the ~0.3 s of a
    cold aiohttp import does not stall the event loop."""
    done: concurrent.futures.Future = concurrent.futures.Future()

    def work() -> None:
        try:
            done.set_result(importlib.import_module(name))
        except BaseException as exc:     # delivered to the awaiting coroutine
            done.set_exception(exc)

    threading.Thread(target=work, name="sedma-http-import", daemon=True).start()
    return await asyncio.wrap_future(done)


def to_json(value: Any) -> str:
    """Strict JSON (a NaN or infinity, e.g. from a peer's advert, becomes null: the
    browser's parser rejects them and the whole page would stop updating)."""
    return json.dumps(_finite(value), default=_jsonable, allow_nan=False)


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):      # numpy scalars
        return _finite(value.item())
    return str(value)


async def start_http(daemon: Any) -> HttpServer | None:
    """Start the dashboard the daemon's config asks for; None when it is off.

    The default address is best effort: if another daemon on this machine has it, this
    one runs without a dashboard (and says so). An address given explicitly must bind.
    """
    cfg = daemon.config
    if cfg.http == "off":
        return None
    address = cfg.http or DEFAULT_HTTP
    host, port = parse_address(address, 7947)
    token = read_token(cfg.http_token) if cfg.http_token else None
    if token is None and not is_loopback(host):
        raise ConfigError(f"--http {address} is not loopback: it needs --http-token FILE")
    server = HttpServer(daemon, token)
    try:
        await server.start(host, port)
    except OSError as exc:
        if cfg.http is not None:
            raise OSError(exc.errno, f"cannot serve the dashboard on {address}: "
                                     f"{exc.strerror}") from None
        log.warning("dashboard not started: %s is in use (pass --http HOST:PORT or "
                    "--http off)", address)
        return None
    supervisor = getattr(daemon, "supervisor", None)
    server.start_sampler(supervisor.start if supervisor is not None else None)
    return server
