"""The local API: typed requests over a Unix domain socket (mode 0600) in the data dir.

Each request and response is one length-prefixed frame (:mod:`protocol.wire`) holding a
msgpack payload (:mod:`protocol.codec`, arrays out of band). A request is a registered
message (``api.*``); the response is :class:`Response`. A malformed request gets an error
response naming the problem and the connection is closed; nothing reaches the daemon's
state. Only the owner of the data directory can connect (file mode 0600).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import struct
from pathlib import Path
from typing import Any, Awaitable, Callable

import numpy as np

from node.errors import UserError, internal_message  # UserError is re-exported
from protocol.errors import ProtocolError
from protocol.messages import decode_message, encode_message, message

log = logging.getLogger("sedma.api")

#: Largest request or response frame: a job's operands travel in one frame.
API_MAX_FRAME = (1 << 31) - 1
_LEN = struct.Struct(">I")


@message("api.response")
class Response:
    ok: bool
    value: Any = None
    error: str | None = None


@message("api.status")
class StatusRequest:
    mesh: bool = False       # also every member's metrics (from their adverts)


@message("api.memory")
class MemoryRequest:
    pass


@message("api.peers")
class PeersRequest:
    pass


@message("api.jobs")
class JobsRequest:
    pass


@message("api.devices")
class DevicesRequest:
    pass


@message("api.submit")
class SubmitRequest:
    kind: str
    a: np.ndarray
    b: np.ndarray
    device: str | None = None
    seed: int = 0


@message("api.job")
class JobRequest:
    job_id: str


@message("api.wait")
class WaitRequest:
    job_id: str
    timeout: float = 60.0


@message("api.result")
class ResultRequest:
    job_id: str


@message("api.cancel")
class CancelRequest:
    job_id: str


@message("api.deploy")
class DeployRequest:
    name: str
    w: np.ndarray
    device: str | None = None
    replicas: int | None = None
    seed: int = 0


@message("api.infer")
class InferRequest:
    name: str
    x: np.ndarray
    read_seed: int | None = None


@message("api.deploy_file")
class DeployFileRequest:
    """Deploy a model file the daemon reads itself (same machine and user as the client)."""

    name: str
    path: str
    device: str | None = None
    replicas: int | None = None
    seed: int = 0


@message("api.undeploy")
class UndeployRequest:
    name: str


@message("api.deployments")
class DeploymentsRequest:
    pass


Dispatch = Callable[[Any], Awaitable[Any]]




def ensure_socket_free(path: Path) -> None:
    """Remove a stale socket file; refuse if a live daemon still listens on it."""
    if not path.exists():
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        path.unlink()
        return
    finally:
        probe.close()
    raise UserError(f"another daemon is already listening on {path}")


async def serve(path: Path, dispatch: Dispatch) -> asyncio.AbstractServer:
    """Listen on ``path`` (mode 0600); each request goes to ``dispatch``."""
    ensure_socket_free(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    old = os.umask(0o177)
    try:
        server = await asyncio.start_unix_server(
            lambda r, w: _connection(r, w, dispatch), path=str(path), limit=1 << 20)
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    return server


async def _connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      dispatch: Dispatch) -> None:
    try:
        while True:
            try:
                payload = await read_frame(reader)
            except asyncio.IncompleteReadError:
                return
            try:
                request = decode_message(payload)
            except ProtocolError as exc:
                log.warning("bad local request: %s", exc)
                await write_frame(writer, Response(False, error=f"bad request: {exc}"))
                return
            await write_frame(writer, await _answer(request, dispatch))
    except ProtocolError as exc:
        log.warning("closing local client: %s", exc)
        try:
            await write_frame(writer, Response(False, error=f"bad request: {exc}"))
        except (OSError, ProtocolError):
            pass
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


async def _answer(request: Any, dispatch: Dispatch) -> Response:
    try:
        return Response(True, await dispatch(request))
    except UserError as exc:
        return Response(False, error=str(exc) or type(exc).__name__)
    except Exception as exc:   # a bug (KeyError, ValueError... included): say so, loudly
        log.exception("local request %s failed", type(request).__name__)
        return Response(False, error=internal_message(exc))


#: Frames move in pieces of this size: no single step copies more on the event loop.
IO_CHUNK = 1 << 20


async def read_frame(reader: asyncio.StreamReader, max_frame: int = API_MAX_FRAME) -> np.ndarray:
    """One frame, filled in ``IO_CHUNK`` pieces as its bytes arrive.

    ``readexactly`` would copy the whole frame in one step on the event loop. The buffer is
    a numpy array: its pages become resident only as bytes arrive, and (huge-page backed)
    it is freed in ~1 ms where a 1 GiB bytearray spends ~90 ms unmapping on the loop.
    """
    (size,) = _LEN.unpack(await reader.readexactly(_LEN.size))
    if size > max_frame:
        raise ProtocolError(f"frame of {size} bytes exceeds the {max_frame}-byte limit")
    buf = np.empty(size, dtype=np.uint8)
    filled = 0
    while filled < size:
        chunk = await reader.read(min(size - filled, IO_CHUNK))
        if not chunk:
            raise asyncio.IncompleteReadError(buf[:min(filled, 64)].tobytes(), size)
        buf[filled:filled + len(chunk)] = np.frombuffer(chunk, dtype=np.uint8)
        filled += len(chunk)
    return buf


async def write_frame(writer: asyncio.StreamWriter, msg: Any) -> None:
    """Write one frame in ``IO_CHUNK`` pieces, draining between them: handing a 1 GiB
    result to the transport at once makes it copy the unsent rest on the event loop."""
    parts = encode_message(msg)
    size = sum(len(p) for p in parts)
    if size > API_MAX_FRAME:
        raise ProtocolError(f"response of {size} bytes exceeds the frame limit")
    writer.write(_LEN.pack(size))
    for part in parts:
        view = memoryview(part).cast("B")
        for start in range(0, len(view), IO_CHUNK):
            writer.write(view[start:start + IO_CHUNK])
            await writer.drain()
    await writer.drain()
