"""Server wiring: store, translator, gRPC server with TLS, health, reflection, the metrics
port, SIGTERM draining and the reload loop. ``__main__`` turns flags into a ServiceConfig."""

from __future__ import annotations

import asyncio
import ctypes
import json
import logging
import os
import signal
import sys
import threading
from contextlib import ExitStack, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import prometheus_client as prom
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from threadpoolctl import threadpool_limits

from mapper.serving.admission import GIGA, Admission, Budgets
from mapper.serving.stores import open_store
from mapper.serving.translator import Translator
from mapper.triton.embedding import face_embedder

from . import metrics
from .compute import ComputeThreads
from .gen import mapper_pb2_grpc as pb_grpc
from .interceptors import SERVICE_NAME, AdminPolicy, ServiceInterceptor, read_client_tokens
from .servicer import MapperServicer

log = logging.getLogger("mapper.service")
SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
#: Health entry of the map store: NOT_SERVING while it cannot be read (maps served are the last good).
STORE_HEALTH = "facemapper.v1.MapStore"
#: How much lower the compute threads' CPU priority is than the event loop's (Linux nice
#: levels): bulk work yields the cores to the loop, which answers health checks and small
#: calls, whenever both want them.
COMPUTE_NICENESS = 10
#: Freed heap each malloc arena (one per busy thread) keeps for reuse (see _reuse_large_buffers).
TRIM_BYTES = 4 << 20


@dataclass
class ServiceConfig:
    """Everything mapper-serve is configured with (see ``mapper-serve --help``)."""

    host: str = "127.0.0.1"
    port: int = 50051
    store: str = "maps.sqlite"
    keep_versions: int = 10
    metrics_port: int = 9100
    admin_token: str | None = None
    admin_token_file: str | None = None
    open_admin: bool = False
    client_tokens_file: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None
    max_batch: int = 65536
    max_message_mb: int = 64
    max_call_gmacs: float = 16.0
    max_inflight_gmacs: float = 64.0
    max_inflight_mb: int = 1024
    client_gmacs_per_s: float = 8.0
    client_mb_per_s: float = 64.0
    stream_idle: float = 60.0
    max_streams_per_connection: int = 64
    workers: int = 0
    reload_interval: float = 2.0
    blas_threads: int = 1
    grace: float = 10.0
    drain: float = 2.0
    triton_url: str | None = None
    weights_dir: str | None = None
    triton_timeout: float = 30.0
    log_level: str = "INFO"
    port_file: str | None = None

    @property
    def max_message_bytes(self) -> int:
        """--max-message-mb in bytes: gRPC's limit both ways, and the largest reply."""
        return self.max_message_mb * 2**20


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        entry = json.loads(msg) if msg.startswith("{") else {"message": msg}
        entry = {"time": self.formatTime(record), "level": record.levelname, "logger": record.name, **entry}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def check_config(cfg: ServiceConfig) -> None:
    """Refuse to start (SystemExit naming the flag) on any combination that would serve with
    less security, or less sense, than the flags ask for: never fall back silently."""
    problems = []
    if cfg.tls_client_ca and not cfg.tls_cert:
        problems.append(
            "--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key: without them the "
            "server would listen in plaintext and accept anyone"
        )
    if bool(cfg.tls_cert) != bool(cfg.tls_key):
        problems.append("--tls-cert and --tls-key go together: give both or neither")
    for flag in ("tls_cert", "tls_key", "tls_client_ca", "admin_token_file", "client_tokens_file"):
        path = getattr(cfg, flag)
        if path and not Path(path).is_file():
            problems.append(f"--{flag.replace('_', '-')} {path}: no such file")
        elif path and flag.startswith("tls") and Path(path).stat().st_size == 0:
            problems.append(f"--{flag.replace('_', '-')} {path}: the file is empty")
    if cfg.admin_token is not None and not cfg.admin_token.strip() and not cfg.admin_token_file:
        problems.append("--admin-token (MAPPER_ADMIN_TOKEN) is set but empty")
    positive = (
        "keep_versions",
        "max_batch",
        "max_message_mb",
        "blas_threads",
        "max_call_gmacs",
        "max_inflight_gmacs",
        "max_inflight_mb",
        "client_gmacs_per_s",
        "client_mb_per_s",
        "stream_idle",
        "max_streams_per_connection",
        "reload_interval",
    )
    for flag in positive:
        if not getattr(cfg, flag) > 0:  # also refuses NaN
            problems.append(f"--{flag.replace('_', '-')} must be > 0, got {getattr(cfg, flag)}")
    for flag in ("workers", "grace", "drain", "triton_timeout"):
        if not getattr(cfg, flag) >= 0:
            problems.append(f"--{flag.replace('_', '-')} must be >= 0, got {getattr(cfg, flag)}")
    if problems:
        raise SystemExit("mapper-serve: refusing to start:\n  " + "\n  ".join(problems))


