"""mapper-serve under hostile load and misconfiguration, each against a real server process:
flags that would weaken security, health beside idle streams and maximal calls, admission by
cost, work stopped on cancel and deadline, memory across publishes, readiness with the store
down, and draining under load."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mapper import KernelMap, LinearMap
from mapper.core import mapfile
from mapper.serving.sqlite import SQLiteMapStore
from mapper_service import convert
from mapper_service.client import MapperClient
from mapper_service.gen import mapper_pb2 as pb
from mapper_service.gen import mapper_pb2_grpc as pb_grpc

from .servers import free_port, start_server
from .test_service_load import rss_mib

TOKEN = "limits-admin-token-0123456789"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
rng = np.random.default_rng(3)
#: Kernel maps on 128-d embeddings are the costliest per row the project fits (2,048
#: landmarks): a 65,000-row Compare is the maximal request of the issue (63.5 MiB; about 1.3
#: CPU-s here, where the issue's tuned map with S-norm took 20.5).
D = 128
ROWS = 65_000


@pytest.fixture(scope="module")
def heavy_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("heavy") / "maps.sqlite"
    X, Y = rng.standard_normal((2500, D)), rng.standard_normal((2500, D))
    store = SQLiteMapStore(path)
    store.publish(mapfile.dumps(KernelMap(source_id="a", target_id="b").fit(X, Y)))
    store.publish(mapfile.dumps(LinearMap(source_id="a", target_id="c").fit(X, Y)))
    store.publish(mapfile.dumps(LinearMap(source_id="e", target_id="f").fit(X[:, :16], np.tile(Y, 4))))
    return path


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100  # utime + stime, in clock ticks


def compare_request(rows: int) -> pb.CompareRequest:
    x = rng.standard_normal((rows, D)).astype(np.float32)
    return pb.CompareRequest(model_a="a", model_b="b", a=convert.from_array(x), b=convert.from_array(x))


def health(channel: grpc.Channel, timeout: float = 1.0) -> int:
    return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout).status


# -- 1. flags ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "flags, message",
    [
        (["--tls-client-ca", "{pem}"], "--tls-client-ca (mutual TLS) needs --tls-cert"),
        (["--tls-cert", "{pem}"], "--tls-cert and --tls-key go together"),
        (["--admin-token-file", "{missing}"], "nope: no such file"),
        (["--admin-token-file", "{blank}"], "holds no token"),
        (["--keep-versions", "0"], "--keep-versions must be > 0"),
        (["--max-call-gmacs", "nan"], "--max-call-gmacs must be > 0"),
        (["--workers", "-1"], "--workers must be >= 0"),
    ],
)
def test_flags_that_weaken_what_was_asked_refuse_to_start(tmp_path, heavy_store, flags, message):
    """Never a silent fallback: a CA without a certificate used to serve plaintext and log
    mtls: true; --keep-versions 0 crashed with a traceback."""
    (tmp_path / "x.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    (tmp_path / "blank").write_text("  \n")
    paths = {"pem": tmp_path / "x.pem", "missing": tmp_path / "nope", "blank": tmp_path / "blank"}
    args = [f.format(**paths) for f in flags]
    done = subprocess.run(
        [sys.executable, "-m", "mapper_service", "--store", str(heavy_store), "--port", "0", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    assert message in done.stderr, done.stderr


# -- 2. health beside idle streams and maximal calls ---------------------------------------------
def test_health_and_small_calls_answer_beside_idle_streams_and_maximal_compares(tmp_path, heavy_store):
    srv = start_server(
        tmp_path, heavy_store, "--max-call-gmacs", "1000", "--max-inflight-gmacs", "10000",
        "--max-inflight-mb", "4096",
    )  # fmt: skip
    release = threading.Event()

    def idle():
        release.wait()
        yield from ()

    channel = grpc.insecure_channel(srv.address, options=[("grpc.max_send_message_length", 128 << 20)])
    stub = pb_grpc.MapperServiceStub(channel)
    streams = [stub.TranslateStream(idle(), timeout=120) for _ in range(32)]
    # Eight clients each send maximal Compares back to back (about 1.3 CPU-s each on 2 cores of
    # 2026), so the server has maximal work in hand for the whole time health is probed.
    request, answered = compare_request(ROWS), []

    def attack():
        while not release.is_set():
            answered.append(len(stub.Compare(request, timeout=120).scores))

    attackers = [threading.Thread(target=attack) for _ in range(8)]
    for t in attackers:
        t.start()
    try:
        time.sleep(3)  # the compares are received and running
        cpu, start = cpu_seconds(srv.proc.pid), time.monotonic()
        latencies = []
        with grpc.insecure_channel(srv.address) as probe, srv.client(timeout=1) as small:
            for _ in range(20):
                t0 = time.perf_counter()
                assert health(probe) == SERVING
                latencies.append(time.perf_counter() - t0)
                y, _ = small.translate(np.ones((1, D), np.float32), "a", "c")
                assert y.shape == (1, D)
                time.sleep(0.1)
        assert max(latencies) < 1.0, latencies
        # The compares kept at least a core busy all along, and were answered.
        assert cpu_seconds(srv.proc.pid) - cpu > 0.8 * (time.monotonic() - start)
        assert answered and set(answered) == {ROWS}, answered
    finally:
        release.set()
        for s in streams:
            s.cancel()
        for t in attackers:
            t.join(timeout=30)
        channel.close()
        srv.stop()


# -- 3. admission by cost --------------------------------------------------------------------------
def test_calls_are_admitted_by_cost_before_any_work(tmp_path, heavy_store):
    srv = start_server(
        tmp_path,
        heavy_store,
        "--max-message-mb",
        "16",
        "--max-call-gmacs",
        "2.5",
        "--max-inflight-gmacs",
        "3",
    )
    x = rng.standard_normal((8000, D)).astype(np.float32)
    with srv.client(timeout=30) as c:
        cpu = cpu_seconds(srv.proc.pid)
        t0 = time.perf_counter()
        # Over the per-call budget (~4.5 G multiply-adds): refused at once, saying what to do.
        with pytest.raises(grpc.RpcError) as err:
            c.compare(x, "a", x, "b")
        assert err.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "per-call budget" in err.value.details() and "smaller requests" in err.value.details()
        # A reply over the message limit (10,000 x 512 float32 = 20 MiB) is refused before the work.
        with pytest.raises(grpc.RpcError) as err:
            c.translate(rng.standard_normal((10_000, 16)).astype(np.float32), "e", "f")
        assert err.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "reply would be 19.5 MiB" in err.value.details()
        assert time.perf_counter() - t0 < 2 and cpu_seconds(srv.proc.pid) - cpu < 0.5
        # Beyond the in-flight budget: "server busy" while another call holds most of it.
        running = pb_grpc.MapperServiceStub(c.channel).Compare.future(compare_request(4000), timeout=60)
        busy = None
        while busy is None and not running.done():  # probe until one arrives while it runs
            try:
                c.compare(x[:4000], "a", x[:4000], "b")
            except grpc.RpcError as e:
                busy = e
        assert busy is not None, "no call was refused while another held most of the budget"
        assert busy.code() is grpc.StatusCode.RESOURCE_EXHAUSTED and "server busy" in busy.details()
        assert len(running.result().scores) == 4000
        assert c.compare(x[:4000], "a", x[:4000], "b").scores.shape == (4000,)  # admitted once it is done
    srv.stop()


BULK, GATE = "bulk-token-0123456789abcdef", "gate-token-0123456789abcdef"


def serve_two_clients(tmp_path: Path, store: Path, *flags: str):
    """A server of known clients only: 'bulk' and 'gate', with tokens BULK and GATE."""
    (tmp_path / "clients").write_text(f"gate {GATE}\nbulk {BULK}\n")
    return start_server(tmp_path, store, "--client-tokens-file", str(tmp_path / "clients"), *flags)


def test_each_known_client_has_a_rate(tmp_path, heavy_store):
    srv = serve_two_clients(tmp_path, heavy_store, "--client-gmacs-per-s", "0.5", "--max-call-gmacs", "2")
    x = rng.standard_normal((3000, D)).astype(np.float32)  # ~1.7 G multiply-adds a call
    with srv.client(token=BULK) as bulk, srv.client(token=GATE) as gate:
        bulk.compare(x, "a", x, "b")  # the burst: at most one maximal call
        with pytest.raises(grpc.RpcError) as err:
            bulk.compare(x, "a", x, "b")
        assert err.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "client 'bulk' is over its rate" in err.value.details()
        assert gate.compare(x, "a", x, "b").scores.shape == (3000,)  # another client is not held back
    srv.stop()


def test_one_row_calls_done_on_the_event_loop_count_against_a_client_s_rate(tmp_path, heavy_store):
    # They skip the compute threads and hold no budget, but are charged all the same: each
    # costs its arithmetic plus one call's protocol work (about 1.07 M multiply-adds here).
    flags = ("--client-gmacs-per-s", "0.001", "--max-call-gmacs", "0.002")
    srv = serve_two_clients(tmp_path, heavy_store, *flags)
    x = rng.standard_normal((1, D)).astype(np.float32)
    with srv.client(token=BULK) as bulk, srv.client(token=GATE) as gate:
        bulk.translate(x, "a", "c")
        bulk.translate(x, "a", "c")  # the burst holds about three such calls
        with pytest.raises(grpc.RpcError) as err:
            for _ in range(3):
                bulk.translate(x, "a", "c")
        assert err.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "client 'bulk' is over its rate" in err.value.details()
        assert gate.translate(x, "a", "c")[0].shape == (1, D)
    srv.stop()


def test_a_client_over_its_byte_rate_is_refused_before_its_request_is_read(tmp_path, heavy_store):
    # Receiving and parsing a request costs the event loop about 1 ms per MiB before its cost is
    # known, refused or not: a client that sends more than its bytes per second is refused
    # at the headers. Shown by a request over the message limit: read, it would get grpc's
    # own "larger than max" error; refused unread, it gets the rate's.
    srv = serve_two_clients(tmp_path, heavy_store, "--client-mb-per-s", "1", "--max-message-mb", "4")
    x = rng.standard_normal((5000, D)).astype(np.float32)  # 2.4 MiB a request
    big = convert.from_array(rng.standard_normal((10_000, D)).astype(np.float32))  # 4.9 MiB
    options = [("grpc.max_send_message_length", 64 << 20)]
    with (
        srv.client(token=BULK) as bulk,
        srv.client(token=GATE) as gate,
        grpc.insecure_channel(srv.address, options=options) as ch,
    ):
        bulk.translate(x, "a", "b")  # within the burst of one maximal message (4 MiB)
        bulk.translate(x, "a", "b")  # read (the bucket was not in debt), and now it is
        with pytest.raises(grpc.RpcError) as err:
            pb_grpc.MapperServiceStub(ch).Translate(
                pb.TranslateRequest(source_model="a", target_model="b", embeddings=big),
                metadata=[("authorization", f"Bearer {BULK}")],
                timeout=10,
            )
        assert err.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "client 'bulk' sent more than its 1 MiB/s of requests; retry in" in err.value.details()
        assert gate.translate(x, "a", "b")[0].shape == (5000, D)  # another client is not held back
        with pytest.raises(grpc.RpcError) as err:  # a stranger is refused unread too
            pb_grpc.MapperServiceStub(ch).Translate(
                pb.TranslateRequest(source_model="a", target_model="b", embeddings=big), timeout=10
            )
        assert err.value.code() is grpc.StatusCode.UNAUTHENTICATED
        time.sleep(1.5)  # the debt (0.9 MiB beyond the burst) is paid back at 1 MiB/s
        assert bulk.translate(x, "a", "b")[0].shape == (5000, D)
    srv.stop()


def test_a_client_s_requests_are_read_one_at_a_time_once_its_allowance_is_low(tmp_path, heavy_store):
    """Bytes are charged once read: calls arriving together when an attacker's allowance
    refilled were all read, maximal messages one after another on the event loop, and health
    checks waited 0.4-1 s behind them (bench_attack.py). Now a client low on allowance has one
    request read at a time, and a stream over its rate has its next message read when paid."""
    srv = serve_two_clients(tmp_path, heavy_store, "--client-mb-per-s", "0.25", "--max-message-mb", "4")
    one = np.ones((1, D), np.float32)
    mib_rows = convert.from_array(rng.standard_normal((3072, D)).astype(np.float32))  # 1.5 MiB
    release = threading.Event()

    def messages():
        release.wait()
        for _ in range(2):
            yield pb.TranslateRequest(source_model="a", target_model="b", embeddings=mib_rows)

    with (
        srv.client(token=BULK) as bulk,
        srv.client(token=GATE) as gate,
        grpc.insecure_channel(srv.address) as ch,
    ):
        bulk.translate(rng.standard_normal((7000, D)).astype(np.float32), "a", "b")  # 0.6 of 4 MiB left
        stream = pb_grpc.MapperServiceStub(ch).TranslateStream(
            messages(), metadata=[("authorization", f"Bearer {BULK}")], timeout=60
        )
        time.sleep(0.5)  # the stream is let in: its first message is now being read
        with pytest.raises(grpc.RpcError) as err:
            bulk.translate(one, "a", "b")
        assert err.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "client 'bulk' has a request being read" in err.value.details()
        assert gate.translate(one, "a", "b")[0].shape == (1, D)  # another client is not held back
        release.set()
        next(stream)
        t_first = time.monotonic()
        # The first message put the client 0.9 MiB in debt, less what refilled since the
        # 7,000-row call (0.25 MiB/s for about a second): a wait near 3 s (2.85 s measured).
        next(stream)
        assert time.monotonic() - t_first > 1.0
        stream.cancel()
    srv.stop()


# -- 4. deadlines and cancellation ------------------------------------------------------------------
@pytest.mark.slow  # long; CI runs it with make test-slow
@pytest.mark.parametrize("how", ["deadline", "cancel"])
def test_work_stops_when_the_client_gives_up(tmp_path, heavy_store, how):
    # 130,000 rows: about 2.6 CPU-s of work on 2 cores of 2026 (a 2,048-landmark kernel map).
    srv = start_server(
        tmp_path, heavy_store, "--max-call-gmacs", "1000", "--max-message-mb", "160", "--max-batch", "200000"
    )
    with grpc.insecure_channel(srv.address, options=[("grpc.max_send_message_length", 256 << 20)]) as ch:
        call = pb_grpc.MapperServiceStub(ch).Compare.future(
            compare_request(2 * ROWS), timeout=1.0 if how == "deadline" else 60
        )
        time.sleep(1.0)
        if how == "cancel":
            call.cancel()
        with pytest.raises(grpc.FutureCancelledError if how == "cancel" else grpc.RpcError):
            call.result()
        time.sleep(0.3)
        cpu = cpu_seconds(srv.proc.pid)
        time.sleep(2)
        spent = cpu_seconds(srv.proc.pid) - cpu
    # It had over a CPU-second of work left; one row block is tens of milliseconds.
    assert spent < 0.3, f"{spent:.2f} CPU-s spent after the client gave up"
    srv.stop()


# -- 5. memory follows the maps ---------------------------------------------------------------------
@pytest.mark.slow  # long; CI runs it with make test-slow
def test_memory_stays_flat_across_publishes(tmp_path):
    store = tmp_path / "maps.sqlite"
    X, Y = rng.standard_normal((600, 512)), rng.standard_normal((600, 512))
    for i in range(8):  # ~40 MiB of maps that do not change
        SQLiteMapStore(store).publish(
            mapfile.dumps(LinearMap(alpha=1.0, source_id=f"m{i}", target_id="t").fit(X, Y))
        )
    srv = start_server(tmp_path, store, "--admin-token", TOKEN)
    small_x, small_y = rng.standard_normal((100, 16)), rng.standard_normal((100, 12))
    with srv.client(admin_token=TOKEN) as c:
        for i in range(100):
            m = LinearMap(source_id="s", target_id="u").fit(small_x + i, small_y)
            c.put_mapping(m)
        time.sleep(1)
        assert [m.ref.version for m in c.list_mappings(source="s")] == [100]
    after = rss_mib(srv.proc.pid)
    srv.stop()
    fresh = start_server(tmp_path, store)
    time.sleep(1)
    baseline = rss_mib(fresh.proc.pid)
    fresh.stop()
    assert after < 1.15 * baseline, f"{after:.0f} MiB after 100 publishes, {baseline:.0f} MiB fresh"


# -- 6. readiness -----------------------------------------------------------------------------------
@pytest.mark.slow  # long; CI runs it with make test-slow
def test_a_replica_is_not_serving_until_its_maps_are_loaded(tmp_path, postgres):
    """PostgreSQL down while a replica starts: it used to report SERVING with 0 maps and
    answer NOT_FOUND. (``postgres`` only for its policy when the binaries are missing; this
    test stops its own server.)"""
    from tools.postgres import PostgresServer

    with PostgresServer() as pg:
        url = pg.new_database()
        from mapper.serving.postgres import PostgresMapStore

        X, Y = rng.standard_normal((300, 16)), rng.standard_normal((300, 12))
        PostgresMapStore(url).publish(mapfile.dumps(LinearMap(source_id="a", target_id="b").fit(X, Y)))
        pg.kill()
        port = free_port()
        log = tmp_path / "server.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "mapper_service",
                    "--store",
                    url,
                    "--port",
                    str(port),
                    "--metrics-port",
                    "-1",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            deadline = time.monotonic() + 30
            while socket.socket().connect_ex(("127.0.0.1", port)) != 0:
                assert time.monotonic() < deadline and proc.poll() is None, log.read_text()
                time.sleep(0.1)
            with grpc.insecure_channel(f"127.0.0.1:{port}") as ch, MapperClient(f"127.0.0.1:{port}") as c:
                time.sleep(2)
                assert health(ch, 5) == NOT_SERVING
                with pytest.raises(grpc.RpcError) as err:
                    c.translate(X[:1].astype(np.float32), "a", "b")
                assert err.value.code() is grpc.StatusCode.UNAVAILABLE
                assert "not ready" in err.value.details() and "store" in err.value.details()
                events = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
                assert any(e.get("event") == "not_ready" and "store" in e["reason"] for e in events)
                pg.start()
                deadline = time.monotonic() + 30
                while health(ch, 5) != SERVING:
                    assert time.monotonic() < deadline, log.read_text()
                    time.sleep(0.2)
                assert c.translate(X[:1].astype(np.float32), "a", "b")[0].shape == (1, 12)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)


# -- 7. drain under load ----------------------------------------------------------------------------
def test_drain_under_load(tmp_path, heavy_store):
    """SIGTERM: NOT_SERVING visible while calls are still answered (--drain), calls in flight
    finish within --grace, new calls are refused with UNAVAILABLE, and the process exits
    within drain + grace + 1 s."""
    drain, grace = 2.0, 4.0
    srv = start_server(tmp_path, heavy_store, "--drain", str(drain), "--grace", str(grace))
    results: list[str] = []
    started_cancelled: list[float] = []  # when each call that ended CANCELLED was started
    stop = threading.Event()
    x = rng.standard_normal((2000, D)).astype(np.float32)  # ~0.3 s of work a call

    def client() -> None:
        with srv.client(timeout=30) as c:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    c.compare(x, "a", x, "b")
                    results.append("OK")
                except grpc.RpcError as e:
                    results.append(e.code().name)
                    if e.code() is grpc.StatusCode.CANCELLED:
                        started_cancelled.append(started)
                    if e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
                        return

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(1)
    with grpc.insecure_channel(srv.address) as ch:
        t0 = time.monotonic()
        srv.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert health(ch, 5) == NOT_SERVING
        ok_at_drain = results.count("OK")
        time.sleep(drain / 2)
        assert results.count("OK") > ok_at_drain  # still answering during the drain
        code = srv.proc.wait(drain + grace + 5)
        took = time.monotonic() - t0
    stop.set()
    for t in threads:
        t.join(10)
    assert code == 0
    assert took < drain + grace + 1, took
    # A call that reaches the server at the instant it stops may get CANCELLED rather than
    # UNAVAILABLE (grpc/grpc#41785: calls not yet given to a handler are cancelled). Calls in
    # flight before the drain ended must finish. The times are the client's: a call it
    # started 4 ms before the drain's end reached the server after it (2 busy cores), so a
    # call counts as in flight from 0.25 s before the end.
    assert set(results) <= {"OK", "UNAVAILABLE", "CANCELLED"}, set(results)
    assert all(s >= t0 + drain - 0.25 for s in started_cancelled), [s - t0 for s in started_cancelled]
