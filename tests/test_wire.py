"""mapper_service.wire reads every request as protobuf does, without copying embeddings."""

from __future__ import annotations

import pytest
from google.protobuf.message import DecodeError, Message
from hypothesis import given, settings
from hypothesis import strategies as st

from mapper_service import wire
from mapper_service.gen import mapper_pb2 as pb

uint32 = st.integers(0, 2**32 - 1)
embeddings = st.builds(pb.Embeddings, rows=uint32, dim=uint32, data=st.binary(max_size=64))
names = st.text(max_size=12)
requests = st.one_of(
    st.builds(
        pb.TranslateRequest,
        source_model=names,
        target_model=names,
        kind=st.integers(0, 7),
        embeddings=st.one_of(st.none(), embeddings),
        request_id=names,
    ),
    st.builds(
        pb.CompareRequest,
        model_a=names,
        a=st.one_of(st.none(), embeddings),
        model_b=names,
        b=st.one_of(st.none(), embeddings),
        kind=st.integers(0, 7),
        far=st.floats(allow_nan=False),
    ),
)


def same(lazy: object, message: Message) -> None:
    for field in message.DESCRIPTOR.fields:
        got, want = getattr(lazy, field.name), getattr(message, field.name)
        if field.message_type is not None:
            assert (got.rows, got.dim, bytes(got.data)) == (want.rows, want.dim, want.data), field.name
        else:
            assert got == want, field.name


def parse(raw: bytes, cls: type[Message]) -> object:
    return wire.parse(raw, cls, wire.embedding_fields(cls), min_bytes=0)


@settings(max_examples=300, deadline=None)
@given(requests, st.binary(max_size=24), st.randoms(use_true_random=False))
def test_reads_as_protobuf_does(message: Message, junk: bytes, rnd) -> None:
    """Well-formed requests, then the same with bytes appended or cut: equal fields, or
    DecodeError from both."""
    raw = message.SerializeToString()
    cut = rnd.randint(0, len(raw))
    for variant in (raw, raw + junk, raw[:cut], message.SerializeToString() * 2):
        try:
            want = type(message).FromString(variant)
        except DecodeError:
            with pytest.raises(DecodeError):
                parse(variant, type(message))
            continue
        same(parse(variant, type(message)), want)


def test_embeddings_are_views_of_the_request() -> None:
    data = bytes(range(256)) * 64
    raw = pb.CompareRequest(model_a="a", a=pb.Embeddings(rows=64, dim=64, data=data)).SerializeToString()
    request = parse(raw, pb.CompareRequest)
    assert isinstance(request.a, wire.Embeddings) and request.a.data.obj is raw
    assert bytes(request.a.data) == data and request.model_a == "a"
    assert request.b.rows == 0 and request.b.data == b""  # absent: protobuf's default
