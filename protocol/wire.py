"""Length-prefixed frames: the unit a stream transport (TCP, a Unix socket) carries.

A frame on a byte stream is ``u32 big-endian length`` followed by that many bytes. The
decoder is sans-I/O: feed it whatever the socket produced and it returns the complete
frames, raising :class:`FrameError` the moment a header claims more than the limit, so a
peer cannot make us buffer 4 GiB before we notice.
"""

from __future__ import annotations

import struct
import threading

from protocol.errors import FrameError
from protocol.framepool import FramePool

#: Largest frame payload accepted by default: one fragment (1 MiB) plus its small header.
DEFAULT_MAX_FRAME = (1 << 20) + 64

#: Receiving through get_buffer: bytes between frame bodies (length prefixes, small frames,
#: the start of a big frame) land in a scratch area this big and are copied out of it; the
#: rest of a big frame is received straight into place.
SCRATCH_BYTES = 64 << 10

#: The scratch area, one per thread and shared by every decoder of that thread: a
#: transport lends it and hands it back (``get_buffer`` then ``buffer_updated``) within one
#: callback, and everything is copied out before ``buffer_updated`` returns, so no two
#: decoders of a thread ever use it at once. One area per decoder was 64 KiB of resident
#: memory per link: ~6 MB in each daemon of an idle 100-daemon mesh (issue 13).
_SCRATCH = threading.local()


def _scratch() -> bytearray:
    area = getattr(_SCRATCH, "area", None)
    if area is None:
        area = _SCRATCH.area = bytearray(SCRATCH_BYTES)
    return area

_LEN = struct.Struct(">I")
HEADER_SIZE = _LEN.size


def frame_header(length: int, max_frame: int = DEFAULT_MAX_FRAME) -> bytes:
    """Return the length prefix for a frame of ``length`` bytes, refusing oversized ones."""
    if length > max_frame:
        raise FrameError(f"frame of {length} bytes exceeds the {max_frame}-byte limit")
    return _LEN.pack(length)


class FrameDecoder:
    """Split a byte stream into frames, enforcing ``max_frame``.

    The decoder keeps at most one partial frame (bounded by ``max_frame``) in memory.
    Each frame's bytes are copied once: a frame that lies whole in the fed chunk is cut
    out of it; a frame that spans chunks is filled in place into a buffer of its declared
    size (a ``bytearray``, or with a ``pool`` a view of a reused buffer for a big frame,
    which its consumer gives back: :mod:`protocol.framepool`). Appending chunks to one
    buffer and cutting frames off its front copied every byte twice and re-grew the
    buffer, ~2.5 ms per MiB in this VM, on the event loop (a 500 MB share held it for
    70-130 ms, tests/test_loop_lag.py).
    """

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME,
                 pool: FramePool | None = None) -> None:
        self.max_frame = max_frame
        #: Where big frames' buffers come from (their consumer gives them back once done:
        #: no zero-fill, no fresh pages per frame); None: each frame a new buffer.
        self.pool = pool
        self._head = bytearray()                 # a length prefix split across chunks
        self._body: bytearray | memoryview | None = None   # the frame being filled
        self._filled = 0
        self._scratch: bytearray | None = None   # the thread's area while it is lent
        self._lent_body = False                  # get_buffer handed out the body

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes | bytearray | memoryview]:
        """Add received bytes; return every frame they complete, in order."""
        frames: list[bytes | bytearray] = []
        with memoryview(data) as raw:
            view = raw if raw.format == "B" and raw.ndim == 1 else raw.cast("B")
            pos, end = 0, len(view)
            while pos < end:
                if self._body is None:
                    need, pos = self._header(view, pos, end)
                    if need is None:
                        break
                    if end - pos >= need:          # whole in this chunk: cut it out
                        frames.append(self._copy(view[pos:pos + need]))
                        pos += need
                        continue
                    self._body, self._filled = self._new_body(need), 0
                take = min(len(self._body) - self._filled, end - pos)
                self._body[self._filled:self._filled + take] = view[pos:pos + take]
                self._filled += take
                pos += take
                if self._filled == len(self._body):
                    frames.append(self._body)
                    self._body = None
        return frames

    def _new_body(self, need: int) -> bytearray | memoryview:
        """The buffer a frame of ``need`` bytes is filled into: a pooled one when it is big
        (every byte gets overwritten, so its old contents never show)."""
        pooled = self.pool.take(need) if self.pool is not None else None
        return bytearray(need) if pooled is None else pooled

    def _copy(self, piece: memoryview) -> bytes | memoryview:
        pooled = self.pool.take(len(piece)) if self.pool is not None else None
        if pooled is None:
            return bytes(piece)
        pooled[:] = piece
        return pooled

    # Receiving into place (a BufferedProtocol transport) ---------------------------
    def get_buffer(self) -> memoryview:
        """Where the transport should put the next received bytes: straight into the rest
        of the frame being filled when there is one (no copy at all for the bulk of a big
        frame), else a scratch area that :meth:`buffer_updated` parses like :meth:`feed`."""
        if self._body is not None:
            self._lent_body = True
            return memoryview(self._body)[self._filled:]
        self._lent_body = False
        self._scratch = _scratch()
        return memoryview(self._scratch)

    def buffer_updated(self, nbytes: int) -> list[bytes | bytearray | memoryview]:
        """``nbytes`` landed in the last :meth:`get_buffer`; return the frames completed."""
        if self._lent_body:
            self._lent_body = False
            self._filled += nbytes
            if self._filled < len(self._body):
                return []
            frame, self._body = self._body, None
            return [frame]
        scratch, self._scratch = self._scratch, None   # the thread's: not kept per link
        with memoryview(scratch) as view:
            return self.feed(view[:nbytes])

    def _header(self, view: memoryview, pos: int, end: int) -> tuple[int | None, int]:
        """The next frame's length (None: the prefix is still incomplete) and the new pos."""
        if self._head or end - pos < HEADER_SIZE:
            take = min(HEADER_SIZE - len(self._head), end - pos)
            self._head += view[pos:pos + take]
            pos += take
            if len(self._head) < HEADER_SIZE:
                return None, pos
            (need,) = _LEN.unpack(self._head)
            self._head.clear()
        else:
            (need,) = _LEN.unpack_from(view, pos)
            pos += HEADER_SIZE
        if need > self.max_frame:
            raise FrameError(f"frame header claims {need} bytes, limit is {self.max_frame}")
        return need, pos

    @property
    def buffered(self) -> int:
        """Bytes held for a frame that has not completed yet (a truncated frame at EOF)."""
        return len(self._head) + (self._filled if self._body is not None else 0)
