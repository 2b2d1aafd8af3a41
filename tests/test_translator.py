"""The transport-neutral serving layer in-process (a real SQLite file), and the interceptor
that maps its errors to gRPC statuses (a real in-process gRPC server on loopback)."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager

import grpc
import numpy as np
import pytest

from mapper import LinearMap, RotationMap
from mapper.core import mapfile
from mapper.core.calibration import Calibration
from mapper.errors import EmbeddingError, InvalidInput, LimitExceeded, MapNotFound, Unavailable
from mapper.serving.admission import GIGA, READ_EXPIRY, Admission, Budgets
from mapper.serving.sqlite import SQLiteMapStore
from mapper.serving.translator import Translator
from mapper_service import metrics
from mapper_service.client import MapperClient
from mapper_service.compute import ComputeThreads
from mapper_service.gen import mapper_pb2_grpc as pb_grpc
from mapper_service.interceptors import ServiceInterceptor, status_for
from mapper_service.servicer import MapperServicer

rng = np.random.default_rng(0)
X = rng.standard_normal((300, 16))
W = np.linalg.qr(rng.standard_normal((16, 16)))[0][:, :12]
Y = X @ W + 0.01 * rng.standard_normal((300, 12))


def linear_file(threshold: float = 0.5) -> bytes:
    m = LinearMap(source_id="a", target_id="b").fit(X, Y)
    return mapfile.dumps(m, {"calibration": Calibration({"0.01": threshold}).to_dict()})


@pytest.fixture
def translator(tmp_path):
    store = SQLiteMapStore(tmp_path / "maps.sqlite")
    store.publish(linear_file())
    return Translator(store, max_batch=100)


def test_translate_uses_the_stored_map(translator):
    y, ref = translator.translate(X[:5].astype(np.float32), "a", "b")
    assert y.shape == (5, 12) and ref.map_id == "a->b:linear" and ref.version == 1
    np.testing.assert_allclose(np.linalg.norm(y, axis=1), 1, rtol=1e-5)


def test_compare_decides_with_the_calibrated_threshold(translator):
    a, b = X[:10].astype(np.float32), Y[:10].astype(np.float32)
    result = translator.compare(a, b, "a", "b", far=0.01)
    assert result.threshold == 0.5 and result.map.map_id == "a->b:linear"
    np.testing.assert_array_equal(result.same, result.scores >= 0.5)
    assert (result.scores > 0.9).all()  # planted: a near-exact linear relation
    with pytest.raises(InvalidInput, match="no calibrated threshold at FAR 0.001"):
        translator.compare(a, b, "a", "b", far=1e-3)
    same_model = translator.compare(b, b, "b", "b")
    assert same_model.map is None
    np.testing.assert_allclose(same_model.scores, 1, rtol=1e-5)


def test_errors_are_the_library_s(translator):
    with pytest.raises(MapNotFound):
        translator.translate(X[:2], "a", "nobody")
    with pytest.raises(LimitExceeded):
        translator.translate(np.zeros((101, 16), np.float32), "a", "b")
    with pytest.raises(EmbeddingError):
        translator.translate(np.zeros((2, 15), np.float32), "a", "b")
    with pytest.raises(EmbeddingError):
        translator.compare(X[:3], Y[:2], "a", "b")


def test_reload_sees_a_publish_from_another_process_s_store(translator, tmp_path):
    other = SQLiteMapStore(tmp_path / "maps.sqlite")  # a second connection, as another process
    other.publish(mapfile.dumps(RotationMap(source_id="a", target_id="b").fit(X, Y)))
    with pytest.raises(MapNotFound):
        translator.translate(X[:1], "a", "b", "rotation")
    assert translator.reload() is True and translator.reload() is False
    assert translator.translate(X[:1], "a", "b", "rotation")[1].kind == "rotation"


def test_only_library_errors_are_invalid_argument():
    assert status_for(EmbeddingError("x")) is grpc.StatusCode.INVALID_ARGUMENT
    assert status_for(MapNotFound("x")) is grpc.StatusCode.NOT_FOUND
    assert status_for(ValueError("a bug")) is grpc.StatusCode.INTERNAL
    assert status_for(KeyError("a bug")) is grpc.StatusCode.INTERNAL


class BrokenStore(SQLiteMapStore):
    broken = False

    def list(self, all_versions: bool = False):
        if self.broken:
            raise ValueError("a bug in a store")
        return super().list(all_versions)


@contextmanager
def aio_server(servicer: MapperServicer) -> Iterator[int]:
    """The asyncio gRPC server mapper-serve runs, on its own loop in a thread; yields its port."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def start() -> tuple[grpc.aio.Server, int]:
        server = grpc.aio.server(interceptors=[ServiceInterceptor()])
        pb_grpc.add_MapperServiceServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        return server, port

    server, port = asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    try:
        yield port
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(None), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def test_interceptor_maps_errors_and_counts_streams(tmp_path):
    store = BrokenStore(tmp_path / "maps.sqlite")
    store.publish(linear_file())
    translator = Translator(store)
    store.broken = True
    failed = metrics.REQUESTS.labels("TranslateStream", "NOT_FOUND")
    before = failed._value.get()
    with ComputeThreads(2) as compute, aio_server(MapperServicer(translator, compute=compute)) as port:
        with MapperClient(f"127.0.0.1:{port}") as client:
            with pytest.raises(grpc.RpcError) as err:
                client.list_mappings()
            assert err.value.code() is grpc.StatusCode.INTERNAL and err.value.details() == "internal error"
            batches = [X[:2].astype(np.float32)] * 2
            assert len(list(client.translate_stream(batches, "a", "b"))) == 2
            with pytest.raises(grpc.RpcError) as err:
                list(client.translate_stream(batches, "a", "zzz"))
            assert err.value.code() is grpc.StatusCode.NOT_FOUND
            assert err.value.details().startswith("stream message 1:")
    assert failed._value.get() == before + 1


