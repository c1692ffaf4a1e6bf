"""The dashboard's HTTP server: aiohttp, read-only, bounded, token-guarded off loopback.

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
import hmac
import json
import logging
import math
import mimetypes
import sys
from importlib import resources
from pathlib import Path
from typing import Any, Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from node.config import ConfigError, DEFAULT_HTTP, is_loopback, parse_address
from node.http import views
from node.http.collector import LinkTotals, registry_for
from node.http.history import History

log = logging.getLogger("sedma.http")

MAX_CONNECTIONS = 64
MAX_CONNECTION_SECONDS = 30.0
KEEPALIVE_SECONDS = 5.0
MAX_FIELD = 8190
MAX_HEADERS = 64
MAX_BODY = 1024
SAMPLE_EVERY = 1.0
#: The files the pages are made of (nothing else under /static is served).
STATIC_FILES = ("index.html", "app.js", "style.css")
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


class _OneLineLog(logging.LoggerAdapter):
    """aiohttp logs a malformed request with a traceback; a bad client is worth one line."""

    def exception(self, msg: object, *args: Any, exc_info: Any = True, **kw: Any) -> None:
        exc = exc_info if isinstance(exc_info, BaseException) else sys.exc_info()[1]
        self.logger.warning("bad HTTP request: %s", str(exc).splitlines()[0] if exc else msg)


class _ConnectionGuard(asyncio.Protocol):
    """Wraps aiohttp's per-connection protocol with a connection cap and a lifetime."""

    def __init__(self, inner: asyncio.Protocol, server: "HttpServer") -> None:
        self.inner = inner
        self.server = server
        self.timer: asyncio.TimerHandle | None = None
        self.counted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.server.connections >= MAX_CONNECTIONS:
            log.warning("refusing HTTP connection: %d open", self.server.connections)
            transport.abort()
            return
        self.server.connections += 1
        self.counted = True
        self.timer = asyncio.get_running_loop().call_later(MAX_CONNECTION_SECONDS,
                                                           transport.abort)
        self.inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.counted:
            return
        self.server.connections -= 1
        self.timer.cancel()
        self.inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


class HttpServer:
    """Serves one daemon's dashboard and metrics; ``start`` binds, ``stop`` closes."""

    def __init__(self, daemon: Any, token: str | None) -> None:
        self.daemon = daemon
        self.token = token
        self.connections = 0
        self.links = LinkTotals()
        self.registry = registry_for(daemon, self.links)
        self.history = History()
        self.static = {name: (resources.files("node.http").joinpath("static", name)
                              .read_bytes()) for name in STATIC_FILES}
        self.url: str | None = None
        self._runner: web.AppRunner | None = None
        self._server: asyncio.AbstractServer | None = None
        self._sampler: asyncio.Task | None = None

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY, middlewares=[self._guard])
        app.router.add_get("/", self._index)
        app.router.add_get("/static/{name}", self._file)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/api/snapshot", self._json(lambda: views.snapshot(self.daemon)
                                                        | {"history": self.history.as_list()}))
        app.router.add_get("/api/mesh", self._json(lambda: views.members(self.daemon)))
        app.router.add_get("/api/deployments", self._json(lambda: views.deployments(self.daemon)))
        app.router.add_get("/api/jobs", self._json(lambda: views.jobs_view(self.daemon)))
        app.router.add_get("/api/memory", self._json(lambda: views.dual_memory(self.daemon)))
        app.router.add_get("/api/history", self._json(self.history.as_list))
        return app

    async def start(self, host: str, port: int) -> None:
        self._runner = web.AppRunner(self.app(), access_log=None, handle_signals=False,
                                     keepalive_timeout=KEEPALIVE_SECONDS,
                                     max_line_size=MAX_FIELD, max_field_size=MAX_FIELD,
                                     max_headers=MAX_HEADERS,
                                     logger=_OneLineLog(logging.getLogger("sedma.http"), {}))
        await self._runner.setup()
        factory = self._runner.server
        try:
            self._server = await asyncio.get_running_loop().create_server(
                lambda: _ConnectionGuard(factory(), self), host, port)
        except OSError:
            await self._runner.cleanup()
            raise
        bound = self._server.sockets[0].getsockname()
        shown = bound[0]
        if shown in ("0.0.0.0", "::"):     # a wildcard: show an address people can open
            shown = parse_address(self.daemon.addresses()[0])[0]
        shown = f"[{shown}]" if ":" in shown else shown
        self.url = f"http://{shown}:{bound[1]}/"
        log.info("dashboard and /metrics on %s%s", self.url,
                 " (token required)" if self.token else "")

    async def stop(self) -> None:
        if self._sampler is not None:
            self._sampler.cancel()
            await asyncio.gather(self._sampler, return_exceptions=True)
        if self._server is not None:
            self._server.close()
        if self._runner is not None:
            await self._runner.shutdown()
            await self._runner.cleanup()

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
            await asyncio.sleep(SAMPLE_EVERY)
            self.history.sample(self.daemon.metrics)
            self.links.update(list(self.daemon.mesh.sessions.values()))

    # middleware and handlers --------------------------------------------------------
    @web.middleware
    async def _guard(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.method not in ("GET", "HEAD"):
            raise web.HTTPMethodNotAllowed(request.method, ["GET", "HEAD"])
        if self.token is not None and not self._authorised(request):
            return web.Response(status=401, text="401: a valid token is required "
                                "(Authorization: Bearer TOKEN, or ?token=TOKEN)\n",
                                headers={"WWW-Authenticate": 'Bearer realm="sedma"'})
        response = await handler(request)
        response.headers.update(SECURITY_HEADERS)
        return response

    def _authorised(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        given = header[7:] if header.startswith("Bearer ") else request.query.get("token", "")
        return hmac.compare_digest(given.encode(), self.token.encode())

    async def _index(self, request: web.Request) -> web.Response:
        return web.Response(body=self.static["index.html"], content_type="text/html",
                            charset="utf-8")

    async def _file(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in self.static:
            raise web.HTTPNotFound(text="404: no such file\n")
        ctype = mimetypes.guess_type(name)[0] or "application/octet-stream"
        return web.Response(body=self.static[name], content_type=ctype, charset="utf-8")

    async def _metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    def _json(self, build):
        async def handler(request: web.Request) -> web.Response:
            return web.Response(text=to_json(build()), content_type="application/json")
        return handler


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
