"""Server wiring: store, translator, gRPC server with TLS, health, reflection, the metrics
port, SIGTERM draining and the reload loop. ``__main__`` turns flags into a ServiceConfig."""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
import time
from concurrent import futures
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import prometheus_client as prom
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from threadpoolctl import threadpool_limits

from mapper.serving.store import open_store
from mapper.serving.translator import Translator
from mapper.triton.embedding import face_embedder

from . import metrics
from .gen import mapper_pb2_grpc as pb_grpc
from .interceptors import SERVICE_NAME, AdminPolicy, ServiceInterceptor, read_client_tokens
from .servicer import MapperServicer

log = logging.getLogger("mapper.service")
SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
#: Health entry of the map store: NOT_SERVING while it cannot be read (maps served are the last good).
STORE_HEALTH = "facemapper.v1.MapStore"


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
    workers: int = 16
    reload_interval: float = 2.0
    blas_threads: int = 1
    grace: float = 10.0
    drain: float = 2.0
    triton_url: str | None = None
    weights_dir: str | None = None
    triton_timeout: float = 30.0
    log_level: str = "INFO"
    port_file: str | None = None


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        entry = json.loads(msg) if msg.startswith("{") else {"message": msg}
        entry = {"time": self.formatTime(record), "level": record.levelname, "logger": record.name, **entry}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def _credentials(cfg: ServiceConfig) -> grpc.ServerCredentials | None:
    if not cfg.tls_cert:
        return None
    if not cfg.tls_key:
        raise SystemExit("--tls-cert needs --tls-key")
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
    """Run until SIGTERM or SIGINT, then drain in-flight calls for ``cfg.grace`` seconds."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    logging.basicConfig(level=cfg.log_level.upper(), handlers=[handler], force=True)
    threadpool_limits(cfg.blas_threads, user_api="blas")

    health_servicer = health.HealthServicer()

    def on_store_state(ok: bool) -> None:
        # The service keeps SERVING the last good maps; the store's own entry tells operators.
        metrics.STORE_UP.set(int(ok))
        health_servicer.set(STORE_HEALTH, SERVING if ok else NOT_SERVING)

    translator = Translator(
        open_store(cfg.store, keep_versions=cfg.keep_versions),
        max_batch=cfg.max_batch,
        on_reload=metrics.record_catalog,
        on_store_error=metrics.STORE_ERRORS.inc,
        on_store_state=on_store_state,
    )
    translator.store.watch(translator.reload)
    with ExitStack() as stack:
        embedder = None
        if cfg.triton_url:
            embedder = stack.enter_context(
                face_embedder(
                    triton_url=cfg.triton_url, weights_dir=cfg.weights_dir, timeout=cfg.triton_timeout
                )
            )
        limit = cfg.max_message_mb * 2**20
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=cfg.workers),
            interceptors=[ServiceInterceptor(admin_policy(cfg))],
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
                # grpcio sets SO_REUSEPORT by default: a second server on the same port would
                # start and silently take half the connections. Fail instead.
                ("grpc.so_reuseport", 0),
            ],
        )
        pb_grpc.add_MapperServiceServicer_to_server(MapperServicer(translator, embedder=embedder), server)
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        reflection.enable_server_reflection(
            (
                SERVICE_NAME,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
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
        if cfg.metrics_port >= 0:
            prom.start_http_server(cfg.metrics_port, addr=cfg.host)
        server.start()
        for name in ("", SERVICE_NAME):
            health_servicer.set(name, SERVING)
        if cfg.port_file:
            Path(cfg.port_file).write_text(str(port))
        log.info(
            json.dumps(
                {
                    "event": "serving",
                    "port": port,
                    "tls": bool(cfg.tls_cert),
                    "mtls": bool(cfg.tls_client_ca),
                    "maps": len(translator.catalog),
                }
            )
        )

        stop = threading.Event()

        def on_signal(signum: int, _frame: Any) -> None:
            log.info(json.dumps({"event": "stopping", "signal": signum, "grace_s": cfg.grace}))
            health_servicer.enter_graceful_shutdown()
            stop.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        while not stop.wait(cfg.reload_interval):
            translator.reload()
        # NOT_SERVING first, with the port still open, so load balancers see it and move
        # new calls elsewhere; then stop accepting and give in-flight calls their grace.
        time.sleep(cfg.drain)
        server.stop(cfg.grace).wait()
        log.info(json.dumps({"event": "stopped"}))