class CountingStore(SQLiteMapStore):
    """Counts reads of map bytes."""

    blob_reads = 0

    def get(self, map_id, version=None, *, with_data=True):
        self.blob_reads += with_data
        return super().get(map_id, version, with_data=with_data)


def test_a_write_reloads_only_what_changed_and_frees_the_old_catalog(tmp_path):
    store = CountingStore(tmp_path / "maps.sqlite")
    store.publish(linear_file())
    store.publish(mapfile.dumps(RotationMap(source_id="a", target_id="b").fit(X, Y)))
    translator = Translator(store)
    assert store.blob_reads == 2
    kept = translator.catalog.entry("a->b:rotation")[1]
    old = weakref.ref(translator.catalog)
    gc.disable()  # freed by reference counting, at once, not by a later collection
    try:
        translator.publish(linear_file(threshold=0.7))
        assert old() is None
    finally:
        gc.enable()
    assert store.blob_reads == 3  # only the new version's bytes
    assert translator.catalog.entry("a->b:rotation")[1] is kept
    # Metadata calls never read map bytes.
    translator.list(all_versions=True)
    assert translator.get("a->b:linear", with_data=False).data is None
    assert store.blob_reads == 3


def test_requests_wait_for_the_first_load(tmp_path):
    opened = []

    def open_store():
        opened.append(1)
        if len(opened) < 3:
            raise Unavailable("database down")
        store = SQLiteMapStore(tmp_path / "maps.sqlite")
        store.publish(linear_file())
        return store

    translator = Translator(open_store)
    with pytest.raises(Unavailable, match="not ready: the map store could not be read: database down"):
        translator.translate(X[:1], "a", "b")
    assert translator.reload() is False and translator.reload() is True
    assert translator.translate(X[:1], "a", "b")[0].shape == (1, 12)


def test_admission_budgets_and_a_client_s_bucket():
    now = [0.0]
    budgets = Budgets(
        call_macs=10 * GIGA, inflight_macs=15 * GIGA, inflight_bytes=100, client_macs_per_s=4 * GIGA
    )
    adm = Admission(budgets, clock=lambda: now[0])
    with pytest.raises(LimitExceeded, match="per-call budget"):
        adm.admit(11 * GIGA, 0)
    first = adm.admit(10 * GIGA, 10)
    with pytest.raises(LimitExceeded, match="server busy: .* multiply-adds"):
        adm.admit(6 * GIGA, 10)
    with pytest.raises(LimitExceeded, match="server busy: .* MiB"):
        adm.admit(1, 91)
    first.release()
    first.release()  # once only
    assert adm.inflight_macs == 0 and adm.inflight_bytes == 0
    # A client's bucket holds one maximal call and refills at its rate.
    adm.admit(10 * GIGA, 0, client="c").release()
    with pytest.raises(LimitExceeded, match="client 'c' is over its rate .* retry in 2.50 s"):
        adm.admit(10 * GIGA, 0, client="c")
    adm.admit(10 * GIGA, 0, client="d").release()  # another client is not held back
    now[0] = 3.0
    adm.admit(10 * GIGA, 0, client="c").release()
    # Work done at once (a small call on the event loop) is checked and charged the same
    # way, and holds nothing.
    held = adm.admit(10 * GIGA, 50)
    with pytest.raises(LimitExceeded, match="server busy: .* multiply-adds"):
        adm.check(6 * GIGA, 0)
    with pytest.raises(LimitExceeded, match="per-call budget"):
        adm.check(11 * GIGA, 0)
    adm.check(4 * GIGA, 50)
    assert (adm.inflight_macs, adm.inflight_bytes) == (10 * GIGA, 50)
    held.release()
    adm.check(7 * GIGA, 0, client="d")
    with pytest.raises(LimitExceeded, match="client 'd' is over its rate"):
        adm.check(7 * GIGA, 0, client="d")
    assert (adm.inflight_macs, adm.inflight_bytes) == (0, 0)


