"""Python client for a local sedma daemon (async and sync), used by the CLI too.

    from node.client import Client
    with Client() as c:                      # $SEDMA_SOCKET or the default data dir
        print(c.status()["id"])
        c.deploy("w", W)
        y = c.infer("w", x)
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from compute.lazynumpy import np

from node import api, shm
from node.runtime import spans
from node.config import DEFAULT_DATA_DIR, SOCKET_NAME
from protocol.errors import ProtocolError
from protocol.messages import decode_message, encode_message

#: ``progress(phase, done_bytes, total_bytes)``: phase is "upload" or "download".
Progress = Callable[[str, int, int], None]
#: Bytes written or read between two progress reports (and drains).
CHUNK = 1 << 20
_LEN = struct.Struct(">I")    # the local API's frame header (see node.api)


#: Matrices above this go to the daemon as a file, not inside one API message.
INLINE_DEPLOY_BYTES = 256 << 20


@contextlib.contextmanager
def npy_for_daemon(w: np.ndarray) -> Iterator[Path]:
    """``w`` as a ``.npy`` file the daemon can read by path, removed afterwards.

    Why a memfd: a temporary file on disk made a 1 GiB deploy write W to disk twice (this
    file, whose writeback competed with the daemons' fsyncs, then the block files) and
    wait on dirty-page throttling. The ``.npy`` goes into an anonymous ``memfd`` instead,
    reached through a ``w.npy`` symlink to ``/proc/<pid>/fd/<n>`` (the daemon runs as this
    user on this machine, as for any file deploy); the kernel frees it when this process
    ends, also on ``kill -9``. Without memfd support: a temporary file, as before.
    """
    with tempfile.TemporaryDirectory(prefix="sedma-deploy-") as tmp:
        path = Path(tmp) / "w.npy"
        if not hasattr(os, "memfd_create") or not Path("/proc/self/fd").is_dir():
            np.save(path, w)
            yield path
            return
        fd = os.memfd_create("sedma-deploy", os.MFD_CLOEXEC)
        try:
            with os.fdopen(os.dup(fd), "wb") as f:
                np.save(f, w)
            path.symlink_to(f"/proc/{os.getpid()}/fd/{fd}")
            yield path
        finally:   # freeing a GiB of pages takes the kernel ~0.5 s: not on the caller's time
            threading.Thread(target=os.close, args=(fd,), name="sedma-memfd-close",
                             daemon=True).start()


class DaemonError(Exception):
    """The daemon refused or failed a request; the message is the daemon's."""


class NotRunning(DaemonError):
    """No daemon listens on the socket."""


def default_socket() -> Path:
    """``$SEDMA_SOCKET``, else the socket in the default data directory."""
    env = os.environ.get("SEDMA_SOCKET")
    if env:
        return Path(env).expanduser()
    return Path(DEFAULT_DATA_DIR).expanduser() / SOCKET_NAME


def shm_default() -> bool:
    """Shared memory for operands and results unless ``$SEDMA_NO_SHM`` is set."""
    return not os.environ.get("SEDMA_NO_SHM") and shm.available()


class AsyncClient:
    """One connection to the daemon; requests are answered in order.

    Operands and results of a large request travel through shared memory (:mod:`node.shm`)
    unless ``use_shm`` is False (or ``$SEDMA_NO_SHM`` is set); the daemon is on this
    machine anyway. If the daemon cannot open this process's memory (e.g. /proc hidden),
    the request is sent again on the socket and the connection stays on the socket.
    """

    def __init__(self, socket_path: str | Path | None = None,
                 use_shm: bool | None = None) -> None:
        self.path = Path(socket_path).expanduser() if socket_path else default_socket()
        self.use_shm = shm_default() if use_shm is None else use_shm
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._channel: shm.Channel | None = None
        #: Whether to send through a reusable arena; off for a daemon from before arenas,
        #: which refuses one but still reads per-message memfds.
        self._arenas = True
        #: Whether to ask for results as files to map (``api.result_shared``); off for a
        #: daemon from before result files, which does not know that message.
        self._shared_results = True
        self._lock = asyncio.Lock()

    async def connect(self) -> "AsyncClient":
        try:
            self._reader, self._writer = await asyncio.open_unix_connection(str(self.path))
            self._channel = shm.Channel(self._writer.get_extra_info("socket"),
                                        send=self.use_shm, follow=False, writable=True,
                                        arenas=self._arenas, files=True)
        except (FileNotFoundError, ConnectionRefusedError):
            raise NotRunning(f"no sedma daemon is listening on {self.path} "
                             "(start one with `sedma daemon`, or pass --socket)") from None
        except PermissionError:
            raise NotRunning(f"permission denied on {self.path}: it belongs to another user") from None
        return self

    async def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        if self._writer is not None:
            self._writer.close()
            try:
                await self._writer.wait_closed()
            except (ConnectionError, OSError):
                pass
            self._writer = None
        await _reap_mappings()

    async def __aenter__(self) -> "AsyncClient":
        return await self.connect()

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def call(self, request: Any, progress: Progress | None = None) -> Any:
        """Send one request; return its value or raise :class:`DaemonError`.

        With ``progress``, the request is written and the answer read on the socket in
        ``CHUNK``-sized pieces and each piece is reported (same bytes on the wire, just
        observed); such a call does not use shared memory, where there is nothing to
        observe."""
        response = await self._exchange(request, progress)
        if (isinstance(request, api.SharedResultRequest) and not response.ok
                and _SHARED_UNKNOWN in (response.error or "")):
            self._shared_results = False    # an older daemon: ask for the bytes instead
            await self.close()              # it closed the connection after refusing
            request = api.ResultRequest(request.job_id)
            response = await self._exchange(request, progress)
        if self._refused_shm(response) and self._arenas and _ARENA_REFUSED in response.error:
            self._arenas = False        # a daemon from before arenas: per-message memfds
            await self.close()
            response = await self._exchange(request, progress)
        if self._refused_shm(response):
            self.use_shm = False        # this daemon cannot read our memory: use the socket
            await self.close()
            response = await self._exchange(request, progress)
        if not response.ok:
            raise DaemonError(response.error or "request failed")
        return response.value

    def _refused_shm(self, response: "api.Response") -> bool:
        return (not response.ok and self.use_shm
                and (response.error or "").startswith(_SHM_REFUSED))

    async def _exchange(self, request: Any, progress: Progress | None) -> "api.Response":
        if self._writer is None:
            await self.connect()
        async with self._lock:
            try:
                if progress is None:
                    spans.mark("client.send")
                    await api.write_message(self._writer, request, self._channel)
                    response = await api.read_message(self._reader, self._channel)
                    spans.mark("client.recv")
                    self._channel.release()     # the daemon has read our request
                else:
                    await _write_observed(self._writer, request, progress)
                    response = decode_message(await _read_observed(self._reader, progress))
            except (asyncio.IncompleteReadError, ConnectionError) as exc:
                await self.close()
                raise DaemonError(f"the daemon closed the connection: {exc}") from None
            except ProtocolError as exc:
                await self.close()
                raise DaemonError(f"bad response from the daemon: {exc}") from None
            except BaseException:
                # Cancelled or timed out mid-call: the answer may still arrive, and must not
                # be read as the answer to the next call. Start afresh.
                await self.close()
                raise
        await _reap_mappings()      # results the caller has dropped since the last call
        if not isinstance(response, api.Response):
            raise DaemonError("unexpected response type from the daemon")
        return response

    # operations -------------------------------------------------------------------
    async def status(self, mesh: bool = False) -> dict:
        return await self.call(api.StatusRequest(mesh))

    async def memory(self) -> dict:
        """Tiers, each block's tier, prefetch figures, learned peers, request rates and the
        last reconfiguration decisions (``sedma memory``)."""
        return await self.call(api.MemoryRequest())

    async def peers(self) -> list[dict]:
        return await self.call(api.PeersRequest())

    async def jobs(self) -> list[dict]:
        return await self.call(api.JobsRequest())

    async def devices(self) -> list[dict]:
        return await self.call(api.DevicesRequest())

    async def submit_matmul(self, a: np.ndarray, b: np.ndarray, device: str | None = None,
                            seed: int = 0, progress: Progress | None = None) -> str:
        return (await self.call(api.SubmitRequest("matmul", a, b, device, seed), progress))["id"]

    async def job(self, job_id: str) -> dict:
        return await self.call(api.JobRequest(job_id))

    async def wait(self, job_id: str, timeout: float = 600.0) -> dict:
        """Wait for a job to reach a final state (bounded by ``timeout``)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            info = await self.call(api.WaitRequest(job_id, max(0.0, min(left, 30.0))))
            if info["state"] in ("done", "failed", "cancelled") or left <= 0:
                return info

    async def result(self, job_id: str, progress: Progress | None = None) -> np.ndarray:
        # map the daemon's stored result file rather than have it copied (only when the
        # answer comes through shared memory; with ``progress`` it cannot)
        if self.use_shm and progress is None and self._shared_results:
            return await self.call(api.SharedResultRequest(job_id))
        return await self.call(api.ResultRequest(job_id), progress)

    async def cancel(self, job_id: str) -> dict:
        return await self.call(api.CancelRequest(job_id))

    async def matmul(self, a: np.ndarray, b: np.ndarray, device: str | None = None,
                     seed: int = 0, timeout: float = 600.0) -> np.ndarray:
        """Submit, wait, and fetch the result; raise DaemonError if the job failed."""
        job_id = await self.submit_matmul(a, b, device, seed)
        info = await self.wait(job_id, timeout)
        if info["state"] != "done":
            raise DaemonError(f"job {job_id} {info['state']}: {info.get('error')}")
        return await self.result(job_id)

    async def deploy(self, name: str, w: np.ndarray | str | Path, device: str | None = None,
                     replicas: int | None = None, seed: int = 0, timeout: float = 600.0,
                     progress: Progress | None = None) -> dict:
        """Deploy a matrix W or a model file (``.npy``, ``.onnx``, ``.safetensors``) as
        resident blocks; returns the finished job record.

        A file is read by the daemon itself, block by block (it runs on this machine as this
        user: the socket is private to the user). A matrix too large for one API message is
        written to a private temporary ``.npy`` and deployed the same way.
        """
        if isinstance(w, (str, Path)):
            request = api.DeployFileRequest(name, str(Path(w).expanduser().resolve()), device,
                                            replicas, seed)
            return await self._deploy(name, request, timeout, None)
        if isinstance(w, np.ndarray) and w.nbytes > INLINE_DEPLOY_BYTES:
            with npy_for_daemon(w) as path:   # not resolved: it may be a link to a memfd
                request = api.DeployFileRequest(name, str(path), device, replicas, seed)
                return await self._deploy(name, request, timeout, None)
        return await self._deploy(name, api.DeployRequest(name, w, device, replicas, seed),
                                  timeout, progress)

    async def _deploy(self, name: str, request: Any, timeout: float,
                      progress: Progress | None) -> dict:
        job = await self.call(request, progress)
        info = await self.wait(job["id"], timeout)
        if info["state"] != "done":
            raise DaemonError(f"deploy of {name} {info['state']}: {info.get('error')}")
        return info

    async def infer(self, name: str, x: np.ndarray, read_seed: int | None = None,
                    progress: Progress | None = None) -> np.ndarray:
        """Run a deployed matrix (``W @ X``) or model (X in the model's layout) on X."""
        return await self.call(api.InferRequest(name, x, read_seed), progress)

    async def undeploy(self, name: str) -> dict:
        """Remove a deployment from every holder (idempotent); returns what was freed."""
        return await self.call(api.UndeployRequest(name))

    async def deployments(self) -> list[dict]:
        """Every matrix and model the mesh knows: kind, layers, placement, health, traffic."""
        return await self.call(api.DeploymentsRequest())


async def _reap_mappings() -> None:
    """Unmap big received mappings (results, :data:`node.shm.REAPER`) nothing uses any
    more, on a worker thread: the reaper holds each one until reaped, so without this a
    client's dropped results would stay mapped for the process's life. A mapping still
    in use (the reply just read, a result the caller keeps) is left alone."""
    if shm.REAPER.pending():
        await asyncio.get_running_loop().run_in_executor(None, shm.REAPER.reap)


async def _write_observed(writer: asyncio.StreamWriter, msg: Any, progress: Progress) -> None:
    """:func:`node.api.write_frame`, in ``CHUNK`` pieces reported to ``progress``."""
    parts = encode_message(msg)
    total = sum(len(p) for p in parts)
    if total > api.API_MAX_FRAME:
        raise ProtocolError(f"request of {total} bytes exceeds the {api.API_MAX_FRAME}-byte "
                            "frame limit")
    writer.write(_LEN.pack(total))
    done = 0
    progress("upload", 0, total)
    for part in parts:
        view = memoryview(part).cast("B")
        for start in range(0, len(view), CHUNK):
            piece = view[start:start + CHUNK]
            writer.write(piece)
            await writer.drain()
            done += len(piece)
            progress("upload", done, total)


async def _read_observed(reader: asyncio.StreamReader, progress: Progress) -> bytearray:
    """:func:`node.api.read_frame`, in ``CHUNK`` pieces reported to ``progress``."""
    (total,) = _LEN.unpack(await reader.readexactly(_LEN.size))
    if total > api.API_MAX_FRAME:
        raise ProtocolError(f"frame of {total} bytes exceeds the {api.API_MAX_FRAME}-byte limit")
    buf = bytearray(total)
    done = 0
    progress("download", 0, total)
    while done < total:
        piece = await reader.readexactly(min(CHUNK, total - done))
        buf[done:done + len(piece)] = piece
        done += len(piece)
        progress("download", done, total)
    return buf


#: How the daemon words a refused shared-memory handle (see node/api.py, node/shm.py).
_SHM_REFUSED = "bad request: shared-memory handle"
#: What a daemon from before arenas says of one (it wants every memfd sealed against writes).
_ARENA_REFUSED = "not sealed against changes"
#: What a daemon from before result files says of ``api.result_shared`` (protocol/messages.py).
_SHARED_UNKNOWN = "unknown message type 'api.result_shared'"


class Client:
    """Blocking wrapper around :class:`AsyncClient` with its own event loop."""

    def __init__(self, socket_path: str | Path | None = None,
                 use_shm: bool | None = None) -> None:
        self._loop = asyncio.new_event_loop()
        self._client = AsyncClient(socket_path, use_shm)

    def __enter__(self) -> "Client":
        self._run(self._client.connect())
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        if not self._loop.is_closed():
            self._run(self._client.close())
            self._loop.close()

    def _run(self, coro):
        return self._loop.run_until_complete(coro)

    def __getattr__(self, name: str):
        method = getattr(self._client, name)
        if not asyncio.iscoroutinefunction(method):
            raise AttributeError(name)
        return lambda *a, **kw: self._run(method(*a, **kw))
