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

from compute import lazynumpy
from compute.lazynumpy import np

from node import shm
from node.runtime import spans
from node.errors import UserError, internal_message  # UserError is re-exported
from protocol import codec
from protocol.errors import ProtocolError
from protocol.framing import message_buffer
from protocol.messages import decode_message_on_loop, encode_message, from_wire, message

log = logging.getLogger("sedma.api")

#: Largest request or response frame: a job's operands travel in one frame.
API_MAX_FRAME = (1 << 31) - 1
#: Set in a frame's length word when the frame is a message header followed by a
#: :class:`node.shm.Handle`, its array bytes being in shared memory (:mod:`node.shm`).
SHM_FRAME = 1 << 31
#: Largest shared-memory frame on the socket: the handle, the msgpack header and, for a
#: small message, its data area inline.
SHM_MAX_FRAME = codec.MAX_HEADER + 2 * codec.ALIGN + shm.Handle.SIZE + shm.MIN_BYTES
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
    """A done job's result, read back by the daemon and sent (socket or shared memory)."""

    job_id: str


@message("api.result_shared")
class SharedResultRequest:
    """Like :class:`ResultRequest`, but the client maps the daemon's stored result file
    itself when the answer goes through shared memory (node/shm.py, result files): no
    read back, no copy -- for a file with a page-sized header and a data area of at least
    ``shm.ARENA_MAX``. An older result file or a smaller result is read back and sent as
    for :class:`ResultRequest`; so is any result answered on the socket.

    A message of its own, not a field of ``api.result``: a daemon from before result files
    refuses unknown fields, so a new field would cut a new client off from every older
    daemon; an unknown message type it refuses too, and the client then falls back to
    :class:`ResultRequest` (node/client.py)."""

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
    channel = shm.Channel(writer.get_extra_info("socket"), send=False, follow=True,
                          writable=False)
    try:
        while True:
            try:
                request = await read_message(reader, channel)
            except asyncio.IncompleteReadError:
                return
            finally:
                channel.release()   # the client has read our last answer, or is gone
            spans.mark("coord.decoded")
            if isinstance(request, ARRAY_REQUESTS):
                await lazynumpy.ready()     # off the loop, before anything touches arrays
            response = await _answer(request, dispatch)
            spans.mark("coord.answered")
            # Drop the operands (maybe a mapping of the client's memory) before writing: a
            # write to a vanished client raises, and the exception's traceback cycle would
            # keep this frame's locals alive until the next garbage collection.
            request = None
            await write_message(writer, response, channel)
            response = None
            reap_mappings()
    except ProtocolError as exc:
        log.warning("bad local request: %s", exc)
        try:
            await write_frame(writer, Response(False, error=f"bad request: {exc}"))
        except (OSError, ProtocolError):
            pass
    except (ConnectionError, OSError):
        pass
    finally:
        channel.close()     # arenas too: this connection's shared memory ends with it
        writer.close()
        reap_mappings()


_reaping: set[asyncio.Task] = set()
REAP_EVERY = 1.0


def reap_mappings() -> None:
    """Unmap big received mappings nothing uses any more, off the event loop; while some
    are still in use (a running job's operands), retry every ``REAP_EVERY`` seconds. No
    task exists when nothing is mapped, so an idle daemon pays nothing."""
    if _reaping or not shm.REAPER.pending():
        return
    task = asyncio.get_running_loop().create_task(_reap_until_done())
    _reaping.add(task)
    task.add_done_callback(_reaping.discard)


async def _reap_until_done() -> None:
    loop = asyncio.get_running_loop()
    while await loop.run_in_executor(None, shm.REAPER.reap):
        await asyncio.sleep(REAP_EVERY)


#: Requests whose handling reads or makes arrays (a file to deploy, a result to send):
#: numpy is loaded in a worker thread before they are answered, never on the event loop.
ARRAY_REQUESTS = (SubmitRequest, DeployRequest, InferRequest, DeployFileRequest,
                  ResultRequest, SharedResultRequest)


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
    return await _read_body(reader, size)


async def _read_body(reader: asyncio.StreamReader, size: int) -> bytearray | np.ndarray:
    buf = message_buffer(size)      # never imports numpy on the loop (a status request)
    view = memoryview(buf)
    filled = 0
    while filled < size:
        chunk = await reader.read(min(size - filled, IO_CHUNK))
        if not chunk:
            raise asyncio.IncompleteReadError(bytes(view[:min(filled, 64)]), size)
        view[filled:filled + len(chunk)] = chunk
        filled += len(chunk)
    return buf


async def write_frame(writer: asyncio.StreamWriter, msg: Any) -> None:
    """Write one frame in ``IO_CHUNK`` pieces, draining between them: handing a 1 GiB
    result to the transport at once makes it copy the unsent rest on the event loop."""
    parts = encode_message(msg)
    size = sum(len(p) for p in parts)
    if size > API_MAX_FRAME:
        raise ProtocolError(f"response of {size} bytes exceeds the frame limit")
    await _write_parts(writer, [_LEN.pack(size), *parts])


async def _write_parts(writer: asyncio.StreamWriter, parts: list) -> None:
    if sum(len(p) for p in parts) <= IO_CHUNK:    # small: one write, one drain
        writer.writelines(parts)
        await writer.drain()
        return
    for part in parts:
        view = memoryview(part).cast("B")
        for start in range(0, len(view), IO_CHUNK):
            writer.write(view[start:start + IO_CHUNK])
            await writer.drain()
    await writer.drain()