def test_a_client_s_requests_are_read_one_at_a_time_once_its_byte_allowance_is_low():
    """Bytes are charged once read, so calls arriving together when a client's allowance
    refills used to be read together: each a maximal message, the event loop held for each."""
    now = [0.0]
    mib = 2**20
    adm = Admission(Budgets(client_bytes_per_s=mib, client_burst_bytes=8 * mib), clock=lambda: now[0])
    adm.check_rate("c")
    adm.check_rate("c")  # a full allowance: reads may overlap
    adm.charge_bytes("c", 3 * mib)
    adm.charge_bytes("c", 3 * mib)  # 2 MiB left, under half of 8
    adm.check_rate("c")  # let in to be read...
    with pytest.raises(LimitExceeded, match=r"has a request being read and 2.0 MiB .* retry in 2.00 s"):
        adm.check_rate("c")  # ...so the next waits for it
    adm.check_rate("d")  # another client is not held back
    adm.charge_bytes("c", 4 * mib)  # read: 2 MiB over the allowance
    assert adm.byte_debt_seconds("c") == pytest.approx(2.0)
    with pytest.raises(LimitExceeded, match="sent more than its 1 MiB/s of requests; retry in 2.00 s"):
        adm.check_rate("c")
    now[0] = 2.5
    assert adm.byte_debt_seconds("c") == 0
    adm.check_rate("c")  # a read let in whose request never comes (the client went away)...
    with pytest.raises(LimitExceeded, match="has a request being read"):
        adm.check_rate("c")
    adm.budgets = Budgets(client_bytes_per_s=0.01 * mib, client_burst_bytes=8 * mib)
    now[0] += READ_EXPIRY + 0.1
    adm.check_rate("c")  # ...stops counting after READ_EXPIRY


def test_translate_many_equals_each_request_alone_and_a_nan_fails_only_its_request(translator):
    route = translator.route("a", "b")
    xs = [X[i : i + n].astype(np.float32) for i, n in ((0, 3), (3, 1), (4, 7))]
    alone = [translator.translate_job(x, route).run()[0] for x in xs]
    for got, want in zip(translator.translate_many(xs, route), alone, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)  # another product's blocking
    bad = xs[2].copy()
    bad[4, 0] = np.nan
    got = translator.translate_many([xs[0], bad, xs[1]], route)
    assert isinstance(got[1], EmbeddingError) and "row 4" in str(got[1])
    np.testing.assert_allclose(got[0], alone[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got[2], alone[1], rtol=1e-5, atol=1e-6)


def test_a_nan_is_reported_at_its_row_of_the_request_whatever_the_block(translator):
    route = translator.route("a", "b")
    x = X[:60].astype(np.float32)
    x[40, 3] = np.nan
    job = translator.translate_job(x, route)
    job.block = 16  # row 40 is row 8 of the third block
    with pytest.raises(EmbeddingError, match="row 40"):
        job.run()
    with pytest.raises(EmbeddingError, match="row 0"):
        translator.translate_now(x[40:41], route)


def test_concurrent_mid_size_translates_share_products_and_each_gets_its_own_rows(tmp_path):
    """32 x 512 rows are over the inline limit and within one block: such calls waiting for
    a compute thread together are applied as one product (mapper_service/compute.py)."""
    d = 512
    r = np.random.default_rng(1)
    m = LinearMap(alpha=1.0, source_id="p", target_id="q").fit(
        r.standard_normal((600, d)), r.standard_normal((600, d))
    )
    store = SQLiteMapStore(tmp_path / "maps.sqlite")
    store.publish(mapfile.dumps(m))
    translator = Translator(store)
    requests = [r.standard_normal((32, d)).astype(np.float32) for _ in range(24)]
    requests[5][17, 3] = np.nan
    runs: list[int] = []
    many = translator.translate_many
    translator.translate_many = lambda xs, route: runs.append(len(xs)) or many(xs, route)  # counts products
    servicer = MapperServicer(translator, compute=ComputeThreads(1))
    go = threading.Event()
    servicer.compute.post(lambda: go.wait(30))  # the thread is busy until calls queue up
    with aio_server(servicer) as port:
        results: dict[int, object] = {}

        def send(i: int) -> None:
            with MapperClient(f"127.0.0.1:{port}") as client:
                try:
                    results[i] = client.translate(requests[i], "p", "q")
                except grpc.RpcError as e:
                    results[i] = e

        threads = [threading.Thread(target=send, args=(i,)) for i in range(len(requests))]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 20
        while servicer.batches.waiting() < 8 and time.monotonic() < deadline:
            time.sleep(0.01)
        go.set()
        for t in threads:
            t.join(30)
    servicer.compute.shutdown()
    err = results.pop(5)
    assert isinstance(err, grpc.RpcError) and err.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "row 17" in err.details()
    for i, (y, ref) in results.items():
        np.testing.assert_allclose(y, m.transform(requests[i]), rtol=1e-5, atol=1e-6)
        assert ref.map_id == "p->q:linear"
    assert sum(runs) == len(requests) and max(runs) > 1  # some calls shared a product