def _credentials(cfg: ServiceConfig) -> grpc.ServerCredentials | None:
    if not cfg.tls_cert:
        return None
    client_ca = Path(cfg.tls_client_ca).read_bytes() if cfg.tls_client_ca else None
    return grpc.ssl_server_credentials(
        [(Path(cfg.tls_key).read_bytes(), Path(cfg.tls_cert).read_bytes())],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


def admin_policy(cfg: ServiceConfig) -> AdminPolicy:
    """From the token file, else the token (flag or MAPPER_ADMIN_TOKEN), mutual TLS, or the
    explicit --open-admin; warns loudly when admin calls are open to anyone."""
    token = Path(cfg.admin_token_file).read_text().strip() if cfg.admin_token_file else cfg.admin_token
    if cfg.admin_token_file and not token:
        raise SystemExit(f"--admin-token-file {cfg.admin_token_file} holds no token (only blanks)")
    clients = None
    if cfg.client_tokens_file:
        try:
            clients = read_client_tokens(cfg.client_tokens_file)
        except (OSError, ValueError) as e:
            raise SystemExit(f"--client-tokens-file: {e}") from e
    policy = AdminPolicy(
        token=token or None, mtls=bool(cfg.tls_client_ca), open=cfg.open_admin, clients=clients
    )
    if policy.open and not (policy.token or policy.mtls):
        log.warning(
            json.dumps(
                {
                    "event": "admin_open",
                    "message": "WARNING: --open-admin: ANYONE who reaches this port can publish, roll back "
                    "and delete maps. Use it only on loopback for tests.",
                }
            )
        )
    elif not (policy.token or policy.mtls):
        log.info(
            json.dumps({"event": "admin_disabled", "message": "no admin token or mTLS: admin calls refused"})
        )
    return policy


def serve(cfg: ServiceConfig) -> None:
    """Run until SIGTERM or SIGINT: NOT_SERVING for ``cfg.drain`` seconds while still
    answering, then refuse new calls and give in-flight ones ``cfg.grace`` seconds."""
    check_config(cfg)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    logging.basicConfig(level=cfg.log_level.upper(), handlers=[handler], force=True)
    threadpool_limits(cfg.blas_threads, user_api="blas")
    _reuse_large_buffers()
    asyncio.run(_serve(cfg))


def _lower_priority() -> None:
    """Compute-thread initializer: COMPUTE_NICENESS below the process (Linux sets a nice
    level per thread; elsewhere nothing changes)."""
    with suppress(OSError, AttributeError):
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + COMPUTE_NICENESS)


def _reuse_large_buffers() -> None:
    """glibc maps every allocation over its mmap threshold (at most 32 MiB) afresh and
    unmaps it when freed, so each large request's buffers cost page faults anew: a 63.5 MiB
    Compare took 30-55 ms of the event loop to copy and parse, 3.2 ms with its pages reused
    (measured on 2 cores). Serve them from the heap instead, and keep up to TRIM_BYTES freed
    at the top of each thread's heap rather than returning it at once (glibc's 128 KiB
    then refaults a 256-row Translate's 2 MiB of buffers on every call: 560 page faults,
    a fifth of its CPU; 50 with 4 MiB, 7 with 16 MiB, but with 16 MiB the victim's p99 in
    bench_attack's maximal scenario was 40-67 ms in 4 of 5 runs, against 15-19 ms in 3 of
    3 with 4 MiB). No-op without glibc."""
    with suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None)
        libc.mallopt(-3, 1 << 30)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, TRIM_BYTES)  # M_TRIM_THRESHOLD


def compute_threads(cfg: ServiceConfig) -> int:
    """--workers, or one per CPU core this process may use."""
    return cfg.workers or len(os.sched_getaffinity(0))


def budgets(cfg: ServiceConfig) -> Budgets:
    return Budgets(
        call_macs=cfg.max_call_gmacs * GIGA,
        inflight_macs=cfg.max_inflight_gmacs * GIGA,
        inflight_bytes=cfg.max_inflight_mb << 20,
        client_macs_per_s=cfg.client_gmacs_per_s * GIGA if cfg.client_tokens_file else None,
        client_bytes_per_s=cfg.client_mb_per_s * 2**20 if cfg.client_tokens_file else None,
        client_burst_bytes=cfg.max_message_bytes,
    )


