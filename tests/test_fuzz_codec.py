"""Property-based fuzzing of the msgpack codec (out-of-band arrays) and of typed messages.

Bytes from a peer or a client become an object only through :func:`protocol.codec.decode`
and :func:`protocol.messages.decode_message`. Whatever the bytes, they raise
:class:`DecodeError` (a :class:`ProtocolError`) or return a value of the documented shape:
never another exception, never an array reading outside the payload, never an ``object``
array. Every registered message (peer, handshake, gossip, signalling, local API) round-trips.
"""

from __future__ import annotations

import dataclasses
import math
import struct
import types
import typing
from typing import Any, Union

import msgpack
import numpy as np
from hypothesis import assume, given, strategies as st
from hypothesis.extra import numpy as hnp

# Every module that registers messages, so REGISTRY is complete.
import nat.signaling  # noqa: F401
import node.api  # noqa: F401
import protocol.handshake  # noqa: F401
import protocol.membership  # noqa: F401
import protocol.rpc  # noqa: F401
import protocol.work  # noqa: F401
from protocol import codec
from protocol.errors import DecodeError, ProtocolError
from protocol.messages import REGISTRY, _hints, decode_message, encode_message, from_wire

DTYPES = st.sampled_from(["<f4", ">f4", "<f8", "<f2", "<i1", "<i4", ">i8", "<u2", "|u1",
                          "<u8", "|b1"])
arrays = DTYPES.flatmap(lambda dt: hnp.arrays(np.dtype(dt), hnp.array_shapes(
    min_dims=0, max_dims=3, min_side=0, max_side=5)))
scalars = (st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1)
           | st.floats(allow_nan=False) | st.text(max_size=20) | st.binary(max_size=20))
values = st.recursive(scalars | arrays, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)


def same(a: Any, b: Any) -> bool:
    """Structural equality where arrays compare by dtype, shape and bytes."""
    if isinstance(a, np.ndarray):
        return (isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape
                and a.tobytes() == b.tobytes())
    if isinstance(a, (list, tuple)):
        return isinstance(b, list) and len(a) == len(b) and all(map(same, a, b))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


def payload(obj: Any) -> bytes:
    return b"".join(bytes(p) for p in codec.encode(obj))


def check_decoded(obj: Any, buf: bytes) -> None:
    """What decode may return: plain msgpack values and numeric arrays inside ``buf``."""
    if isinstance(obj, np.ndarray):
        assert obj.dtype.kind in "biuf"
        assert obj.nbytes <= len(buf)
    elif isinstance(obj, list):
        for v in obj:
            check_decoded(v, buf)
    elif isinstance(obj, dict):
        assert all(isinstance(k, (str, int, bytes, float, bool, type(None), tuple)) for k in obj)
        for v in obj.values():
            check_decoded(v, buf)
    else:
        assert isinstance(obj, (type(None), bool, int, float, str, bytes))


def decode_or_error(buf: bytes) -> Any:
    try:
        obj = codec.decode(buf)
    except DecodeError:
        return None
    check_decoded(obj, buf)
    return obj


# ------------------------------------------------------------------------------ codec

@given(values)
def test_every_value_round_trips(obj):
    assert same(obj, codec.decode(payload(obj)))


@given(st.binary(max_size=2000))
def test_arbitrary_bytes_decode_or_raise_decode_error(buf):
    decode_or_error(buf)


@given(values, st.data())
def test_mutated_payloads_decode_or_raise_decode_error(obj, data):
    buf = bytearray(payload(obj))
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "cut", "grow"]))
        if op == "flip" and buf:
            i = data.draw(st.integers(0, len(buf) - 1))
            buf[i] ^= data.draw(st.integers(1, 255))
        elif op == "cut":
            del buf[data.draw(st.integers(0, len(buf))):]
        else:
            buf += data.draw(st.binary(min_size=1, max_size=64))
    decode_or_error(bytes(buf))


MSGPACK_INT = st.integers(-2**63, 2**64 - 1)   # what msgpack can carry
dims = st.integers(-3, 8) | MSGPACK_INT | st.just(2**62)
array_meta = st.lists(st.one_of(
    st.text(max_size=12) | st.sampled_from(["<f4", "|O", "O", "V8", "<U4", "<c8", "M8[s]",
                                            "(2,)i4", "S3", "<f16"]),
    st.lists(dims, max_size=4) | MSGPACK_INT | st.none() | st.text(max_size=4),
    st.integers(-10, 300) | MSGPACK_INT | st.floats() | st.none(),
    st.integers(-10, 300) | MSGPACK_INT | st.floats() | st.none(),
), min_size=0, max_size=5).map(lambda l: l if len(l) != 4 else tuple(l))


