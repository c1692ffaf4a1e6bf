"""msgpack encoding of messages, with numpy arrays carried out of band.

An encoded payload is::

    u32 header length | msgpack header | padding to 64 | array buffer | padding | ...

Each array in the header is an msgpack ext value (code :data:`NDARRAY_EXT`) holding
``[dtype, shape, offset, nbytes]``; the bytes themselves follow the header, 64-byte
aligned. Encoding hands the array memory to the transport as ``memoryview`` pieces (no
concatenation), and decoding returns arrays that are views into the received buffer
(``np.frombuffer``), so a 64 MiB weight block is never copied by the codec. Only plain
numeric dtypes are accepted: never ``object``, which could smuggle arbitrary data.
"""

from __future__ import annotations

import struct
from typing import Any

import msgpack
from compute.lazynumpy import loaded, np

from protocol.errors import DecodeError

NDARRAY_EXT = 1
ALIGN = 64
#: Largest msgpack header (everything but array bytes) accepted in one message.
MAX_HEADER = 4 << 20
_ALLOWED_KINDS = frozenset("biuf")  # bool, signed, unsigned, float
_U32 = struct.Struct(">I")
_PAD = bytes(ALIGN)


def _aligned(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


class _Encoder:
    """Collects array buffers while msgpack walks the object tree."""

    def __init__(self) -> None:
        self.buffers: list[memoryview] = []
        self.offset = 0

    def default(self, obj: Any) -> Any:
        # numpy not imported yet: nothing here can be an array (and an idle daemon's
        # messages must not import it just to find that out).
        numpy = loaded()
        if numpy is not None and isinstance(obj, numpy.ndarray):
            return self._array(obj)
        if numpy is not None and isinstance(obj, numpy.generic):
            return obj.item()
        raise TypeError(f"cannot encode {type(obj).__name__}")

    def _array(self, arr: np.ndarray) -> msgpack.ExtType:
        if arr.dtype.kind not in _ALLOWED_KINDS:
            raise TypeError(f"arrays of dtype {arr.dtype} cannot be sent")
        if not arr.flags.c_contiguous:  # ascontiguousarray would turn a 0-d array 1-d
            arr = np.ascontiguousarray(arr)
        view = memoryview(arr).cast("B") if arr.nbytes else memoryview(b"")
        offset = self.offset
        self.buffers.append(view)
        self.offset = _aligned(offset + arr.nbytes)
        meta = [arr.dtype.str, list(arr.shape), offset, arr.nbytes]
        return msgpack.ExtType(NDARRAY_EXT, msgpack.packb(meta))


def encode(obj: Any) -> list[bytes | memoryview]:
    """Encode ``obj`` into a list of buffers whose concatenation is the payload."""
    enc = _Encoder()
    header = msgpack.packb(obj, default=enc.default, use_bin_type=True)
    head_len = _aligned(_U32.size + len(header))
    parts: list[bytes | memoryview] = [
        _U32.pack(len(header)) + header + _PAD[: head_len - _U32.size - len(header)]]
    for view in enc.buffers:
        parts.append(view)
        pad = _aligned(len(view)) - len(view)
        if pad:
            parts.append(_PAD[:pad])
    return parts


def encoded_size(parts: list[bytes | memoryview]) -> int:
    """Total number of bytes in an encoded payload."""
    return sum(len(p) for p in parts)


class NumpyNeeded(DecodeError):
    """A payload decoded with ``numpy_loaded_only`` holds an array while numpy is not
    loaded (say a zero-byte array, which :func:`carries_arrays` cannot see): the caller
    loads numpy off its event loop and decodes again."""


def _array_hook(data_area: memoryview, numpy_loaded_only: bool = False):
    def hook(code: int, data: bytes) -> Any:
        if code != NDARRAY_EXT:
            raise DecodeError(f"unknown msgpack ext type {code}")
        if numpy_loaded_only and loaded() is None:
            raise NumpyNeeded("the payload holds an array and numpy is not loaded")
        try:
            dtype_str, shape, offset, nbytes = msgpack.unpackb(data)
            dtype = np.dtype(dtype_str)
            shape = tuple(int(s) for s in shape)
        except Exception as exc:  # any malformed metadata is the sender's fault
            raise DecodeError(f"malformed array header: {exc}") from None
        if dtype.kind not in _ALLOWED_KINDS:
            raise DecodeError(f"array dtype {dtype} is not allowed")
        if any(s < 0 for s in shape):
            raise DecodeError("negative array dimension")
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if count * dtype.itemsize != nbytes:
            raise DecodeError("array size does not match its shape")
        if not (isinstance(offset, int) and 0 <= offset and offset + nbytes <= len(data_area)):
            raise DecodeError("array bytes lie outside the message")
        return np.frombuffer(data_area, dtype=dtype, count=count, offset=offset).reshape(shape)
    return hook


def decode(payload: bytes | bytearray | memoryview, *, numpy_loaded_only: bool = False) -> Any:
    """Decode a payload made by :func:`encode`; arrays are views into ``payload``.
    ``numpy_loaded_only``: raise :class:`NumpyNeeded` rather than import numpy for an
    array (on an event loop, where that import must not run)."""
    view = memoryview(payload)
    head = _header_length(view)
    return _unpack(view[_U32.size:_U32.size + head], view[_aligned(_U32.size + head):],
                   numpy_loaded_only)


def decode_split(head_part: bytes | bytearray | memoryview,
                 data_area: bytes | bytearray | memoryview) -> Any:
    """Decode a payload whose first part (``encode(...)[0]``) and data area (the rest,
    concatenated) arrived separately, e.g. the data area through shared memory; arrays
    are views into ``data_area``."""
    view = memoryview(head_part)
    head = _header_length(view)
    return _unpack(view[_U32.size:_U32.size + head], memoryview(data_area), False)


def carries_arrays(payload: bytes | bytearray | memoryview) -> bool:
    """Whether a payload made by :func:`encode` has array bytes after its header, read
    from the length prefix alone: a receiver loads numpy off its event loop
    (:func:`compute.lazynumpy.ready`) before decoding such a payload. A malformed payload
    answers False; :func:`decode` names its fault."""
    view = memoryview(payload)
    if view.nbytes < _U32.size:
        return False
    (head,) = _U32.unpack_from(view, 0)
    return view.nbytes > _aligned(_U32.size + head)


def _header_length(view: memoryview) -> int:
    if len(view) < _U32.size:
        raise DecodeError("payload shorter than its header")
    (head,) = _U32.unpack_from(view, 0)
    if head > MAX_HEADER or _U32.size + head > len(view):
        raise DecodeError(f"header length {head} is invalid for a {len(view)}-byte payload")
    return head


def _unpack(header: memoryview, data_area: memoryview, numpy_loaded_only: bool) -> Any:
    try:
        return msgpack.unpackb(header, ext_hook=_array_hook(data_area, numpy_loaded_only),
                               raw=False, strict_map_key=True)
    except DecodeError:
        raise
    except Exception as exc:
        raise DecodeError(f"payload is not valid msgpack: {exc}") from None
