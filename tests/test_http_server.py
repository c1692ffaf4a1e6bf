"""The dashboard's HTTP server under bad input: unknown paths, writes, missing tokens,
oversized requests, slow and piled-up clients. In-process, with the limits shrunk so
the cut-offs happen within a test's time; the server must keep answering throughout."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from node.config import ConfigError, NodeConfig, build_config, is_loopback
from node.http import server as http_server
from node.http.server import HttpServer, read_token

TOKEN = "s3cret-token-0123456789"
REFUSED = {b"HTTP/1.%d %d" % (v, c) for v in (0, 1) for c in (400, 413, 414, 431)}


class NoDaemon:
    """The static pages need no daemon state; touching it would be a bug here."""


@pytest.fixture
async def serve():
    started: list[HttpServer] = []

    async def start(token: str | None = None) -> str:
        srv = HttpServer(NoDaemon(), token)
        await srv.start("127.0.0.1", 0)
        started.append(srv)
        return srv.url

    yield start
    for srv in started:
        await srv.stop()


async def get(url: str, **kw) -> tuple[int, str]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as s:
        async with s.get(url, **kw) as r:
            return r.status, await r.text()


async def raw(url: str, payload: bytes, read_timeout: float = 5.0) -> bytes:
    """Send raw bytes; return what comes back before the server closes (or the timeout)."""
    host, port = url.removeprefix("http://").rstrip("/").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(payload)
        await writer.drain()
        return await asyncio.wait_for(reader.read(1 << 16), read_timeout)
    finally:
        writer.close()


async def test_pages_are_served_with_a_strict_content_policy(serve):
    url = await serve()
    status, body = await get(url)
    assert status == 200 and "<script src=\"/static/app.js\"" in body
    async with aiohttp.ClientSession() as s:
        async with s.get(url + "static/app.js") as r:
            assert r.status == 200 and "textContent" in await r.text()
            assert "script-src 'self'" in r.headers["Content-Security-Policy"]
            assert ".innerHTML" not in await r.text()   # data never goes through the parser


@pytest.mark.parametrize("path", ["nope", "static/server.py", "static/..%2Fserver.py",
                                  "api/", "metricsx", "static/"])
async def test_unknown_paths_are_404(serve, path):
    url = await serve()
    status, _ = await get(url + path)
    assert status == 404


async def test_it_is_read_only(serve):
    url = await serve()
    async with aiohttp.ClientSession() as s:
        for method in ("POST", "PUT", "DELETE", "PATCH"):
            async with s.request(method, url + "api/snapshot", data=b"x") as r:
                assert r.status == 405, method


async def test_a_token_is_required_when_configured(serve):
    url = await serve(TOKEN)
    assert (await get(url))[0] == 401
    assert (await get(url + "metrics"))[0] == 401
    assert (await get(url + "nope"))[0] == 401                  # no probing without it
    assert (await get(url, headers={"Authorization": "Bearer wrong"}))[0] == 401
    assert (await get(url + "?token=wrong"))[0] == 401
    assert (await get(url, headers={"Authorization": f"Bearer {TOKEN}"}))[0] == 200
    assert (await get(url + f"?token={TOKEN}"))[0] == 200


async def test_oversized_request_lines_and_headers_are_refused(serve, caplog):
    url = await serve()
    long_line = b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    assert (await raw(url, long_line))[:12] in REFUSED
    huge_header = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 100_000 + b"\r\n\r\n"
    assert (await raw(url, huge_header))[:12] in REFUSED
    many = b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(
        b"X-%d: 1\r\n" % i for i in range(http_server.MAX_HEADERS + 50)) + b"\r\n"
    assert (await raw(url, many))[:12] in REFUSED
    body = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\n" + b"x" * 1000
    assert (await raw(url, body))[9:12] == b"405"
    assert (await get(url))[0] == 200                           # still serving
    logged = [r for r in caplog.records if r.name.startswith(("sedma.http", "aiohttp"))]
    assert logged and all(r.exc_info is None and "\n" not in r.getMessage() for r in logged)


async def test_a_slow_client_is_cut_and_does_not_hold_up_others(serve, monkeypatch):
    monkeypatch.setattr(http_server, "MAX_CONNECTION_SECONDS", 1.0)
    url = await serve()
    host, port = url.removeprefix("http://").rstrip("/").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    await writer.drain()

    async def trickle() -> None:
        for _ in range(50):          # one byte every 0.1 s: 5 s if nobody cuts it
            await asyncio.sleep(0.1)
            writer.write(b"z")
            try:
                await writer.drain()
            except ConnectionError:
                return

    dripping = asyncio.ensure_future(trickle())
    try:
        assert (await get(url))[0] == 200          # others are served meanwhile
        assert await asyncio.wait_for(reader.read(), 4.0) == b""   # closed at ~1 s
    finally:
        dripping.cancel()
        writer.close()


async def test_connections_beyond_the_cap_are_closed_at_once(serve, monkeypatch):
    monkeypatch.setattr(http_server, "MAX_CONNECTIONS", 4)
    url = await serve()
    host, port = url.removeprefix("http://").rstrip("/").split(":")
    held = [await asyncio.open_connection(host, int(port)) for _ in range(4)]
    await asyncio.sleep(0.1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert await asyncio.wait_for(reader.read(), 2.0) == b""
    except ConnectionResetError:
        pass
    finally:
        writer.close()
    for _, w in held:
        w.close()
    await asyncio.sleep(0.2)
    assert (await get(url))[0] == 200                           # freed slots serve again


def test_a_dashboard_off_loopback_needs_a_token(tmp_path):
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.0.2.1")
    with pytest.raises(ConfigError, match="http-token"):
        build_config(None, {"http": "0.0.0.0:7947"})
    assert build_config(None, {"http": "0.0.0.0:7947", "http_token": "t"}).http_token == "t"
    assert build_config(None, {"http": "off"}).http == "off"
    assert NodeConfig().http is None                            # default address, best effort
    with pytest.raises(ConfigError, match="HOST:PORT"):
        build_config(None, {"http": "nonsense:port"})


def test_token_files_are_checked(tmp_path):
    good = tmp_path / "token"
    good.write_text(TOKEN + "\n")
    assert read_token(str(good)) == TOKEN
    short = tmp_path / "short"
    short.write_text("abc")
    with pytest.raises(ConfigError, match="at least 16"):
        read_token(str(short))
    with pytest.raises(ConfigError, match="cannot read"):
        read_token(str(tmp_path / "missing"))


async def test_the_default_address_is_best_effort_an_explicit_one_is_not(serve, monkeypatch):
    from types import SimpleNamespace

    url = await serve()
    taken = url.removeprefix("http://").rstrip("/")
    monkeypatch.setattr(http_server, "DEFAULT_HTTP", taken)
    daemon = SimpleNamespace(config=NodeConfig())
    assert await http_server.start_http(daemon) is None        # in use: run without one
    daemon.config = NodeConfig(http=taken)
    with pytest.raises(OSError, match="cannot serve the dashboard on"):
        await http_server.start_http(daemon)
    daemon.config = NodeConfig(http="off")
    assert await http_server.start_http(daemon) is None


def test_json_is_strict_even_with_non_finite_numbers():
    import json

    import numpy as np

    from node.http.server import to_json

    doc = {"capacity": float("nan"), "rtt": [1.5, float("inf")], "n": np.float32(2.5),
           "bad": np.float64("nan"), "name": "<script>"}
    assert json.loads(to_json(doc)) == {"capacity": None, "rtt": [1.5, None], "n": 2.5,
                                        "bad": None, "name": "<script>"}
