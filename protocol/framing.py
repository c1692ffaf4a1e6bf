"""Fragmentation of messages into frames, and their reassembly.

A message payload of any size is cut into fragments of at most ``fragment_size`` bytes so
that a 64 MiB weight block never holds a link for long: the sender interleaves fragments of
different messages (a gossip ping slips between two chunks of an array). Each frame is::

    u8 flags | u32 stream id | [u64 total size, first fragment only] | fragment bytes

Both classes are sans-I/O. :class:`Reassembler` enforces explicit limits: the largest
message, the number of partial messages in flight and the bytes they may hold together.

Memory is taken as data arrives, never on a peer's word: a first fragment declaring
1 GiB costs nothing until the bytes come. The buffer is a numpy array of the declared size
(untouched pages are only address space, and large ones are huge-page backed, so freeing a
1 GiB message costs ~1 ms instead of the ~90 ms a 4 KiB-page bytearray spends unmapping on
the event loop); the *budgets* count the bytes received. Every link's reassembler draws on
one :class:`ByteBudget` shared by the whole daemon, so many links each sending a little of
many big messages cannot add up to more than the daemon's budget either.
"""

from __future__ import annotations

import contextlib
import mmap
import struct
import threading
from dataclasses import dataclass
from typing import Iterator, Protocol

from compute.lazynumpy import loaded, np

from protocol.errors import FrameError

FIRST = 0x01
LAST = 0x02
_HEAD = struct.Struct(">BI")
_TOTAL = struct.Struct(">Q")

DEFAULT_FRAGMENT = 1 << 20          # 1 MiB of payload per frame
DEFAULT_MAX_MESSAGE = 1 << 30       # 1 GiB: a whole N=16384 float32 matrix fits
DEFAULT_MAX_STREAMS = 64
DEFAULT_MAX_BUFFERED = 2 << 30      # all partial messages of one link together
DEFAULT_DAEMON_BUFFERED = 4 << 30   # all partial messages of every link of a daemon


class ByteBudget:
    """Bytes that partial messages of all links may hold together (thread-safe)."""

    def __init__(self, limit: int = DEFAULT_DAEMON_BUFFERED) -> None:
        self.limit = limit
        self._used = 0
        self._lock = threading.Lock()

    @property
    def used(self) -> int:
        return self._used

    def take(self, nbytes: int) -> None:
        with self._lock:
            if self._used + nbytes > self.limit:
                raise FrameError(f"partial messages of all links exceed the daemon's "
                                 f"{self.limit}-byte reassembly budget")
            self._used += nbytes

    def give(self, nbytes: int) -> None:
        with self._lock:
            self._used -= nbytes


#: The budget every session of this process shares (one daemon per process).
PROCESS_BUDGET = ByteBudget()


def fragments(stream_id: int, parts: list[bytes | memoryview],
              fragment_size: int = DEFAULT_FRAGMENT) -> Iterator[list[bytes | memoryview]]:
    """Yield the frames of one message, each as a list of buffers (header first).

    The buffers are views into ``parts``: nothing is copied here; the transport gathers
    them with ``writelines``/``sendmsg``.
    """
    total = sum(len(p) for p in parts)
    pieces = _slices(parts, fragment_size)
    first = True
    sent = 0
    for chunk, size in pieces:
        sent += size
        flags = (FIRST if first else 0) | (LAST if sent == total else 0)
        head = _HEAD.pack(flags, stream_id) + (_TOTAL.pack(total) if first else b"")
        first = False
        yield [head, *chunk]
    if total == 0:
        yield [_HEAD.pack(FIRST | LAST, stream_id) + _TOTAL.pack(0)]


def _slices(parts: list[bytes | memoryview], size: int):
    chunk: list[memoryview] = []
    room = size
    for part in parts:
        view = memoryview(part).cast("B") if not isinstance(part, bytes) else memoryview(part)
        while len(view):
            take = view[:room]
            chunk.append(take)
            view = view[len(take):]
            room -= len(take)
            if room == 0:
                yield chunk, size
                chunk, room = [], size
    if chunk:
        yield chunk, size - room


#: Messages up to this size are reassembled in a ``bytearray`` (zero-filling 64 KiB costs
#: microseconds); larger ones in an uninitialised numpy buffer whose pages materialise
#: only as bytes arrive, once numpy is loaded (a node doing work). Until then (an idle
#: daemon: gossip, pings, a 100-member state sync of a few hundred KiB) a ``bytearray``
#: up to LARGE_MESSAGE, so membership traffic alone never imports numpy (~10 MB of RSS,
#: issue 13), and above that an anonymous ``mmap`` (pages also materialise only as bytes
#: arrive): the first array message must not import numpy here, on the event loop -- the
#: receiver loads it in a worker thread before decoding (compute.lazynumpy.ready).
SMALL_MESSAGE = 64 << 10
LARGE_MESSAGE = 4 << 20


