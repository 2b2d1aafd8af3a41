"""Requests that carry embeddings, read without copying the embeddings' bytes.

protobuf copies a ``bytes`` field when it parses a message and again each time Python reads
it: for a 63.5 MiB Compare that is two copies, about 22 ms of the event loop holding the
GIL (2 cores), on top of gRPC's own two. Here each ``Embeddings`` field's ``data`` stays a
view of the received buffer, and every other field is parsed by protobuf itself. Anything
unusual (a field given twice, an unexpected wire type, a truncated message) is left to
protobuf, so a request reads the same either way (``tests/test_wire.py`` checks it against
protobuf).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NamedTuple

from google.protobuf.message import Message

from .gen import mapper_pb2 as pb

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5
#: Below this size protobuf's copies cost less than reading the fields here (a 1 x 512
#: Translate: 1.5 us with protobuf, 7 us here).
MIN_BYTES = 64 << 10


class Embeddings(NamedTuple):
    """An ``Embeddings`` message whose ``data`` is a view of the request's buffer."""

    rows: int
    dim: int
    data: memoryview


class Request:
    """A parsed request: its ``Embeddings`` fields as :class:`Embeddings`, the rest as the
    protobuf message's attributes."""

    __slots__ = ("_embeddings", "_message")

    def __init__(self, message: Message, embeddings: dict[str, Embeddings]) -> None:
        self._message = message
        self._embeddings = embeddings

    def __getattr__(self, name: str) -> Any:
        found = self._embeddings.get(name)
        return found if found is not None else getattr(self._message, name)


class _Unusual(Exception):
    """Left to protobuf."""


def embedding_fields(cls: type[Message]) -> dict[int, str]:
    """{field number: name} of the ``Embeddings`` fields of a request message class."""
    return {
        f.number: f.name
        for f in cls.DESCRIPTOR.fields
        if f.message_type is not None and f.message_type.full_name == pb.Embeddings.DESCRIPTOR.full_name
    }


def _varint(buf: memoryview, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[i]  # IndexError past the end: truncated
        i += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, i
        shift += 7
        if shift >= 70:
            raise _Unusual


def _fields(buf: memoryview) -> Iterator[tuple[int, int, int, int, int]]:
    """(number, wire type, start, value start, end) of each field."""
    i, n = 0, len(buf)
    while i < n:
        start = i
        tag, i = _varint(buf, i)
        number, wire = tag >> 3, tag & 7
        value_at = i
        if wire == _VARINT:
            _, i = _varint(buf, i)
        elif wire == _I64:
            i += 8
        elif wire == _I32:
            i += 4
        elif wire == _LEN:
            length, value_at = _varint(buf, i)
            i = value_at + length
        else:
            raise _Unusual  # groups
        if i > n or number == 0:
            raise _Unusual
        yield number, wire, start, value_at, i


def _embeddings(buf: memoryview) -> Embeddings:
    rows = dim = 0
    data = buf[:0]
    for number, wire, _, at, end in _fields(buf):
        expected = _LEN if number == 3 else _VARINT if number in (1, 2) else None
        if expected is None:
            continue  # an unknown field: protobuf skips it too
        if wire != expected:
            raise _Unusual
        if number == 3:
            data = buf[at:end]
        else:
            value = _varint(buf, at)[0] & 0xFFFFFFFF  # uint32: protobuf keeps the low 32 bits
            if number == 1:
                rows = value
            else:
                dim = value
    return Embeddings(rows, dim, data)


def parse(
    raw: bytes, cls: type[Message], fields: dict[int, str], min_bytes: int = MIN_BYTES
) -> Request | Message:
    """``cls`` parsed from ``raw``, its ``Embeddings`` fields (``fields``, from
    :func:`embedding_fields`) as views of ``raw`` when it has ``min_bytes`` or more.
    DecodeError as protobuf raises it."""
    if len(raw) < min_bytes:
        return cls.FromString(raw)
    buf = memoryview(raw)
    try:
        rest: list[memoryview] = []
        found: dict[str, Embeddings] = {}
        for number, wire, start, at, end in _fields(buf):
            name = fields.get(number)
            if name is None:
                rest.append(buf[start:end])
            elif wire != _LEN or name in found:  # protobuf would merge a repeated message
                raise _Unusual
            else:
                found[name] = _embeddings(buf[at:end])
        return Request(cls.FromString(b"".join(rest)), found)
    except (_Unusual, IndexError):
        return cls.FromString(raw)
