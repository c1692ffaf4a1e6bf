"""Length-prefixed frames: the unit a stream transport (TCP, a Unix socket) carries.

A frame on a byte stream is ``u32 big-endian length`` followed by that many bytes. The
decoder is sans-I/O: feed it whatever the socket produced and it returns the complete
frames, raising :class:`FrameError` the moment a header claims more than the limit, so a
peer cannot make us buffer 4 GiB before we notice.
"""

from __future__ import annotations

import struct

from protocol.errors import FrameError

#: Largest frame payload accepted by default: one fragment (1 MiB) plus its small header.
DEFAULT_MAX_FRAME = (1 << 20) + 64

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
    """

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._buf = bytearray()
        self._need: int | None = None

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        """Add received bytes; return every frame they complete, in order."""
        self._buf += data
        frames: list[bytes] = []
        while True:
            if self._need is None:
                if len(self._buf) < HEADER_SIZE:
                    return frames
                (need,) = _LEN.unpack_from(self._buf, 0)
                if need > self.max_frame:
                    raise FrameError(
                        f"frame header claims {need} bytes, limit is {self.max_frame}")
                del self._buf[:HEADER_SIZE]
                self._need = need
            if len(self._buf) < self._need:
                return frames
            frames.append(bytes(self._buf[: self._need]))
            del self._buf[: self._need]
            self._need = None

    @property
    def buffered(self) -> int:
        """Bytes held for a frame that has not completed yet (a truncated frame at EOF)."""
        return len(self._buf)