def message_buffer(total: int) -> bytearray | mmap.mmap | np.ndarray:
    """A writable buffer of ``total`` bytes for a message being received (see above);
    never imports numpy."""
    if total <= SMALL_MESSAGE or (total <= LARGE_MESSAGE and loaded() is None):
        return bytearray(total)
    if loaded() is None:
        return anonymous_buffer(total)
    return np.empty(total, dtype=np.uint8)


def anonymous_buffer(total: int) -> mmap.mmap:
    """Private anonymous memory, huge-page backed where the kernel allows (what numpy's own
    large buffers get). Why: unmapping 512 MiB of 4 KiB pages costs ~50 ms of CPU (~130 ms
    for the default *shared* anonymous mapping, which never gets huge pages) on whichever
    thread drops the last reference, the event loop for a received message; a daemon's
    first big message, arriving before numpy is loaded, stalled its loop 187 ms in CI
    (tests/test_loop_lag.py). Huge pages: ~2 ms."""
    buf = mmap.mmap(-1, total, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        buf.madvise(mmap.MADV_HUGEPAGE)
    except (AttributeError, OSError):      # no THP on this kernel: 4 KiB pages, still correct
        pass
    return buf


class RecordOpener(Protocol):
    """What :meth:`Reassembler.filling` needs of a link cipher (protocol.handshake's
    TransportCipher): cut a sealed frame into records and open them in order."""

    overhead: int    # bytes each record adds to its plaintext (the tag)

    def records(self, sealed: bytes | bytearray | memoryview) -> list[memoryview]: ...

    def decrypt(self, record: bytes | bytearray | memoryview) -> bytes: ...

    def decrypt_records_into(self, records: list[memoryview], dest: memoryview) -> None: ...


@dataclass
class SealedFill:
    """A sealed frame admitted into its message (header checked, budget taken) that is
    still to be written into ``dest``, its place in the message buffer: the first
    record's opened ``body``, then the further ``records`` opened in place.

    :meth:`open` touches only the cipher's receive state, the sealed records and
    ``dest`` (the message buffer's fresh pages are first touched there, not where the
    frame was admitted); while it runs nobody else may use that cipher state (the link's
    reader awaits it), so it can run on another thread.
    """

    part: "_Partial"
    flags: int
    size: int              # plaintext bytes this frame adds (taken from the budget)
    end: int               # the stream's filled mark once this frame is in
    body: memoryview       # the first record's payload after the fragment header
    records: list[memoryview]
    dest: memoryview
    opener: "RecordOpener"

    @property
    def message_size(self) -> int:
        """The declared size of the whole message this frame belongs to."""
        return self.part.total

    def open(self) -> None:
        head = len(self.body)
        self.dest[:head] = self.body
        self.opener.decrypt_records_into(self.records, self.dest[head:])


@dataclass
class _Partial:
    sid: int               # the stream it reassembles (for errors and removal)
    buf: bytearray | mmap.mmap | np.ndarray   # the declared size (see message_buffer)
    filled: int = 0

    @property
    def total(self) -> int:
        return len(self.buf)


class Reassembler:
    """Turn frames back into complete message payloads, within explicit limits."""

    def __init__(self, max_message: int = DEFAULT_MAX_MESSAGE,
                 max_streams: int = DEFAULT_MAX_STREAMS,
                 max_buffered: int = DEFAULT_MAX_BUFFERED,
                 budget: ByteBudget | None = None) -> None:
        self.max_message = max_message
        self.max_streams = max_streams
        self.max_buffered = max_buffered
        self.budget = ByteBudget(max_buffered) if budget is None else budget
        self._partial: dict[int, _Partial] = {}
        self._buffered = 0     # bytes received into partial messages (and taken from budget)

    def feed(self, frame: bytes | memoryview) -> bytearray | mmap.mmap | np.ndarray | None:
        """Add one frame; return the whole payload when this frame completes it."""
        flags, part, body = self._open(memoryview(frame))
        end = self._admit(part, len(body))
        memoryview(part.buf)[part.filled:end] = body   # one memcpy, any kind of buffer
        return self._advance(part, end, flags)

    def feed_sealed(self, sealed: bytes | bytearray | memoryview,
                    opener: "RecordOpener") -> bytearray | mmap.mmap | np.ndarray | None:
        """Like :meth:`feed` for a frame still sealed as records: the first record is
        opened to read the fragment header, every further one is decrypted straight into
        its place in the message buffer (no opened copy of the frame, no second copy into
        the buffer). Same checks and limits as :meth:`feed`, before any byte is written;
        records are opened in order, so the cipher's nonce order and replay check hold.
        A reader that opens big messages on another thread uses :meth:`filling` and
        :meth:`complete` itself, as this does."""
        with self.filling(sealed, opener) as fill:
            fill.open()
        return self.complete(fill)

    @contextlib.contextmanager
    def filling(self, sealed: bytes | bytearray | memoryview,
                opener: "RecordOpener") -> Iterator["SealedFill"]:
        """Admit a sealed frame: open its first record, check the header and size against
        the limits and take the bytes from the budget; yields what is left to do, opening
        it (:meth:`SealedFill.open`, which may be awaited on another thread inside the
        ``with``), then :meth:`complete`. If the block raises, the budget is given back
        (the link closes; these bytes never count as filled)."""
        records = opener.records(sealed)
        flags, part, body = self._open(memoryview(opener.decrypt(records[0])))
        tag = opener.overhead
        size = len(body) + sum(len(r) - tag for r in records[1:])
        end = self._admit(part, size)
        fill = SealedFill(part, flags, size, end, body, records[1:],
                          memoryview(part.buf)[part.filled:end], opener)
        try:
            yield fill
        except BaseException:
            self._release(size)
            raise

    def complete(self, fill: "SealedFill") -> bytearray | mmap.mmap | np.ndarray | None:
        """Count an opened frame as filled; the whole payload when it was the last. A
        message discarded meanwhile (its link closed while the frame was being opened
        elsewhere) only gives the frame's bytes back."""
        if self._partial.get(fill.part.sid) is not fill.part:
            self._release(fill.size)
            return None
        return self._advance(fill.part, fill.end, fill.flags)

    def _open(self, view: memoryview) -> tuple[int, _Partial, memoryview]:
        """Parse a fragment header; start the stream on FIRST; the fragment's body."""
        if len(view) < _HEAD.size:
            raise FrameError("frame shorter than its fragment header")
        flags, sid = _HEAD.unpack_from(view, 0)
        if flags & ~(FIRST | LAST):
            raise FrameError(f"unknown fragment flags {flags:#x}")
        body = view[_HEAD.size:]
        if flags & FIRST:
            body = self._start(sid, body)
        part = self._partial.get(sid)
        if part is None:
            raise FrameError(f"fragment for stream {sid} that was never started")
        return flags, part, body

    def _admit(self, part: _Partial, size: int) -> int:
        """Check ``size`` more bytes against the stream's size and the buffer budget and
        take them from the budget; the stream's new end."""
        end = part.filled + size
        if end > part.total:
            raise FrameError(f"stream {part.sid} overruns its declared size {part.total}")
        if self._buffered + size > self.max_buffered:
            raise FrameError("partial messages exceed the link's buffer budget")
        self.budget.take(size)
        self._buffered += size
        return end

    def _advance(self, part: _Partial, end: int,
                 flags: int) -> bytearray | mmap.mmap | np.ndarray | None:
        """Record the filled bytes; the whole payload when this was the stream's last."""
        part.filled = end
        if not flags & LAST:
            return None
        if part.filled != part.total:
            raise FrameError(f"stream {part.sid} ended at {part.filled} of {part.total} bytes")
        del self._partial[part.sid]
        self._release(part.filled)
        return part.buf

    def discard(self) -> None:
        """Drop every partial message and return its bytes (the link is gone)."""
        held = sum(p.filled for p in self._partial.values())
        self._partial.clear()
        self._release(held)

    def _release(self, nbytes: int) -> None:
        self._buffered -= nbytes
        self.budget.give(nbytes)

    def _start(self, sid: int, body: memoryview) -> memoryview:
        if len(body) < _TOTAL.size:
            raise FrameError("first fragment lacks the message size")
        (total,) = _TOTAL.unpack_from(body, 0)
        if sid in self._partial:
            raise FrameError(f"stream {sid} started twice")
        if total > self.max_message:
            raise FrameError(f"message of {total} bytes exceeds the {self.max_message} limit")
        if len(self._partial) >= self.max_streams:
            raise FrameError(f"more than {self.max_streams} messages in flight")
        self._partial[sid] = _Partial(sid, message_buffer(total))
        return body[_TOTAL.size:]

    @property
    def buffered(self) -> int:
        """Bytes held by partial messages of this link."""
        return self._buffered

    @property
    def in_flight(self) -> int:
        """Number of messages partially received."""
        return len(self._partial)
