"""Reading a tier-1 block file into RAM: large direct reads, several in flight.

Why not ``path.read_bytes()`` or a memory map: a map pages the file in on demand faults
(the kernel's readahead window at a time, one fault after another) and both go through
the page cache, which then holds a second copy of the block outside the RAM budget until
it is dropped. Here a block is read with ``O_DIRECT`` (no page-cache copy: the budget is
the whole story, and every read really goes to the device) into a page-aligned anonymous
buffer, in ``chunk``-byte ``preadv`` calls spread over a small bounded pool of threads, so
the device sees several requests at once: a virtual disk like this machine's delivers
more with requests in flight than with one reader (``bench/memory.py`` measures it), which
is what DeepSpeed's aio and FlexGen exploit too. A file system without ``O_DIRECT``
(tmpfs) gets buffered reads and its cache dropped after.

The buffer is returned read-only; the codec's arrays become views into it, so nothing is
copied again. Buffers are recycled: a fresh 64 MiB buffer costs ~60 ms of kernel CPU here
to fault in and zero (as much as the layer's compute, and more wall time than the read on
a busy machine: 750 ms against 100 ms into a reused one, measured with O_DIRECT, cold),
so a buffer whose block left RAM is read into again. A buffer is reused only when nothing
refers to it any more (its reference count: every array or view decoded from it holds
one), so a late reader can never see its weights change; at most ``spare`` unused buffers
are kept, the rest freed. Verification (codec and state checks, sizes) stays with the
caller: this only moves bytes.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import mmap
import os
import sys
import threading
from pathlib import Path

from compute.lazynumpy import np

CHUNK = 4 << 20        # bytes per preadv: large enough for the device, small enough to spread
THREADS = 4            # chunk reads in flight at once (the device's useful queue depth)
SPARE = 1              # unused buffers kept for the next load (outside the RAM budget)
_ALIGN = 4096          # O_DIRECT: buffer, offset and length multiples of the block size


class BlockReader:
    """Reads whole block files into RAM with up to ``threads`` chunk reads in flight.

    One reader per store; any thread may call :meth:`read` (the pool is its own, and a
    caller only waits on its own chunks). Chunks are served first come, first served.
    """

    def __init__(self, threads: int = THREADS, chunk: int = CHUNK, direct: bool = True,
                 spare: int = SPARE) -> None:
        if chunk <= 0 or chunk % _ALIGN:
            raise ValueError(f"chunk must be a positive multiple of {_ALIGN}")
        self.threads = max(1, threads)
        self.chunk = chunk
        self.direct = direct and hasattr(os, "O_DIRECT")
        self.spare = max(0, spare)
        self.reused = 0                       # loads into a recycled buffer (for tests)
        self._lent: list[np.ndarray] = []     # buffers handed out, guarded by _lock
        self._lock = threading.Lock()
        self._pool = (concurrent.futures.ThreadPoolExecutor(
            self.threads, thread_name_prefix="sedma-read") if self.threads > 1 else None)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    def read(self, path: Path | str, expect: int | None = None) -> memoryview:
        """The file's bytes, read-only, in a buffer of their own; OSError if not read whole.

        ``expect``: the size the caller's record says; a file of another size is refused
        before anything is read (a truncated or replaced file).
        """
        fd, direct = self._open(path)
        try:
            size = os.fstat(fd).st_size
            if expect is not None and size < expect:
                raise OSError(f"{path}: {size} bytes on disk, at least {expect} expected")
            buf = self._buffer(max(_ALIGN, -(-size // _ALIGN) * _ALIGN))
            view = memoryview(buf)
            try:
                spans = [(off, min(self.chunk, size - off)) for off in range(0, size, self.chunk)]
                if self._pool is None or len(spans) == 1:
                    got = [self._read_span(fd, view, off, n, direct) for off, n in spans]
                else:
                    got = list(self._pool.map(
                        lambda s: self._read_span(fd, view, s[0], s[1], direct), spans))
            finally:
                view.release()
            if sum(got) != size:
                raise OSError(f"{path}: short read ({sum(got)} of {size} bytes)")
            if not direct:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            return memoryview(buf).toreadonly()[:size]
        finally:
            os.close(fd)

    def _buffer(self, nbytes: int) -> np.ndarray:
        """A page-aligned ``nbytes`` buffer: a recycled one nothing refers to, else new.

        A lent buffer nothing else refers to has two references, ``_lent``'s and
        getrefcount's argument; any more means an array or view made from it is alive.
        """
        buf = None
        with self._lock:
            hit = next((i for i in self._free_locked() if self._lent[i].nbytes == nbytes), None)
            if hit is not None:
                self.reused += 1
                buf = self._lent.pop(hit)
                self._lent.append(buf)
            self._trim_locked()     # (``buf`` is referred to here: not free, not trimmed)
        if buf is not None:
            return buf
        raw = np.empty(nbytes + _ALIGN, np.uint8)   # numpy advises huge pages for these
        start = -raw.ctypes.data % _ALIGN
        buf = raw[start:start + nbytes]
        with self._lock:
            self._lent.append(buf)
        return buf

    def trim(self) -> None:
        """Free unused buffers beyond ``spare`` (blocks were dropped: give the RAM back)."""
        with self._lock:
            self._trim_locked()

    def _free_locked(self) -> list[int]:
        return [i for i in range(len(self._lent)) if sys.getrefcount(self._lent[i]) <= 2]

    def _trim_locked(self) -> None:
        free = self._free_locked()
        for i in reversed(free[:max(0, len(free) - self.spare)]):
            del self._lent[i]

    def _open(self, path: Path | str) -> tuple[int, bool]:
        if self.direct:
            try:
                return os.open(path, os.O_RDONLY | os.O_DIRECT), True
            except OSError as exc:
                if exc.errno != 22:      # EINVAL: this file system has no O_DIRECT
                    raise
        return os.open(path, os.O_RDONLY), False

    @staticmethod
    def _read_span(fd: int, view: memoryview, off: int, n: int, direct: bool) -> int:
        """Read ``n`` bytes at ``off`` (rounded up to the block size for O_DIRECT)."""
        want = -(-n // _ALIGN) * _ALIGN if direct else n
        done = 0
        while done < n:
            got = os.preadv(fd, [view[off + done:off + want]], off + done)
            if got <= 0:
                break
            done += got
        return min(done, n)


def cached_pages(fd: int) -> tuple[int, int]:
    """Pages of the open file that are in the page cache (``mincore``), and its pages.

    For checks, not the read path: the bench uses it to prove a "cold" read is cold, the
    tests that a buffered load leaves no copy behind.
    """
    size = os.fstat(fd).st_size
    if size == 0:
        return 0, 0
    mapped = mmap.mmap(fd, size, access=mmap.ACCESS_READ)
    try:
        pages = -(-size // mmap.PAGESIZE)
        vec = (ctypes.c_ubyte * pages)()
        arr = np.frombuffer(mapped, np.uint8)     # a read-only map's address, via numpy
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.mincore(ctypes.c_void_p(arr.ctypes.data), ctypes.c_size_t(size), vec):
                raise OSError(ctypes.get_errno(), "mincore failed")
        finally:
            del arr
        return sum(v & 1 for v in vec), pages
    finally:
        mapped.close()
