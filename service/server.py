"""The translation service: a thin gRPC shell around ``mapper``.

Run ``mapper-serve --help``. Maps come from the store (SQLite by default); the server keeps
the active versions in memory and polls the store for new ones, so a publish from any
process is served without a restart.
"""

from __future__ import annotations

import argparse
import functools
import hmac
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import prometheus_client as prom
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from threadpoolctl import threadpool_limits

from mapper import io
from mapper.catalog import Catalog, MapNotFound
from mapper.embed import FaceEmbedder, TritonBackend
from mapper.models import UnknownModelError
from mapper.triton_client import TritonClient, TritonUnavailableError
from mapper.validation import check_embeddings, l2_normalize

from . import convert
from .gen import mapper_pb2 as pb
from .gen import mapper_pb2_grpc as pb_grpc
from .store import MapStore, SQLiteMapStore

log = logging.getLogger("mapper.service")
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["MapperService"].full_name
ADMIN_METHODS = {"PutMapping", "DeleteMapping", "RollbackMapping"}

REQUESTS = prom.Counter("mapper_requests_total", "RPCs handled", ["method", "code"])
LATENCY = prom.Histogram(
    "mapper_request_seconds",
    "RPC latency",
    ["method"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
TRANSLATED = prom.Counter("mapper_embeddings_translated_total", "Embeddings translated", ["source", "target"])
MAP_VERSION = prom.Gauge("mapper_map_version", "Active version of each served map", ["map_id"])
MAPS_LOADED = prom.Gauge("mapper_maps_loaded", "Maps and hubs held in memory")
STORE_ERRORS = prom.Counter("mapper_store_errors_total", "Failed store reads or writes")


@functools.lru_cache(maxsize=4096)
def _translated(source: str, target: str) -> Any:
    """TRANSLATED's child for a model pair (called only after the pair resolved to a map)."""
    return TRANSLATED.labels(source, target)


class LimitExceeded(Exception):
    """A request over the configured batch limits (RESOURCE_EXHAUSTED)."""


class Unauthenticated(Exception):
    """An admin call without the right token (UNAUTHENTICATED)."""


STATUS_OF: list[tuple[type[BaseException], grpc.StatusCode]] = [
    (MapNotFound, grpc.StatusCode.NOT_FOUND),
    (LimitExceeded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (UnknownModelError, grpc.StatusCode.NOT_FOUND),
    (TritonUnavailableError, grpc.StatusCode.UNAVAILABLE),
    (ValueError, grpc.StatusCode.INVALID_ARGUMENT),  # EmbeddingError, MapFileError, bad fields
]


def _status_for(exc: BaseException) -> grpc.StatusCode | None:
    return next((code for cls, code in STATUS_OF if isinstance(exc, cls)), None)


def rpc(method: Callable[..., Any]) -> Callable[..., Any]:
    """Metrics, the admin check and error-to-status mapping around one unary RPC."""
    name = method.__name__
    admin = name in ADMIN_METHODS
    # Children bound once: a labels() lookup per call costs more than the count itself.
    ok, latency = REQUESTS.labels(name, "OK"), LATENCY.labels(name)

    @functools.wraps(method)
    def wrapper(self: MapperServicer, request: Any, context: grpc.ServicerContext) -> Any:
        t0 = time.perf_counter()
        try:
            if admin:
                self.check_admin(context)
            reply = method(self, request, context)
            ok.inc()
            return reply
        except Exception as exc:
            code = _status_for(exc) or grpc.StatusCode.INTERNAL
            REQUESTS.labels(name, code.name).inc()
            if code is grpc.StatusCode.INTERNAL:
                log.exception("internal error in %s", name)
            context.abort(code, str(exc) if code is not grpc.StatusCode.INTERNAL else "internal error")
        finally:
            latency.observe(time.perf_counter() - t0)

    return wrapper


class MapperServicer(pb_grpc.MapperServiceServicer):
    """Delegates to :class:`mapper.catalog.Catalog` and a :class:`MapStore`."""

    def __init__(
        self,
        store: MapStore,
        *,
        admin_token: str | None = None,
        max_batch: int = 65536,
        embedder: FaceEmbedder | None = None,
    ) -> None:
        self.store = store
        self.admin_token = admin_token
        self.max_batch = max_batch
        self.embedder = embedder
        # What is served: the catalog and each map's calibration ({FAR: threshold}), swapped
        # together as one reference so a reader always sees a consistent pair.
        self._served: tuple[Catalog, dict[str, dict[str, float]]] = (Catalog(), {})
        self._generation = -1
        self._reload_lock = threading.Lock()
        self.reload()

    # -- maps in memory --------------------------------------------------------------------
    def reload(self, force: bool = False) -> bool:
        """Load the store's active maps if its generation moved; True if reloaded."""
        with self._reload_lock:
            try:
                generation = self.store.generation()
                if generation == self._generation and not force:
                    return False
                stored = self.store.active()
            except Exception:
                STORE_ERRORS.inc()
                log.exception("store read failed; still serving %d maps", len(self.catalog))
                return False
            entries, calibration = [], {}
            for m in stored:
                try:
                    entries.append((m.ref, io.loads(m.data or b"", m.ref.map_id)))
                except ValueError:
                    STORE_ERRORS.inc()
                    log.exception("skipping unreadable stored map %s v%d", m.ref.map_id, m.ref.version)
                    continue
                calibration[m.ref.map_id] = m.metadata.get("provenance", {}).get("calibration", {})
            self._served = (Catalog(entries), calibration)
            self._generation = generation
            MAP_VERSION.clear()
            for ref in self.catalog.refs():
                MAP_VERSION.labels(ref.map_id).set(ref.version)
            MAPS_LOADED.set(len(self.catalog))
            log.info(json.dumps({"event": "maps_loaded", "generation": generation, "maps": len(entries)}))
            return True

    @property
    def catalog(self) -> Catalog:
        return self._served[0]

    def check_admin(self, context: grpc.ServicerContext) -> None:
        if not self.admin_token:
            return
        given = dict(context.invocation_metadata()).get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {self.admin_token}".encode()):
            raise Unauthenticated("admin call needs metadata 'authorization: Bearer <admin token>'")

    def _batch(self, msg: pb.Embeddings, name: str) -> np.ndarray:
        if msg.rows > self.max_batch:
            raise LimitExceeded(f"{name} has {msg.rows} rows; the limit is {self.max_batch} per request")
        return convert.to_array(msg, name)

    def _translate(self, request: pb.TranslateRequest) -> pb.TranslateResponse:
        kind = convert.KIND_NAMES.get(request.kind)
        if kind is None:
            raise ValueError(f"unknown map kind {request.kind}")
        x = self._batch(request.embeddings, "embeddings")
        m, ref = self.catalog.resolve(request.source_model, request.target_model, kind)
        y = m.transform(x)
        _translated(request.source_model, request.target_model).inc(x.shape[0])
        return pb.TranslateResponse(
            embeddings=convert.from_array(y), map=convert.ref_to_pb(ref), request_id=request.request_id
        )

    # -- RPCs ------------------------------------------------------------------------------
    @rpc
    def Translate(self, request: pb.TranslateRequest, context: grpc.ServicerContext) -> pb.TranslateResponse:
        return self._translate(request)

    def TranslateStream(
        self, requests: Iterator[pb.TranslateRequest], context: grpc.ServicerContext
    ) -> Iterator[pb.TranslateResponse]:
        # gRPC's HTTP/2 flow control bounds what is in flight: the next request is read only
        # after the previous reply was handed to the transport.
        t0 = time.perf_counter()
        code = grpc.StatusCode.OK
        count = 0
        try:
            for count, request in enumerate(requests, 1):  # noqa: B007 (count is read below)
                yield self._translate(request)
        except Exception as exc:
            code = _status_for(exc) or grpc.StatusCode.INTERNAL
            context.abort(code, f"stream message {count}: {exc}")
        finally:
            REQUESTS.labels("TranslateStream", code.name).inc()
            LATENCY.labels("TranslateStream").observe(time.perf_counter() - t0)

    @rpc
    def Compare(self, request: pb.CompareRequest, context: grpc.ServicerContext) -> pb.CompareResponse:
        a = self._batch(request.a, "a")
        b = self._batch(request.b, "b")
        if a.shape[0] != b.shape[0]:
            raise ValueError(f"a and b must hold the same number of rows: {a.shape[0]} != {b.shape[0]}")
        catalog, calibrations = self._served
        reply = pb.CompareResponse(space=request.model_b)
        calibration: dict[str, float] = {}
        if request.model_a == request.model_b:
            dims = catalog.models()
            if request.model_a not in dims:
                raise MapNotFound(f"unknown model {request.model_a!r}; models with maps: {sorted(dims)}")
            a_b = l2_normalize(check_embeddings(a, name="a", dim=dims[request.model_a]))
        else:
            kind = convert.KIND_NAMES.get(request.kind, "any")
            m, ref = catalog.resolve(request.model_a, request.model_b, kind)
            a_b = m.transform(a)
            if not m.normalize_output:  # scores are cosines; most maps already give unit rows
                l2_normalize(a_b, copy=False)
            reply.map.CopyFrom(convert.ref_to_pb(ref))
            calibration = calibrations.get(ref.map_id, {})
            _translated(request.model_a, request.model_b).inc(a.shape[0])
        b = l2_normalize(check_embeddings(b, name="b", dim=a_b.shape[1]))
        scores = np.einsum("ij,ij->i", a_b, b)
        reply.scores.extend(scores.tolist())
        if request.far > 0:
            key = f"{request.far:g}"
            if key not in calibration:
                raise ValueError(
                    f"no calibrated threshold at FAR {key} for this map; calibrated: {sorted(calibration)}"
                )
            reply.threshold = float(calibration[key])
            reply.same.extend((scores >= reply.threshold).tolist())
        return reply

    @rpc
    def Embed(self, request: pb.EmbedRequest, context: grpc.ServicerContext) -> pb.EmbedResponse:
        if self.embedder is None:
            raise TritonUnavailableError("Embed needs a Triton server: start mapper-serve with --triton-url")
        if not request.images:
            raise ValueError("no images given")
        if len(request.images) > self.max_batch:
            raise LimitExceeded(f"{len(request.images)} images; the limit is {self.max_batch}")
        result = self.embedder.embed(list(request.images), request.model)
        return pb.EmbedResponse(embeddings=convert.from_array(result.embeddings), failed=result.failed)

    @rpc
    def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.ServicerContext
    ) -> pb.ListModelsResponse:
        dims = self.catalog.models()
        return pb.ListModelsResponse(models=[pb.ModelInfo(name=n, dim=d) for n, d in sorted(dims.items())])

    @rpc
    def ListMappings(
        self, request: pb.ListMappingsRequest, context: grpc.ServicerContext
    ) -> pb.ListMappingsResponse:
        maps = [
            m
            for m in self.store.list(all_versions=request.all_versions)
            if (not request.source_model or request.source_model in (m.source, *m.hub_models))
            and (not request.target_model or request.target_model in (m.target, *m.hub_models))
        ]
        return pb.ListMappingsResponse(maps=[convert.info_to_pb(m) for m in maps])

    @rpc
    def GetMapping(
        self, request: pb.GetMappingRequest, context: grpc.ServicerContext
    ) -> pb.GetMappingResponse:
        m = self.store.get(request.map_id, request.version or None)
        return pb.GetMappingResponse(
            info=convert.info_to_pb(m), map_file=(m.data or b"") if request.include_file else b""
        )

    @rpc
    def PutMapping(
        self, request: pb.PutMappingRequest, context: grpc.ServicerContext
    ) -> pb.PutMappingResponse:
        stored = self.store.publish(request.map_file)
        self.reload()
        log.info(
            json.dumps({"event": "map_published", "map_id": stored.ref.map_id, "version": stored.ref.version})
        )
        return pb.PutMappingResponse(info=convert.info_to_pb(stored))

    @rpc
    def DeleteMapping(
        self, request: pb.DeleteMappingRequest, context: grpc.ServicerContext
    ) -> pb.DeleteMappingResponse:
        n = self.store.delete(request.map_id)
        self.reload()
        return pb.DeleteMappingResponse(versions_deleted=n)

    @rpc
    def RollbackMapping(
        self, request: pb.RollbackMappingRequest, context: grpc.ServicerContext
    ) -> pb.RollbackMappingResponse:
        stored = self.store.rollback(request.map_id, request.version)
        self.reload()
        return pb.RollbackMappingResponse(info=convert.info_to_pb(stored))


# -- running the server ------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="mapper-serve",
        description="Serve fitted face-embedding maps over gRPC (translate, compare, manage maps). "
        "Every flag can also be set by an environment variable MAPPER_<FLAG> (e.g. MAPPER_PORT).",
    )

    def flag(name: str, default: Any, help: str, type: Callable[[str], Any] = str) -> None:
        # argparse converts a string default with `type`, so MAPPER_<FLAG> is checked like the flag.
        env = f"MAPPER_{name.upper().replace('-', '_')}"
        ap.add_argument(f"--{name}", type=type, default=os.environ.get(env, default), help=help)

    flag("host", "127.0.0.1", "address to bind (default %(default)s)")
    flag("port", 50051, "gRPC port, 0 = any free port", int)
    flag("store", "maps.sqlite", "SQLite map store file (created if new)")
    flag("metrics-port", 9100, "Prometheus /metrics HTTP port, -1 = off", int)
    flag("admin-token", None, "token required by PutMapping/DeleteMapping/RollbackMapping (Bearer)")
    flag("tls-cert", None, "PEM server certificate (enables TLS)")
    flag("tls-key", None, "PEM server private key")
    flag("tls-client-ca", None, "PEM CA bundle: require and verify client certificates (mutual TLS)")
    flag("max-batch", 65536, "most embeddings or images per request", int)
    flag("max-message-mb", 256, "largest request in MiB; larger ones get RESOURCE_EXHAUSTED", int)
    flag("workers", 16, "RPC worker threads", int)
    flag("reload-interval", 2.0, "seconds between checks of the store for new map versions", float)
    flag("blas-threads", 1, "BLAS threads per call (default %(default)s); calls run in parallel", int)
    flag("grace", 10.0, "seconds in-flight calls get to finish on SIGTERM", float)
    flag("triton-url", None, "Triton gRPC address (host:port) serving the face models; enables Embed")
    flag("weights-dir", None, "folder of model folders, for dlib's landmark model (default: zoo's models/)")
    flag("triton-timeout", 30.0, "seconds each Triton call may take before Embed answers UNAVAILABLE", float)
    flag("log-level", "INFO", "logging level")
    ap.add_argument("--port-file", default=None, help="write the bound gRPC port here once serving")
    return ap


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        entry = json.loads(msg) if msg.startswith("{") else {"message": msg}
        entry = {"time": self.formatTime(record), "level": record.levelname, "logger": record.name, **entry}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def serve(args: argparse.Namespace) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter())
    logging.basicConfig(level=args.log_level.upper(), handlers=[handler], force=True)

    threadpool_limits(args.blas_threads, user_api="blas")
    store = SQLiteMapStore(args.store)
    embedder = None
    if args.triton_url:
        client = TritonClient(args.triton_url, timeout=args.triton_timeout)
        embedder = FaceEmbedder(TritonBackend(client), weights_dir=args.weights_dir)
    servicer = MapperServicer(
        store, admin_token=args.admin_token, max_batch=args.max_batch, embedder=embedder
    )
    limit = args.max_message_mb * 2**20
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=args.workers),
        options=[("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit)],
    )
    pb_grpc.add_MapperServiceServicer_to_server(servicer, server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
        server,
    )
    address = f"{args.host}:{args.port}"
    if args.tls_cert:
        if not args.tls_key:
            raise SystemExit("--tls-cert needs --tls-key")
        client_ca = Path(args.tls_client_ca).read_bytes() if args.tls_client_ca else None
        creds = grpc.ssl_server_credentials(
            [(Path(args.tls_key).read_bytes(), Path(args.tls_cert).read_bytes())],
            root_certificates=client_ca,
            require_client_auth=client_ca is not None,
        )
        port = server.add_secure_port(address, creds)
    else:
        port = server.add_insecure_port(address)
    if args.metrics_port >= 0:
        prom.start_http_server(args.metrics_port, addr=args.host)
    server.start()
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    if args.port_file:
        Path(args.port_file).write_text(str(port))
    log.info(
        json.dumps(
            {
                "event": "serving",
                "port": port,
                "tls": bool(args.tls_cert),
                "mtls": bool(args.tls_client_ca),
                "maps": len(servicer.catalog),
            }
        )
    )

    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        log.info(json.dumps({"event": "stopping", "signal": signum, "grace_s": args.grace}))
        health_servicer.enter_graceful_shutdown()
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    while not stop.wait(args.reload_interval):
        servicer.reload()
    server.stop(args.grace).wait()
    log.info(json.dumps({"event": "stopped"}))


def main(argv: list[str] | None = None) -> None:
    serve(build_parser().parse_args(argv))


if __name__ == "__main__":
    main()
