"""Frame buffers reused across frames instead of allocated, zero-filled and faulted in.

Why: a B=64 request at N=4096 moves ~1 MiB frames four times, and every one was sealed into
a fresh ``bytearray(n)`` (``TransportCipher.seal_parts``) and received into another
(``FrameDecoder``). ``bytearray(n)`` zero-fills, and a buffer the heap just got back from
the kernel page-faults on that first touch: py-spy found it as much of the event loop's
time as AES-GCM itself (15 % of a coordinator's loop, 11 % of a peer's; bench/README.md,
oneshot3). A buffer taken from this pool is already resident and is overwritten in place.

The rule that makes reuse safe is *who may still read a buffer*, and the pool only ever
hands out a buffer nobody else holds:

- receiving: the decoder takes a buffer for a frame and hands the frame on; it comes back
  (:meth:`FramePool.give`) only from the consumer that has finished with it (the session,
  once it opened the frame's records into the message buffer). A frame nobody gives back
  is simply garbage, never reused.
- sending: a sealed frame is lent to a transport, which may keep a reference rather than
  a copy: uvloop's ``writelines`` keeps the buffer (``PyObject_GetBuffer``) until libuv
  has written it to the socket; asyncio's selector transport of Python 3.11 joins the
  buffers (a copy) and keeps only its copy's unsent tail. So the link counts the bytes it
  queued and the bytes its transport still holds unsent (``get_write_buffer_size``, which
  counts exactly the unwritten bytes on both loops); a frame lent at queue position ``m``
  is free once the transport's written position reaches ``m`` (:class:`LentFrames`).

Only frames from ``MIN_POOLED`` to the pool's capacity use it, i.e. the fragments of bulk
messages (X, Y, W, one-shot operands): gossip, pings and even a 100-member state sync
(a few hundred KiB) allocate as before, so an idle daemon keeps no pooled memory; at most
``KEEP`` free buffers are kept per thread (every link of a daemon's event loop shares
them), so a daemon holds at most ``KEEP`` MiB more after bulk traffic, whatever its number
of links.
"""

from __future__ import annotations

import collections
import threading

#: Frames smaller than this are allocated as before. Half a fragment: the full 1 MiB
#: fragments of bulk messages and a B=64 Y at N=4096 (512 KiB and its header) are pooled;
#: membership traffic never is (a pooled buffer is ~1 MiB kept resident, issue 13's idle
#: RSS target).
MIN_POOLED = 512 << 10
#: Free buffers kept per thread: two in flight each way covers one request's fan-out.
KEEP = 4


class FramePool:
    """Free buffers of one capacity; single-threaded (its owner is one event loop)."""

    def __init__(self, capacity: int, keep: int = KEEP) -> None:
        self.capacity = capacity
        self.keep = keep
        self._free: list[bytearray] = []
        #: Buffers allocated because none was free (a figure for tests and benches).
        self.allocated = 0

    def take(self, size: int) -> memoryview | None:
        """A writable view of exactly ``size`` bytes of a buffer nobody else holds, or
        None when the frame is outside the pooled sizes (the caller allocates)."""
        if not MIN_POOLED <= size <= self.capacity:
            return None
        if self._free:
            buf = self._free.pop()
        else:
            buf = bytearray(self.capacity)   # zero-filled once, then reused
            self.allocated += 1
        return memoryview(buf)[:size]

    def give(self, frame: object) -> None:
        """Take back a frame its holder has finished with (a view :meth:`take` made).
        Anything else is ignored; a buffer already free is not added twice (two frames
        would then share it)."""
        buf = frame.obj if isinstance(frame, memoryview) else None
        if (type(buf) is not bytearray or len(buf) != self.capacity
                or len(self._free) >= self.keep or any(b is buf for b in self._free)):
            return
        self._free.append(buf)

    @property
    def free(self) -> int:
        return len(self._free)


class LentFrames:
    """Sealed frames a transport may still read, each with the queue position it ends
    at; they go back to the pool once the transport's written position passes it."""

    def __init__(self, pool: FramePool) -> None:
        self.pool = pool
        self._lent: collections.deque[tuple[int, memoryview]] = collections.deque()

    def lend(self, frame: memoryview, end: int) -> None:
        """``frame`` was queued and ends at byte ``end`` of the link's outgoing stream."""
        self._lent.append((end, frame))

    def reclaim(self, written: int) -> None:
        """The transport has written the stream up to ``written``: every frame ending
        there or before is free again (frames are written in the order queued)."""
        while self._lent and self._lent[0][0] <= written:
            self.pool.give(self._lent.popleft()[1])

    def forget(self) -> None:
        """The link closed: its frames are never reused (the transport may hold them)."""
        self._lent.clear()

    def __len__(self) -> int:
        return len(self._lent)


_LOCAL = threading.local()


def thread_pool(capacity: int) -> FramePool:
    """The calling thread's pool of ``capacity``-byte buffers (one event loop per thread,
    so every link of that loop shares it and no two threads ever touch one pool)."""
    pools = getattr(_LOCAL, "pools", None)
    if pools is None:
        pools = _LOCAL.pools = {}
    pool = pools.get(capacity)
    if pool is None:
        pool = pools[capacity] = FramePool(capacity)
    return pool