async def _serve(cfg: ServiceConfig) -> None:
    loop = asyncio.get_running_loop()
    health_servicer = health.aio.HealthServicer()

    def set_health(name: str, status: Any) -> None:  # from any thread
        asyncio.run_coroutine_threadsafe(health_servicer.set(name, status), loop)

    def on_store_state(ok: bool) -> None:
        # The service keeps SERVING the last good maps; the store's own entry tells operators.
        metrics.STORE_UP.set(int(ok))
        set_health(STORE_HEALTH, SERVING if ok else NOT_SERVING)

    translator = Translator(
        lambda: open_store(cfg.store, keep_versions=cfg.keep_versions),
        watch=True,
        load=False,
        max_batch=cfg.max_batch,
        on_reload=metrics.record_catalog,
        on_store_error=metrics.STORE_ERRORS.inc,
        on_store_state=on_store_state,
    )
    policy = admin_policy(cfg)
    with ExitStack() as stack:
        embedder = None
        if cfg.triton_url:
            embedder = stack.enter_context(
                face_embedder(
                    triton_url=cfg.triton_url, weights_dir=cfg.weights_dir, timeout=cfg.triton_timeout
                )
            )
        compute = stack.enter_context(ComputeThreads(compute_threads(cfg), initializer=_lower_priority))
        servicer = MapperServicer(
            translator,
            compute=compute,
            embedder=embedder,
            admission=Admission(budgets(cfg)),
            max_reply_bytes=cfg.max_message_bytes,
            stream_idle=cfg.stream_idle,
        )
        server, port = _listening_server(cfg, policy, servicer, health_servicer)
        if cfg.metrics_port >= 0:
            prom.start_http_server(cfg.metrics_port, addr=cfg.host)
        for name in ("", SERVICE_NAME):  # until the maps are loaded
            await health_servicer.set(name, NOT_SERVING)
        await server.start()
        log.info(
            json.dumps(
                {
                    "event": "listening",
                    "port": port,
                    "tls": bool(cfg.tls_cert),
                    "mtls": bool(cfg.tls_client_ca),
                    "compute_threads": compute_threads(cfg),
                }
            )
        )

        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        reloading = asyncio.create_task(_load_and_reload(cfg, port, translator, health_servicer, stop))
        await stop.wait()
        await _drain(cfg, server, health_servicer)
        reloading.cancel()
    log.info(json.dumps({"event": "stopped"}))


def _listening_server(
    cfg: ServiceConfig, policy: Any, servicer: MapperServicer, health_servicer: Any
) -> tuple[grpc.aio.Server, int]:
    """The gRPC server with the mapper service, health and reflection, bound to its port
    (not yet started); SystemExit, naming the address, if it cannot listen."""
    limit = cfg.max_message_bytes
    server = grpc.aio.server(
        interceptors=[ServiceInterceptor(policy, servicer.admission)],
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            # Per connection: streams open at once, and how long a connection may sit idle.
            ("grpc.max_concurrent_streams", cfg.max_streams_per_connection),
            ("grpc.max_connection_idle_ms", 300_000),
            # grpcio sets SO_REUSEPORT by default: a second server on the same port would
            # start and silently take half the connections. Fail instead.
            ("grpc.so_reuseport", 0),
        ],
    )
    pb_grpc.add_MapperServiceServicer_to_server(servicer, server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
        server,
    )
    address = f"{cfg.host}:{cfg.port}"
    creds = _credentials(cfg)
    try:
        port = server.add_secure_port(address, creds) if creds else server.add_insecure_port(address)
    except RuntimeError as e:
        raise SystemExit(
            f"mapper-serve: cannot listen on {address} (is another server using it?): {e}"
        ) from e
    return server, port


async def _drain(cfg: ServiceConfig, server: grpc.aio.Server, health_servicer: Any) -> None:
    """NOT_SERVING first, still answering, so load balancers see it and move new calls
    elsewhere; then refuse new calls (UNAVAILABLE) and give in-flight ones their grace.
    Calls still running after it are cancelled, and their work stops within a block."""
    log.info(json.dumps({"event": "stopping", "drain_s": cfg.drain, "grace_s": cfg.grace}))
    await health_servicer.enter_graceful_shutdown()
    await asyncio.sleep(cfg.drain)
    await server.stop(cfg.grace)


async def _load_and_reload(
    cfg: ServiceConfig, port: int, translator: Translator, health_servicer: Any, stop: asyncio.Event
) -> None:
    """NOT_SERVING until the maps are loaded (a store that is down is retried, not served
    empty), then SERVING, and a reload whenever the store's generation moves."""
    delay = 0.25
    while not translator.ready:
        await asyncio.to_thread(translator.reload)
        if translator.ready:
            break
        log.warning(
            json.dumps({"event": "not_ready", "reason": translator.not_ready_reason, "retry_in_s": delay})
        )
        await asyncio.sleep(delay)
        delay = min(2 * delay, 5.0)
    if stop.is_set():
        return
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, SERVING)
    if cfg.port_file:
        Path(cfg.port_file).write_text(str(port))
    log.info(json.dumps({"event": "serving", "port": port, "maps": len(translator.catalog)}))
    while True:
        await asyncio.sleep(cfg.reload_interval)
        await asyncio.to_thread(translator.reload)
