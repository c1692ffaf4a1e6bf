"""The dashboard's aiohttp application: routes, the guard middleware and the handlers.

Imported only when the first HTTP connection arrives (:class:`node.http.server.HttpServer`
binds the port without it): aiohttp and prometheus_client with their dependencies (email,
http, yarl, attrs, two SSL contexts loading the CA store) cost an idle daemon about 15 MB of
RSS that nobody uses until someone opens the dashboard or scrapes ``/metrics``.
"""

from __future__ import annotations

import hmac
import logging
import mimetypes
import sys
from typing import Any, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from node.http import views
from node.http.collector import registry_for

log = logging.getLogger("sedma.http")


class _OneLineLog(logging.LoggerAdapter):
    """aiohttp logs a malformed request with a traceback; a bad client is worth one line."""

    def exception(self, msg: object, *args: Any, exc_info: Any = True, **kw: Any) -> None:
        exc = exc_info if isinstance(exc_info, BaseException) else sys.exc_info()[1]
        self.logger.warning("bad HTTP request: %s", str(exc).splitlines()[0] if exc else msg)


class DashboardApp:
    """The request side of one :class:`~node.http.server.HttpServer` (``srv``): its
    static files, token, history and link totals are read from it."""

    def __init__(self, srv: Any, limits: Any) -> None:
        self.srv = srv
        self.limits = limits            # the server module: its limits may be patched by tests
        self.registry = registry_for(srv.daemon, srv.links)
        self.runner: web.AppRunner | None = None

    async def protocol_factory(self) -> Callable[[], Any]:
        """Set the aiohttp runner up; return its per-connection protocol factory."""
        lim = self.limits
        self.runner = web.AppRunner(self.app(), access_log=None, handle_signals=False,
                                    keepalive_timeout=lim.KEEPALIVE_SECONDS,
                                    max_line_size=lim.MAX_FIELD, max_field_size=lim.MAX_FIELD,
                                    max_headers=lim.MAX_HEADERS,
                                    logger=_OneLineLog(logging.getLogger("sedma.http"), {}))
        await self.runner.setup()
        return self.runner.server

    async def close(self) -> None:
        if self.runner is not None:
            await self.runner.shutdown()
            await self.runner.cleanup()

    def app(self) -> web.Application:
        srv = self.srv
        app = web.Application(client_max_size=self.limits.MAX_BODY, middlewares=[self._guard])
        app.router.add_get("/", self._index)
        app.router.add_get("/static/{name}", self._file)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/api/snapshot", self._json(lambda: views.snapshot(srv.daemon)
                                                        | {"history": srv.history.as_list()}))
        app.router.add_get("/api/mesh", self._json(lambda: views.members(srv.daemon)))
        app.router.add_get("/api/deployments", self._json(lambda: views.deployments(srv.daemon)))
        app.router.add_get("/api/jobs", self._json(lambda: views.jobs_view(srv.daemon)))
        app.router.add_get("/api/memory", self._json(lambda: views.dual_memory(srv.daemon)))
        app.router.add_get("/api/history", self._json(srv.history.as_list))
        return app

    # middleware and handlers --------------------------------------------------------
    @web.middleware
    async def _guard(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.method not in ("GET", "HEAD"):
            raise web.HTTPMethodNotAllowed(request.method, ["GET", "HEAD"])
        if self.srv.token is not None and not self._authorised(request):
            return web.Response(status=401, text="401: a valid token is required "
                                "(Authorization: Bearer TOKEN, or ?token=TOKEN)\n",
                                headers={"WWW-Authenticate": 'Bearer realm="sedma"'})
        response = await handler(request)
        response.headers.update(self.limits.SECURITY_HEADERS)
        return response

    def _authorised(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        given = header[7:] if header.startswith("Bearer ") else request.query.get("token", "")
        return hmac.compare_digest(given.encode(), self.srv.token.encode())

    async def _index(self, request: web.Request) -> web.Response:
        return web.Response(body=self.srv.static["index.html"], content_type="text/html",
                            charset="utf-8")

    async def _file(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in self.srv.static:
            raise web.HTTPNotFound(text="404: no such file\n")
        ctype = mimetypes.guess_type(name)[0] or "application/octet-stream"
        return web.Response(body=self.srv.static[name], content_type=ctype, charset="utf-8")

    async def _metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    def _json(self, build):
        to_json = self.limits.to_json

        async def handler(request: web.Request) -> web.Response:
            return web.Response(text=to_json(build()), content_type="application/json")
        return handler