async def read_message(reader: asyncio.StreamReader, channel: shm.Channel | None = None,
                       max_frame: int = API_MAX_FRAME) -> Any:
    """Read and decode one message, its arrays from shared memory when the frame says so.

    A shared-memory frame is refused (:class:`ProtocolError`) without a ``channel``; a bad
    handle is a :class:`node.shm.ShmError` naming the problem.
    """
    (size,) = _LEN.unpack(await reader.readexactly(_LEN.size))
    if not size & SHM_FRAME:
        if size > max_frame:
            raise ProtocolError(f"frame of {size} bytes exceeds the {max_frame}-byte limit")
        if channel is not None:
            channel.note(False)
        body = await _read_body(reader, size)
        return await decode_message_on_loop(body)
    size &= ~SHM_FRAME
    if channel is None:
        raise ProtocolError("shared-memory frames are not accepted here")
    if size > SHM_MAX_FRAME:
        raise ProtocolError(f"shared-memory frame of {size} bytes exceeds the "
                            f"{SHM_MAX_FRAME}-byte limit")
    frame = memoryview(await reader.readexactly(size))
    handle = shm.Handle.unpack(frame)
    rest = frame[shm.Handle.SIZE:]
    if handle.fd == shm.INLINE:
        if handle.size > len(rest):
            raise ProtocolError("inline data area is larger than its frame")
        head, data = rest[:len(rest) - handle.size], rest[len(rest) - handle.size:]
    else:
        head, data = rest, channel.receive(handle)
    channel.note(True)
    if len(data):
        await lazynumpy.ready()
    return from_wire(codec.decode_split(head, data))


def _stored_result(msg: Any) -> str | None:
    """The result file whose tail is ``msg``'s data area: a successful response holding a
    memory map of a file whose data starts at ``shm.FILE_DATA_OFFSET`` (what
    ``JobManager.result(mapped=True)`` returns), else None."""
    if not isinstance(msg, Response) or lazynumpy.loaded() is None:
        return None
    value = msg.value
    if (isinstance(value, np.memmap) and value.filename
            and value.offset == shm.FILE_DATA_OFFSET):
        return value.filename
    return None


async def _export(channel: shm.Channel, msg: Any,
                  parts: list) -> tuple[list, shm.Handle | None]:
    """Put the data area of ``msg`` (encoded as ``parts``) in shared memory: the parts to
    send (another message's when a result file could not be named) and the handle, None
    to send the bytes inline."""
    data = parts[1:]
    stored = _stored_result(msg)
    if stored is not None:     # a result file: the client maps it, nothing is copied
        try:
            return parts, channel.export_file(stored, sum(len(p) for p in data))
        except (OSError, shm.ShmError) as exc:
            parts = encode_message(await _unshared_result(msg, stored, exc))
            data = parts[1:]
    if sum(len(p) for p in data) >= shm.REAP_BYTES:   # a big copy: not on the event loop
        return parts, await asyncio.get_running_loop().run_in_executor(
            None, channel.export, data)
    return parts, channel.export(data)


async def _unshared_result(msg: Any, path: str, exc: Exception) -> Any:
    """What to send when the result file ``path`` cannot be reopened to be named to the
    client. Gone (retention removed it since it was mapped, an ``OSError``): the bytes
    from our own map, which still holds them, read on a worker thread. Not what it was
    (a :class:`node.shm.ShmError`: its size changed): an error reply -- not "bad request",
    it is not the client's fault, and without the data dir's path."""
    if isinstance(exc, shm.ShmError):
        log.warning("result file %s changed on disk: %s", path, exc)
        return Response(False, error="the job's stored result is unreadable "
                                     "(its file changed on disk)")
    log.info("result file %s could not be reopened (%s): sending its bytes", path, exc)
    return await _read_back(msg)


async def _read_back(msg: Response) -> Response:
    """``msg`` with its mapped result read into memory, on a worker thread: faulting the
    map's pages in on the event loop would stall it."""
    return Response(True, await asyncio.get_running_loop().run_in_executor(
        None, np.array, msg.value))


async def write_message(writer: asyncio.StreamWriter, msg: Any,
                        channel: shm.Channel | None = None) -> None:
    """Write one message; its array bytes go through shared memory when ``channel``
    sends that way and they are worth it, else on the socket (:func:`write_frame`)."""
    if _stored_result(msg) is not None and (channel is None or not channel.send):
        # a result file's map asked for shared memory but the answer goes on the socket:
        # read it on a worker thread as before
        msg = await _read_back(msg)
    parts = encode_message(msg)
    if channel is None or not channel.send:
        size = sum(len(p) for p in parts)
        if size > API_MAX_FRAME:
            raise ProtocolError(f"message of {size} bytes exceeds the frame limit")
        await _write_parts(writer, [_LEN.pack(size), *parts])
        return
    parts, handle = await _export(channel, msg, parts)
    tail = []
    if handle is None:      # small: the bytes ride inline, the frame still asks for shm
        tail = parts[1:]
        handle = shm.Handle(shm.INLINE, sum(len(p) for p in tail))
    body = [handle.pack(), parts[0], *tail]
    await _write_parts(writer, [_LEN.pack(SHM_FRAME | sum(len(p) for p in body)), *body])
