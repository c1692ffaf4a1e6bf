"""Typed messages: one dataclass per message, validated when it is decoded.

A message class is declared once with :func:`message`::

    @message("ping")
    class Ping:
        seq: int
        sent: float

and travels as a msgpack map ``{"t": "ping", "seq": ..., "sent": ...}``. Decoding checks the
tag, that every required field is present, that no unknown field is, and that each value has
the annotated type (``int``, ``float``, ``str``, ``bytes``, ``bool``, ``np.ndarray``,
``list[X]``, ``dict[str, X]``, ``X | None``, ``Any``). A message that fails gets a
:class:`DecodeError` naming the field, so the receiver can log exactly what was wrong.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, ClassVar, TypeVar, Union

from compute.lazynumpy import loaded, ready

from protocol import codec
from protocol.errors import DecodeError, RequestDecodeError

T = TypeVar("T")
REGISTRY: dict[str, type] = {}
_TAG = "t"


def message(tag: str):
    """Class decorator: make a dataclass and register it under the wire tag ``tag``."""

    def wrap(cls: type[T]) -> type[T]:
        if tag in REGISTRY:
            raise ValueError(f"message tag {tag!r} is registered twice")
        cls = dataclasses.dataclass(cls)
        cls.TAG = tag  # type: ignore[attr-defined]
        REGISTRY[tag] = cls
        return cls

    return wrap


def to_wire(msg: Any) -> dict[str, Any]:
    """The msgpack-able map of a message (arrays stay arrays; the codec handles them)."""
    out = {_TAG: msg.TAG}
    for f in dataclasses.fields(msg):
        out[f.name] = getattr(msg, f.name)
    return out


def from_wire(obj: Any) -> Any:
    """Build and validate the message a decoded msgpack map describes. A request that
    cannot be read (it has an integer ``rid``) raises :class:`RequestDecodeError`, so its
    asker can be told; a reply cannot be answered and raises plain :class:`DecodeError`."""
    if not isinstance(obj, dict):
        raise DecodeError(f"message must be a map, got {type(obj).__name__}")
    try:
        return _build(obj)
    except DecodeError as exc:
        rid = obj.get("rid")
        if type(rid) is int and obj.get(_TAG) != _REPLY_TAG:
            raise RequestDecodeError(rid, str(exc)) from None
        raise


#: protocol.rpc's Reply (rpc imports this module): an unreadable reply is not answered.
_REPLY_TAG = "rpc.reply"


def _build(obj: dict) -> Any:
    tag = obj.get(_TAG)
    cls = REGISTRY.get(tag) if isinstance(tag, str) else None
    if cls is None:
        raise DecodeError(f"unknown message type {tag!r}")
    hints = _hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in obj:
            kwargs[f.name] = _check(obj[f.name], hints[f.name], f"{tag}.{f.name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise DecodeError(f"{tag}: missing field {f.name!r}")
    extra = set(obj) - set(hints) - {_TAG}
    if extra:
        raise DecodeError(f"{tag}: unknown field(s) {sorted(extra)}")
    return cls(**kwargs)


def encode_message(msg: Any) -> list[bytes | memoryview]:
    """Encode a message into payload buffers (see :mod:`protocol.codec`)."""
    return codec.encode(to_wire(msg))


def decode_message(payload: bytes | bytearray | memoryview) -> Any:
    """Decode and validate one payload into its message object."""
    return from_wire(codec.decode(payload))


async def decode_message_on_loop(payload: bytes | bytearray | memoryview) -> Any:
    """:func:`decode_message` for an event loop: a payload carrying arrays, arriving before
    numpy is loaded, first has numpy loaded in a worker thread (its import never runs on
    the loop). One place for the session's reader and the local API's. An array without
    bytes (zero-sized) is not seen from the length prefix: decoding without numpy finds
    it, and the payload is decoded again once numpy is loaded."""
    if loaded() is None:
        if not codec.carries_arrays(payload):
            try:
                return from_wire(codec.decode(payload, numpy_loaded_only=True))
            except codec.NumpyNeeded:
                pass
        await ready()
    return decode_message(payload)


#: Resolved field hints per message class, one cache per numpy state (loaded or not):
#: resolving costs ~50 us (``typing.get_type_hints``), more than the rest of decoding a
#: small message, and an idle daemon (numpy never loaded) decodes every probe and ack.
_HINT_CACHE: dict[type, dict[str, Any]] = {}
_HINT_CACHE_NO_NUMPY: dict[type, dict[str, Any]] = {}


class _Unloaded:
    """Stands for ``np.ndarray`` in a message's resolved annotations while numpy is not
    loaded: nothing is an instance (no value can be an array then)."""


#: What ``np`` names while annotations are resolved before numpy is loaded: resolving
#: ``np.ndarray`` through the lazy stand-in would import numpy on the event loop for a
#: message that carries no array (say a model record whose bias is None).
_NO_NUMPY = types.SimpleNamespace(ndarray=_Unloaded)


def _hints(cls: type) -> dict[str, Any]:
    """``cls``'s resolved field hints. Before numpy is loaded ``np.ndarray`` resolves to
    the stand-in, and those answers are cached apart: once numpy is loaded the class is
    resolved again, against the real ``np.ndarray``."""
    numpy_loaded = loaded() is not None
    cache = _HINT_CACHE if numpy_loaded else _HINT_CACHE_NO_NUMPY
    hints = cache.get(cls)
    if hints is None:
        resolved = typing.get_type_hints(cls, localns=None if numpy_loaded
                                         else {"np": _NO_NUMPY})
        hints = {k: v for k, v in resolved.items()
                 if typing.get_origin(v) is not ClassVar and v is not ClassVar}
        cache[cls] = hints
    return hints


def _is_ndarray(hint: Any) -> bool:
    """Whether ``hint`` is ``np.ndarray`` (or its stand-in :class:`_Unloaded`), without
    importing numpy for messages that carry no array (an idle daemon's handshake and
    gossip): a hint can only be ndarray once the annotation naming it was resolved."""
    if hint is _Unloaded:
        return True
    numpy = loaded()
    return numpy is not None and hint is numpy.ndarray


def _is_array(value: Any) -> bool:
    numpy = loaded()
    return numpy is not None and isinstance(value, numpy.ndarray)


def _check(value: Any, hint: Any, where: str) -> Any:
    """Return ``value`` if it matches ``hint`` (coercing int to float), else raise."""
    if hint is Any:
        return value
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        for option in typing.get_args(hint):
            try:
                return _check(value, option, where)
            except DecodeError:
                continue
        raise DecodeError(f"{where}: {type(value).__name__} is not {hint}")
    if hint is type(None):
        if value is None:
            return None
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is bool or hint is str or hint is bytes:
        if isinstance(value, hint):
            return value
    elif _is_ndarray(hint):
        if _is_array(value):
            return value
    elif origin is list:
        if isinstance(value, (list, tuple)):
            (item,) = typing.get_args(hint) or (Any,)
            return [_check(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    elif origin is dict or hint is dict:
        if isinstance(value, dict):
            args = typing.get_args(hint)
            item = args[1] if args else Any
            if not all(isinstance(k, str) for k in value):
                raise DecodeError(f"{where}: map keys must be strings")
            return {k: _check(v, item, f"{where}.{k}") for k, v in value.items()}
    elif origin is tuple:
        if isinstance(value, (list, tuple)):
            return tuple(_check(v, a, where) for v, a in zip(value, typing.get_args(hint)))
    else:
        raise TypeError(f"{where}: unsupported annotation {hint}")
    raise DecodeError(f"{where}: expected {getattr(hint, '__name__', hint)}, "
                      f"got {type(value).__name__}")