@given(array_meta, st.binary(max_size=300), st.sampled_from([1, 1, 1, 0, 2, 127]))
def test_forged_array_headers_never_escape_the_payload(meta, area, ext_code):
    """An ext record with any metadata: a numeric array inside the data area, or DecodeError."""
    ext = msgpack.ExtType(ext_code,
                          msgpack.packb(list(meta) if isinstance(meta, tuple) else meta))
    header = msgpack.packb({"x": ext}, use_bin_type=True)
    head_len = -(-(4 + len(header)) // codec.ALIGN) * codec.ALIGN
    buf = struct.pack(">I", len(header)) + header + bytes(head_len - 4 - len(header)) + area
    decode_or_error(buf)


@given(st.integers(0, 2**32 - 1), st.binary(max_size=200))
def test_any_header_length_is_checked(head, rest):
    decode_or_error(struct.pack(">I", head) + rest)


def test_object_arrays_are_refused_both_ways():
    obj = np.array([{"x": 1}, None], dtype=object)
    try:
        codec.encode(obj)
    except TypeError:
        pass
    else:
        raise AssertionError("an object array was encoded")
    meta = msgpack.packb(["|O", [2], 0, 16])
    header = msgpack.packb(msgpack.ExtType(codec.NDARRAY_EXT, meta))
    buf = struct.pack(">I", len(header)) + header + bytes(64 - 4 - len(header)) + bytes(16)
    try:
        codec.decode(buf)
    except DecodeError as exc:
        assert "not allowed" in str(exc)
    else:
        raise AssertionError("an object array was decoded")


# --------------------------------------------------------------------------- messages

def strategy_for(hint: Any) -> st.SearchStrategy:
    """Values that satisfy a message field's annotation (what a valid sender sends)."""
    origin = typing.get_origin(hint)
    if hint is Any:
        return values
    if origin in (Union, types.UnionType):
        return st.one_of(*(strategy_for(h) for h in typing.get_args(hint)))
    if hint is type(None):
        return st.none()
    if hint is float:
        return st.floats(allow_nan=False)
    if hint is int:
        return st.integers(-2**63, 2**64 - 1)
    if hint is bool:
        return st.booleans()
    if hint is str:
        return st.text(max_size=30)
    if hint is bytes:
        return st.binary(max_size=30)
    if hint is np.ndarray:
        return arrays
    if origin is list:
        (item,) = typing.get_args(hint) or (Any,)
        return st.lists(strategy_for(item), max_size=4)
    if origin is dict or hint is dict:
        args = typing.get_args(hint)
        return st.dictionaries(st.text(max_size=8), strategy_for(args[1] if args else Any),
                               max_size=4)
    raise AssertionError(f"no strategy for {hint}")


@st.composite
def valid_messages(draw):
    cls = draw(st.sampled_from(sorted(REGISTRY.values(), key=lambda c: c.TAG)))
    hints = _hints(cls)
    kwargs = {f.name: draw(strategy_for(hints[f.name])) for f in dataclasses.fields(cls)}
    return cls(**kwargs)


def test_the_registry_holds_every_layer():
    prefixes = {tag.split(".")[0] for tag in REGISTRY}
    assert {"hello", "rpc", "bye", "work", "swim", "ice", "api"} <= prefixes


@given(valid_messages())
def test_every_registered_message_round_trips(msg):
    parts = encode_message(msg)
    got = decode_message(b"".join(bytes(p) for p in parts))
    assert type(got) is type(msg)
    for f in dataclasses.fields(msg):
        want, have = getattr(msg, f.name), getattr(got, f.name)
        if isinstance(want, float) and not isinstance(have, np.ndarray):
            assert have == want or (math.isnan(want) and math.isnan(have))
        else:
            assert same(want, have), f.name


@st.composite
def forged_maps(draw):
    """A map naming a registered tag (or not) with fields of any type, some missing or extra."""
    tag = draw(st.sampled_from(sorted(REGISTRY)) | st.text(max_size=10) | st.integers())
    out: dict[Any, Any] = {"t": tag}
    cls = REGISTRY.get(tag) if isinstance(tag, str) else None
    names = [f.name for f in dataclasses.fields(cls)] if cls else []
    for name in names:
        if draw(st.integers(0, 9)) > 0:
            out[name] = draw(values)
    for extra in draw(st.lists(st.text(max_size=6), max_size=2)):
        out[extra] = draw(scalars)
    return out


@given(forged_maps())
def test_forged_messages_are_a_registered_type_or_a_decode_error(obj):
    try:
        msg = from_wire(obj)
    except DecodeError:
        return
    assert type(msg) is REGISTRY[obj["t"]]


def safe_payload_or_none(obj: Any) -> bytes | None:
    """The payload of a forged map, or None when msgpack cannot carry it (huge ints)."""
    try:
        return payload(obj)
    except (TypeError, OverflowError, ValueError):
        return None


@given(forged_maps())
def test_forged_message_payloads_decode_or_raise_decode_error(obj):
    buf = safe_payload_or_none(obj)
    assume(buf is not None)
    try:
        msg = decode_message(buf)
    except ProtocolError as exc:
        assert isinstance(exc, DecodeError)
        return
    assert type(msg) is REGISTRY[obj["t"]]


@given(st.binary(max_size=1000))
def test_arbitrary_bytes_never_make_a_message_silently(buf):
    try:
        msg = decode_message(buf)
    except DecodeError:
        return
    assert type(msg) in REGISTRY.values()


def test_regression_a_zero_d_array_keeps_its_shape():
    """Found by fuzzing: np.ascontiguousarray made a 0-d array 1-d on the way out."""
    got = codec.decode(payload(np.array(2.5, dtype=np.float32)))
    assert got.shape == () and got == np.float32(2.5)
