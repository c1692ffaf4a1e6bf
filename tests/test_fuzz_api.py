"""Property-based fuzzing of the local API (node/api.py) in-process: frames and requests.

A local client is trusted with its own data but not with its bytes: whatever it sends, the
server answers with one :class:`Response` or closes that connection, hands the dispatcher
only registered, validated messages, leaks no task, and keeps serving the next client.
(The same against a real daemon, with its peer port too: tests/test_fuzz_daemon.py.)
"""

from __future__ import annotations

import asyncio
import struct
import tempfile
from pathlib import Path

from hypothesis import given, strategies as st

from node import api
from protocol.errors import ProtocolError
from protocol.messages import REGISTRY, decode_message, encode_message
from tests.test_fuzz_codec import forged_maps, payload, valid_messages


def framed(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


garbage = st.binary(max_size=300)
frames = st.one_of(
    garbage.map(framed),                                        # a frame of noise
    valid_messages().map(lambda m: framed(payload_of(m))),      # any registered message
    forged_maps().map(lambda m: framed(safe_payload(m))),       # typed maps, wrong fields
    st.integers(0, 2**32 - 1).map(lambda n: struct.pack(">I", n)),  # a bare header
    garbage)                                                    # raw bytes, no framing


def payload_of(msg) -> bytes:
    return b"".join(bytes(p) for p in encode_message(msg))


def safe_payload(obj) -> bytes:
    try:
        return payload(obj)
    except (TypeError, OverflowError, ValueError):
        return b"\x00\x00\x00\x00"


async def _scenario(chunks: list[bytes]) -> None:
    seen: list[object] = []

    async def dispatch(req):
        seen.append(req)
        if isinstance(req, api.StatusRequest):
            return {"ok": 1}
        raise api.UserError("not in this test")

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "s.sock"
        server = await api.serve(path, dispatch)
        baseline = len(asyncio.all_tasks())
        try:
            reader, writer = await asyncio.open_unix_connection(str(path))
            for chunk in chunks:
                writer.write(chunk)
            try:
                await writer.drain()
                writer.write_eof()
            except (ConnectionError, OSError):
                pass
            # every answer is a Response, until the server closes the connection
            while True:
                try:
                    body = await asyncio.wait_for(api.read_frame(reader), 5)
                except (asyncio.IncompleteReadError, ConnectionError):
                    break
                assert isinstance(decode_message(body), api.Response)
            writer.close()
            for req in seen:
                assert type(req) in REGISTRY.values()
            # the server still serves a well-behaved client
            reader, writer = await asyncio.open_unix_connection(str(path))
            await api.write_frame(writer, api.StatusRequest())
            answer = decode_message(await asyncio.wait_for(api.read_frame(reader), 5))
            assert answer == api.Response(True, {"ok": 1})
            writer.close()
            await asyncio.sleep(0)
            for _ in range(100):   # connection handlers finish promptly: no task leaks
                if len(asyncio.all_tasks()) <= baseline:
                    break
                await asyncio.sleep(0.01)
            assert len(asyncio.all_tasks()) <= baseline
        finally:
            server.close()
            await server.wait_closed()


@given(st.lists(frames, min_size=1, max_size=5))
def test_any_client_bytes_get_responses_or_a_close_and_the_server_keeps_serving(chunks):
    asyncio.run(_scenario(chunks))


@given(st.binary(max_size=200), st.integers(1, 1 << 31))
def test_read_frame_returns_a_frame_or_raises_a_protocol_or_eof_error(data, limit):
    async def go():
        reader = asyncio.StreamReader()
        reader.feed_data(data)
        reader.feed_eof()
        try:
            frame = await api.read_frame(reader, max_frame=limit)
        except (ProtocolError, asyncio.IncompleteReadError):
            return
        assert len(frame) <= limit and len(frame) + 4 <= len(data)
    asyncio.run(go())
