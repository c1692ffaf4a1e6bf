"""The shared-memory local path: array bytes of an API message travel in a sealed memfd.

A client on the same machine as its daemon should not push operands through a socket (two
copies through the kernel and a reassembly buffer on the far side). Instead the sender
writes the *data area* of an encoded message (:mod:`protocol.codec`: everything after the
msgpack header) into an anonymous ``memfd``, seals it against any change (shrink, grow,
write, further seals) and sends on the socket only the header plus a :class:`Handle` — the
descriptor's number in the sender and the data size. The receiver opens the same memory
through ``/proc/<sender pid>/fd/<n>`` (the pid comes from ``SO_PEERCRED``, never from the
message), checks it is a sealed sedma memfd, maps it read-only (or copy-on-write) and
decodes arrays as views into that mapping: no copy at all on the receiving side.

Why memfd rather than ``multiprocessing.shared_memory``:

- *Always released, also when a process dies.* A memfd has no name in ``/dev/shm``; the
  kernel frees it when the last descriptor and mapping are gone. A client killed with
  ``kill -9`` at any moment cannot leave a segment behind, and no sweeper is needed.
  (Python 3.11's ``SharedMemory`` also registers every segment with a resource-tracker
  process that would unlink segments the other side still uses, and cannot be closed while
  numpy views exist.)
- *Safe against a misbehaving client.* Seals are checked by the receiver: a sealed memfd
  cannot shrink under the daemon's mapping (which would be ``SIGBUS``) nor change while a
  job reads it.

Ownership: the sender owns its descriptor (:class:`Outgoing`) and keeps it open until the
receiver has had the chance to open its own — a client until the reply arrives, the daemon
until the next request on that connection or the connection's end. Limits: at most
:data:`MAX_BYTES` per message. The path is used only above :data:`MIN_BYTES` (below it the
socket is as cheap as the extra system calls) and only on Linux; the socket path stays for
everything else, and for remote or untrusted use.

*Arenas: one memfd per connection and direction for the common sizes.* A fresh memfd per
message costs ~0.75 ms per MiB to create, fill (the kernel allocates and zeroes every page)
and free, and ~0.4 ms per MiB to map, fault in and unmap on the other side -- ~2.4 ms of
CPU per B=64 infer request at N=4096 (1 MiB X in, 1 MiB Y out) on the cores the compute
needs (bench/README.md, loop5). Data areas up to :data:`ARENA_MAX` therefore go through
an :class:`Arena` instead: a memfd the sender keeps for the connection's life, mapped
once at each end, sealed against shrinking and growing (no ``SIGBUS`` for the receiver)
but not against writes, since it is rewritten for every message. Because the sender can
still write to it, the receiver *copies the data area out* at once (~50 us per MiB) and
decodes from its private copy: a daemon's operands still cannot change under it, and a
client's results are its own. Each side writes its arena only for its next message, which
the protocol (one request, then its answer) orders after the other side's copy. The
arena is released when the connection ends, also when the client is killed (the kernel
closes its descriptors; the daemon closes its end when the socket does).

*Result files: a finished job's stored result, handed over as it lies in the data dir.*
A one-shot result is written once to the daemon's data dir (it must survive a crash).
Reading it back and copying it into a fresh memfd cost ~30 ms of CPU per 16 MiB result
and a second resident copy (bench/README.md, result6). Instead, when the client asked for
it (``api.SharedResultRequest``) and the data area is at least :data:`ARENA_MAX` (a
smaller one goes through the arena rather than hold a descriptor and a mapping of its
own), the daemon opens the file read-only and sends its descriptor as the handle
(:class:`SharedFile`); the client maps the file copy-on-write and keeps the data area
(which starts at :data:`FILE_DATA_OFFSET`, page-aligned). Only a client
accepts such handles (``Channel(files=True)``): a regular file cannot be sealed, so the
daemon never maps one a client names. For the client the file is safe to map: the
daemon writes a result once to a temp file renamed into place and never changes or
truncates it afterwards (a forgotten job's file is unlinked, which leaves a mapping whole).
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import socket
import stat
import struct
import sys
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Sequence

from protocol.errors import ProtocolError
from protocol.framing import message_buffer

#: Messages whose array bytes are smaller than this go through the socket.
MIN_BYTES = 256 << 10
#: Largest data area accepted through shared memory (a job's operands and result: 4 GiB).
MAX_BYTES = 4 << 30
#: The name every sedma memfd carries (seen in /proc/PID/fd as "/memfd:sedma-api").
MEMFD_NAME = "sedma-api"
_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL \
    if hasattr(fcntl, "F_SEAL_SHRINK") else 0
#: The name of a connection's reusable memfd (:class:`Arena`); it starts with MEMFD_NAME, so
#: tools that look for sedma's shared memory see it, and a daemon from before arenas
#: refuses it as "not sealed against changes" (the client then sends per-message memfds).
ARENA_NAME = MEMFD_NAME + "-arena"
#: Largest data area sent through an arena: bigger ones get a sealed memfd of their own
#: (a connection then keeps at most this much shared memory mapped per direction).
ARENA_MAX = 8 << 20
#: Arena capacities are multiples of this (a slightly bigger message reuses the arena).
ARENA_STEP = 1 << 20
_ARENA_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL \
    if hasattr(fcntl, "F_SEAL_SHRINK") else 0
#: Where a shared result file's data area starts (node/work/jobs.py writes the .npy header
#: padded to it): a page boundary, so the client maps the data area itself.
FILE_DATA_OFFSET = 4096
#: Handle "descriptor" meaning: the data area follows the header inline on the socket (a
#: small message from a peer that takes its answer through shared memory).
INLINE = 0xFFFFFFFF
_HANDLE = struct.Struct(">IQ")
_PEERCRED = struct.Struct("3i")


class ShmError(ProtocolError):
    """A shared-memory handle could not be used; the message says why."""


@dataclass(frozen=True)
class Handle:
    """What the socket carries instead of the bytes: a descriptor number and a size."""

    fd: int
    size: int

    SIZE = _HANDLE.size

    def pack(self) -> bytes:
        return _HANDLE.pack(self.fd, self.size)

    @classmethod
    def unpack(cls, data: bytes | memoryview) -> "Handle":
        if len(data) < _HANDLE.size:
            raise ShmError("shared-memory handle is truncated")
        return cls(*_HANDLE.unpack_from(data, 0))


def available() -> bool:
    """Linux with memfd sealing and /proc: the only place this path is offered."""
    return (sys.platform.startswith("linux") and hasattr(os, "memfd_create")
            and _SEALS != 0 and os.path.isdir("/proc/self/fd"))


def peer_pid(sock: socket.socket | None) -> int | None:
    """The pid of the process at the other end of a Unix socket (``SO_PEERCRED``)."""
    if sock is None or not hasattr(socket, "SO_PEERCRED"):
        return None
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    except OSError:
        return None
    pid = _PEERCRED.unpack(raw)[0]
    return pid if pid > 0 else None


#: Sealing against writes waits for every page of the memfd to lose its transient extra
#: references (per-CPU LRU batches, the kernel's memory sampler); when that wait times out
#: the kernel answers EBUSY although nothing else uses the file. Seen once in a benchmark
#: on this VM; retried a few times, then it is the caller's error as before.
SEAL_RETRIES = 5
SEAL_RETRY_DELAY = 0.01   # seconds, doubled per retry (at most ~0.3 s in all)


def _seal(fd: int) -> None:
    delay = SEAL_RETRY_DELAY
    for attempt in range(SEAL_RETRIES + 1):
        try:
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
            return
        except OSError as exc:
            if exc.errno != errno.EBUSY or attempt == SEAL_RETRIES:
                raise
        time.sleep(delay)
        delay *= 2


class _SentDescriptor:
    """A descriptor this end names to the peer in a handle and closes once the peer has
    had its chance to open it (it may close it any time after that)."""

    fd: int
    handle: "Handle"

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class Outgoing(_SentDescriptor):
    """A sealed memfd holding one message's data area; the sender closes it when the
    receiver has had its chance to open it (it may close it any time after that)."""

    def __init__(self, parts: Sequence[bytes | memoryview]) -> None:
        size = sum(len(p) for p in parts)
        if size > MAX_BYTES:
            raise ShmError(f"{size} bytes exceed the {MAX_BYTES}-byte shared-memory limit")
        self.fd = os.memfd_create(MEMFD_NAME, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(self.fd, size)
            _write_all(self.fd, parts)
            _seal(self.fd)
        except BaseException:
            os.close(self.fd)
            raise
        self.handle = Handle(self.fd, size)

    def __enter__(self) -> "Outgoing":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SharedFile(_SentDescriptor):
    """A result file of the daemon's, open read-only for a client to map (see the module's
    docstring); closed like :class:`Outgoing`, once the client has had its chance."""

    def __init__(self, path: str | os.PathLike, size: int) -> None:
        self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            have = os.fstat(self.fd).st_size - FILE_DATA_OFFSET
            if not 0 < size <= min(have, MAX_BYTES):
                raise ShmError(f"result file {path} holds {have} data bytes, not {size}")
        except BaseException:
            os.close(self.fd)
            raise
        self.handle = Handle(self.fd, size)


def _write_all(fd: int, parts: Sequence[bytes | memoryview]) -> None:
    """Write every part at its offset (a memfd behaves like a file); one kernel copy."""
    offset = 0
    for part in parts:
        view = memoryview(part).cast("B")
        done = 0
        while done < len(view):
            done += os.pwrite(fd, view[done:done + (1 << 30)], offset + done)
        offset += len(view)


def attach(pid: int | None, handle: Handle, writable: bool = False) -> memoryview:
    """Map the sender's memfd ``handle`` (sender ``pid``) and return its bytes.

    The mapping lives as long as any view of it (numpy arrays decoded from it keep it
    alive), so nothing has to be released by hand. ``writable`` maps it copy-on-write,
    which gives the caller writable arrays without copying anything it does not write.
    Every check failure is a :class:`ShmError` saying what was wrong.
    """
    path, target = _locate(pid, handle)
    _check_memfd(handle, target)
    return _attach_path(path, pid, handle, writable)


def _locate(pid: int | None, handle: Handle) -> tuple[str, str]:
    """Where the sender's descriptor is (``/proc/PID/fd/N``) and what it is (the link's
    target, ``/memfd:NAME (deleted)``), after the checks every handle gets."""
    if pid is None:
        raise ShmError("shared memory needs a local peer (its pid is unknown)")
    if not 0 <= handle.size <= MAX_BYTES:
        raise ShmError(f"shared-memory size {handle.size} is over the {MAX_BYTES}-byte limit")
    path = f"/proc/{pid}/fd/{handle.fd}"
    try:
        target = os.readlink(path)
    except OSError as exc:
        raise ShmError(f"shared-memory handle {handle.fd} of process {pid} cannot be "
                       f"opened: {exc.strerror}") from None
    return path, target


def _check_memfd(handle: Handle, target: str) -> None:
    if not target.startswith(f"/memfd:{MEMFD_NAME}"):
        raise ShmError(f"shared-memory handle {handle.fd} is not a sedma memfd ({target!r})")


def _open(path: str, pid: int, handle: Handle) -> int:
    try:
        return os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as exc:
        raise ShmError(f"shared-memory handle {handle.fd} of process {pid} cannot be "
                       f"opened: {exc.strerror}") from None


def _attach_path(path: str, pid: int, handle: Handle, writable: bool) -> memoryview:
    fd = _open(path, pid, handle)
    try:
        return _map_checked(fd, handle, writable)
    finally:
        os.close(fd)


def _sealed_stat(fd: int, what: str, seals: int, against: str) -> os.stat_result:
    """The stat of ``fd`` once it is sure to be a memfd carrying ``seals`` (what makes the
    peer's memory safe to map); ``what`` and ``against`` word the refusal."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise ShmError(f"shared-memory {what} is not a memory file")
    try:
        have = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
    except OSError:
        raise ShmError(f"shared-memory {what} is not a sealable memfd") from None
    if have & seals != seals:
        raise ShmError(f"shared-memory {what} is not sealed against {against}")
    return st


def _map_checked(fd: int, handle: Handle, writable: bool) -> memoryview:
    st = _sealed_stat(fd, "handle", _SEALS, "changes")
    if st.st_size != handle.size:
        raise ShmError(f"shared memory holds {st.st_size} bytes, the handle says {handle.size}")
    if handle.size == 0:
        return memoryview(b"")
    access = mmap.ACCESS_COPY if writable else mmap.ACCESS_READ
    mapping = mmap.mmap(fd, handle.size, access=access)
    view = memoryview(mapping)         # exported before the reaper can see the mapping
    if handle.size >= REAP_BYTES:
        REAPER.track(mapping)
    return view


def _attach_file(path: str, pid: int, handle: Handle, writable: bool) -> memoryview:
    """Map the data area of the daemon's result file (``writable``: copy-on-write).

    The map starts at offset 0 and the header is sliced off: an mmap offset must be a
    multiple of ``mmap.ALLOCATIONGRANULARITY``, which is 16 or 64 KiB on some systems, not
    the 4 KiB page the data starts on."""
    fd = _open(path, pid, handle)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ShmError("shared result handle is not a regular file")
        if st.st_size < FILE_DATA_OFFSET + handle.size:
            raise ShmError(f"shared result file holds {st.st_size} bytes, the handle says "
                           f"{handle.size} after {FILE_DATA_OFFSET}")
        if handle.size == 0:
            return memoryview(b"")
        access = mmap.ACCESS_COPY if writable else mmap.ACCESS_READ
        mapping = mmap.mmap(fd, FILE_DATA_OFFSET + handle.size, access=access)
    finally:
        os.close(fd)
    view = memoryview(mapping)[FILE_DATA_OFFSET:]
    if handle.size >= REAP_BYTES:
        REAPER.track(mapping)
    return view


class Arena:
    """A sender's reusable memfd of ``capacity`` bytes, mapped read-write at this end.

    Sealed against shrinking and growing (and further seals) once, at creation: the
    receiver's mapping can never lose its pages. Not sealed against writes: :meth:`write`
    puts every message's data area at its start (one copy into pages that stay resident),
    which is the point -- no memfd, no page allocation, no mapping per message.

    Held until :meth:`close` (the connection's end); an arena dropped without it (a client
    object garbage-collected unclosed) is released by its finalizer, not leaked for the
    process's life."""

    def __init__(self, capacity: int) -> None:
        if not 0 < capacity <= ARENA_MAX:
            raise ShmError(f"an arena holds 1 to {ARENA_MAX} bytes, not {capacity}")
        self.capacity = capacity
        self.fd = os.memfd_create(ARENA_NAME, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(self.fd, capacity)
            fcntl.fcntl(self.fd, fcntl.F_ADD_SEALS, _ARENA_SEALS)
            self._map = mmap.mmap(self.fd, capacity)
        except BaseException:
            os.close(self.fd)
            raise
        self._release = weakref.finalize(self, _close_arena, self._map, self.fd)

    @classmethod
    def for_size(cls, size: int) -> "Arena":
        """An arena for ``size`` bytes, rounded up to :data:`ARENA_STEP`."""
        return cls(min(ARENA_MAX, -(-max(size, 1) // ARENA_STEP) * ARENA_STEP))

    def write(self, parts: Sequence[bytes | memoryview]) -> Handle:
        """Copy ``parts`` to the arena's start; the handle that names them."""
        size = sum(len(p) for p in parts)
        if size > self.capacity:
            raise ShmError(f"{size} bytes do not fit a {self.capacity}-byte arena")
        pos = 0
        with memoryview(self._map) as view:
            for part in parts:
                with memoryview(part) as src:
                    flat = src if src.format == "B" and src.ndim == 1 else src.cast("B")
                    view[pos:pos + len(flat)] = flat
                    pos += len(flat)
        return Handle(self.fd, size)

    def close(self) -> None:
        self._release()          # once: a second call (or the finalizer after it) is a no-op
        self.fd = -1


def _close_arena(mapping: mmap.mmap, fd: int) -> None:
    mapping.close()
    os.close(fd)


@dataclass
class _Mapped:
    """The peer's arena as this end has mapped it (read-only), and which one it is: the
    descriptor number and the memfd's inode (a number may be reused for another file)."""

    fd: int
    inode: int
    mapping: mmap.mmap

    def close(self) -> None:
        self.mapping.close()


def _map_arena(path: str, pid: int, handle: Handle) -> _Mapped:
    """Map a peer's arena once, after checking what makes reading it safe: a memory file
    sealed against shrinking and growing, at least as big as the handle says."""
    fd = _open(path, pid, handle)
    try:
        st = _sealed_stat(fd, "arena", fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW, "resizing")
        if not 0 < st.st_size <= ARENA_MAX:
            raise ShmError(f"shared-memory arena of {st.st_size} bytes (limit {ARENA_MAX})")
        return _Mapped(handle.fd, st.st_ino, mmap.mmap(fd, st.st_size, access=mmap.ACCESS_READ))
    finally:
        os.close(fd)


#: Mappings at least this big are unmapped by :data:`REAPER` on a worker thread.
REAP_BYTES = 16 << 20


class Reaper:
    """Big received mappings, unmapped on a worker thread once nothing uses them.

    Unmapping costs time in proportion to the pages mapped (~0.1-0.3 s for 1 GiB on this
    machine): left to reference counting, it happens wherever the last array view dies,
    usually on the event loop. Holding each big mapping here keeps it alive until
    :meth:`reap` (called off the loop) finds no view left and closes it there.
    """

    def __init__(self) -> None:
        self._maps: list[mmap.mmap] = []
        self._lock = threading.Lock()

    def track(self, mapping: mmap.mmap) -> None:
        with self._lock:
            self._maps.append(mapping)

    def pending(self) -> int:
        with self._lock:
            return len(self._maps)

    def reap(self) -> int:
        """Unmap every tracked mapping no view uses any more; return how many are left."""
        with self._lock:
            maps = self._maps
            self._maps = []
        busy = []
        for mapping in maps:
            try:
                mapping.close()
            except BufferError:        # arrays still use it
                busy.append(mapping)
        with self._lock:
            self._maps += busy
            return len(self._maps)


REAPER = Reaper()


class Channel:
    """One connection's shared-memory state: the peer's pid, whether this end sends array
    bytes by shared memory, and the descriptors it still owes the peer.

    The two ends differ in ``send`` and ``follow``: a client sends every request as a
    shared-memory frame (``send``; a small one carries its bytes inline); the daemon
    answers a request through shared memory only when that request came as such a frame
    (``follow``, see :meth:`note`), which proves the client is local and willing.
    ``writable`` maps received data copy-on-write (the client's results: writable arrays,
    nothing copied unless written), else read-only (the daemon's operands).

    Data areas up to :data:`ARENA_MAX` go through this end's :class:`Arena` when
    ``arenas`` is set: always for a client; for the daemon once the client has sent one
    (a client from before arenas could not read them). The peer's arena is mapped once
    and every data area copied out of it. :meth:`close` releases both when the
    connection ends.
    """

    def __init__(self, sock: socket.socket | None, send: bool, follow: bool,
                 writable: bool, arenas: bool = False, files: bool = False) -> None:
        self.pid = peer_pid(sock)
        #: This end maps result files the peer names (a client of its own daemon only).
        self.files = files
        self.send = send and available() and self.pid is not None
        self.follow = follow
        self.writable = writable
        self.arenas = arenas
        self._owed: list[Outgoing | SharedFile] = []
        self._arena: Arena | None = None
        self._peer_arena: _Mapped | None = None
        #: Peer arenas mapped and data areas received through shared memory (for tests
        #: and benches: a reused arena maps once).
        self.arena_maps = 0
        self.received = 0

    def export(self, parts: Sequence[bytes | memoryview]) -> Handle | None:
        """Put ``parts`` (a payload's data area) in shared memory if worth it; the handle
        to send, or None to send the bytes on the socket."""
        size = sum(len(p) for p in parts)
        if not self.send or size < MIN_BYTES:
            return None
        if self.arenas and size <= ARENA_MAX:
            if self._arena is None or self._arena.capacity < size:
                if self._arena is not None:   # the peer keeps its own mapping of it
                    self._arena.close()
                self._arena = None
                self._arena = Arena.for_size(size)
            return self._arena.write(parts)
        out = Outgoing(parts)
        self._owed.append(out)
        return out.handle

    def export_file(self, path: str | os.PathLike, size: int) -> Handle | None:
        """Name the result file ``path`` (``size`` data bytes after
        :data:`FILE_DATA_OFFSET`) to the peer; None when this end does not send through
        shared memory (the caller then sends the bytes on the socket)."""
        if not self.send:
            return None
        out = SharedFile(path, size)
        self._owed.append(out)
        return out.handle

    def receive(self, handle: Handle) -> memoryview:
        """Map the peer's data area (a sealed memfd of its own, or a result file when this
        end accepts them), or copy it out of the peer's arena (mapped once)."""
        path, target = _locate(self.pid, handle)
        self.received += 1
        if self.files and not target.startswith("/memfd:"):
            return _attach_file(path, self.pid, handle, self.writable)
        _check_memfd(handle, target)
        if not target.startswith(f"/memfd:{ARENA_NAME}"):
            return _attach_path(path, self.pid, handle, self.writable)
        if self.follow:
            self.arenas = True     # the client sends arenas, so it reads them too
        try:
            inode = os.stat(path).st_ino
        except OSError as exc:
            raise ShmError(f"shared-memory handle {handle.fd} of process {self.pid} "
                           f"cannot be opened: {exc.strerror}") from None
        mapped = self._peer_arena
        if mapped is None or (mapped.fd, mapped.inode) != (handle.fd, inode):
            fresh = _map_arena(path, self.pid, handle)
            self.arena_maps += 1
            if mapped is not None:
                mapped.close()
            self._peer_arena = mapped = fresh
        if handle.size > len(mapped.mapping):
            raise ShmError(f"shared-memory arena holds {len(mapped.mapping)} bytes, the "
                           f"handle says {handle.size}")
        data = message_buffer(handle.size)   # private: the peer may rewrite its arena
        with memoryview(mapped.mapping) as src:
            memoryview(data)[:handle.size] = src[:handle.size]
        return memoryview(data)

    def note(self, shm_frame: bool) -> None:
        """The peer's last message came as a shared-memory frame (or not): a following end
        answers in kind."""
        if self.follow:
            self.send = shm_frame and available() and self.pid is not None

    def release(self) -> None:
        """Close what this end sent: the peer has opened it (or never will)."""
        owed, self._owed = self._owed, []
        for out in owed:
            out.close()

    def close(self) -> None:
        """The connection ended: release everything, this end's arena and its mapping of
        the peer's included."""
        self.release()
        arena, self._arena = self._arena, None
        if arena is not None:
            arena.close()
        mapped, self._peer_arena = self._peer_arena, None
        if mapped is not None:
            mapped.close()
