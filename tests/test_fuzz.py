"""Property-based fuzzing of every RPC against the real server: for any well-formed message
the reply's status is one docs/guides/service.md documents for that RPC, never INTERNAL, and the
server keeps running."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from mapper import CanonicalSpace, LinearMap
from mapper.core import mapfile
from mapper.serving.sqlite import SQLiteMapStore
from mapper_service.gen import mapper_pb2 as pb

from .servers import start_server

TOKEN = "fuzz-token"
S = grpc.StatusCode
ANY = {S.OK, S.RESOURCE_EXHAUSTED}  # any RPC: done, or over the message size limit
ADMIN = {S.UNAUTHENTICATED, S.PERMISSION_DENIED}
#: The statuses each RPC may return (docs/guides/service.md's table).
DOCUMENTED = {
    "Translate": ANY | {S.INVALID_ARGUMENT, S.NOT_FOUND},
    "TranslateStream": ANY | {S.INVALID_ARGUMENT, S.NOT_FOUND},
    "Compare": ANY | {S.INVALID_ARGUMENT, S.NOT_FOUND},
    "Embed": ANY | {S.INVALID_ARGUMENT, S.NOT_FOUND, S.UNAVAILABLE},
    "ListModels": ANY,
    "ListMappings": ANY,
    "GetMapping": ANY | {S.INVALID_ARGUMENT, S.NOT_FOUND, S.PERMISSION_DENIED},  # include_file: admin only
    "PutMapping": ANY | ADMIN | {S.INVALID_ARGUMENT},
    "DeleteMapping": ANY | ADMIN | {S.INVALID_ARGUMENT, S.NOT_FOUND},
    "RollbackMapping": ANY | ADMIN | {S.INVALID_ARGUMENT, S.NOT_FOUND},
}
FUZZ = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
    database=None,
)

rng = np.random.default_rng(3)
X, Y, Z = rng.standard_normal((200, 16)), rng.standard_normal((200, 12)), rng.standard_normal((200, 20))
GOOD_FILE = mapfile.dumps(LinearMap(source_id="a", target_id="b").fit(X, Y))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    work = tmp_path_factory.mktemp("fuzz")
    store = SQLiteMapStore(work / "maps.sqlite")
    store.publish(GOOD_FILE)
    store.publish(mapfile.dumps(CanonicalSpace(name="h", max_iter=3).fit({"a": X, "b": Y, "c": Z})))
    srv = start_server(work, work / "maps.sqlite", "--admin-token", TOKEN, "--max-batch", "64")
    yield srv
    assert srv.proc.poll() is None, "the server exited during fuzzing"
    assert srv.stop() == 0
    assert "Traceback" not in srv.log.read_text()


names = (
    st.sampled_from(["a", "b", "c", "", "zzz", "hub:h", "a->b:linear"])
    | st.text(max_size=20)
    | st.text(min_size=250, max_size=400)
)


@st.composite
def embeddings(draw) -> pb.Embeddings:
    rows = draw(st.integers(0, 8) | st.integers(0, 80) | st.integers(0, 2**32 - 1))
    dim = draw(st.sampled_from([0, 1, 12, 16, 20]) | st.integers(0, 2**32 - 1))
    if rows * dim <= 2048 and draw(st.integers(0, 3)):  # mostly well-shaped, any float32 values
        data = draw(arrays(np.float32, rows * dim, elements=st.floats(width=32))).tobytes()
    else:
        data = draw(st.binary(max_size=512))
    return pb.Embeddings(rows=rows, dim=dim, data=data)


def map_files() -> st.SearchStrategy[bytes]:
    def flip(data: bytes, at: int, value: int) -> bytes:
        b = bytearray(data)
        b[at % len(b)] = value
        return bytes(b)

    flipped = st.builds(flip, st.just(GOOD_FILE), st.integers(0, len(GOOD_FILE)), st.integers(0, 255))
    return (
        st.binary(max_size=2048)
        | flipped
        | st.builds(lambda n: GOOD_FILE[:n], st.integers(0, len(GOOD_FILE)))
    )


def status(call, request, **kwargs) -> grpc.StatusCode:
    try:
        reply = call(request, timeout=30, **kwargs)
        if hasattr(reply, "__next__"):
            list(reply)
        return S.OK
    except grpc.RpcError as e:
        return e.code()


def check(server, method: str, request, *, stream: bool = False, admin: bool | None = None) -> None:
    with server.client() as c:
        call = getattr(c.stub, method)
        metadata = [("authorization", f"Bearer {TOKEN}")] if admin else []
        code = status(call, iter(request) if stream else request, metadata=metadata)
    assert code is not S.INTERNAL, (method, request)
    assert code in DOCUMENTED[method], (method, code)


kinds = st.integers(0, 5) | st.integers(0, 2**31 - 1)
translate_requests = st.builds(
    pb.TranslateRequest,
    source_model=names,
    target_model=names,
    kind=kinds,
    embeddings=embeddings(),
    request_id=st.text(max_size=50),
)


@FUZZ
@given(request=translate_requests)
def test_translate(server, request):
    check(server, "Translate", request)


@FUZZ
@given(requests=st.lists(translate_requests, max_size=4))
def test_translate_stream(server, requests):
    check(server, "TranslateStream", requests, stream=True)


@FUZZ
@given(
    request=st.builds(
        pb.CompareRequest,
        model_a=names,
        model_b=names,
        a=embeddings(),
        b=embeddings(),
        kind=kinds,
        far=st.floats(allow_nan=True, allow_infinity=True),
    )
)
def test_compare(server, request):
    check(server, "Compare", request)


@FUZZ
@given(request=st.builds(pb.EmbedRequest, model=names, images=st.lists(st.binary(max_size=64), max_size=70)))
def test_embed(server, request):
    check(server, "Embed", request)


@FUZZ
@given(
    request=st.builds(
        pb.ListMappingsRequest, source_model=names, target_model=names, all_versions=st.booleans()
    )
)
def test_list(server, request):
    check(server, "ListModels", pb.ListModelsRequest())
    check(server, "ListMappings", request)


@FUZZ
@given(
    request=st.builds(
        pb.GetMappingRequest, map_id=names, version=st.integers(0, 2**32 - 1), include_file=st.booleans()
    )
)
def test_get_mapping(server, request):
    check(server, "GetMapping", request)


@FUZZ
@given(map_file=map_files(), admin=st.booleans())
def test_put_mapping(server, map_file, admin):
    check(server, "PutMapping", pb.PutMappingRequest(map_file=map_file), admin=admin)


@FUZZ
@given(
    map_id=st.sampled_from(["zzz", "x->y:linear"]) | st.text(max_size=300),
    version=st.integers(0, 2**32 - 1),
    admin=st.booleans(),
)
def test_rollback_and_delete(server, map_id, version, admin):
    # Never the served maps' ids: deleting them would only make later examples less varied.
    check(server, "RollbackMapping", pb.RollbackMappingRequest(map_id=map_id, version=version), admin=admin)
    check(server, "DeleteMapping", pb.DeleteMappingRequest(map_id=map_id), admin=admin)
