"""mapper-serve: flags (and MAPPER_<FLAG> environment variables) -> ServiceConfig -> serve."""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Callable
from typing import Any

from .app import ServiceConfig, serve

HELP = {
    "host": "address to bind (default %(default)s)",
    "port": "gRPC port, 0 = any free port",
    "store": "map store: a SQLite file (created if new) or postgresql://user@host/db (the postgres extra)",
    "keep_versions": "versions kept per map; older inactive ones are removed on publish",
    "metrics_port": "Prometheus /metrics HTTP port, -1 = off",
    "admin_token": "token required by PutMapping/DeleteMapping/RollbackMapping (Bearer); visible in ps: "
    "prefer MAPPER_ADMIN_TOKEN or --admin-token-file",
    "admin_token_file": "file holding the admin token (takes precedence over --admin-token)",
    "open_admin": "allow admin calls from ANYONE when no token or mTLS is set (loopback tests only; "
    "without a token, mTLS or this flag admin calls are refused)",
    "client_tokens_file": "file of client credentials, one 'name token [client|reader]' per line: every "
    "call then needs 'authorization: Bearer <token>' (a client's or the admin's); role reader may also "
    "download map files (GetMapping include_file)",
    "tls_cert": "PEM server certificate (enables TLS)",
    "tls_key": "PEM server private key",
    "tls_client_ca": "PEM CA bundle: require and verify client certificates (mutual TLS)",
    "max_batch": "most embeddings or images per request",
    "max_message_mb": "largest request or reply in MiB; larger requests get RESOURCE_EXHAUSTED, and so "
    "do calls whose reply would be larger (before any work)",
    "max_call_gmacs": "most work one call may cost, in G multiply-adds (rows x the map's parameters; "
    "%(default)s G is about 1-2 s of one core): costlier calls get RESOURCE_EXHAUSTED at once",
    "max_inflight_gmacs": "most work admitted and unfinished at once, over all calls; beyond it new "
    "calls get RESOURCE_EXHAUSTED ('server busy') at once",
    "max_inflight_mb": "most MiB of requests and replies admitted and unfinished at once",
    "client_gmacs_per_s": "with --client-tokens-file: each client's sustained rate in G multiply-adds "
    "per second (bursts up to one maximal call)",
    "client_mb_per_s": "with --client-tokens-file: each client's sustained rate of request bytes in "
    "MiB per second (bursts up to one maximal message); a client over it is refused before its next "
    "request is read",
    "stream_idle": "seconds a TranslateStream may wait for its next message before it is closed",
    "max_streams_per_connection": "calls one HTTP/2 connection may have open at once",
    "workers": "threads for large translations and comparisons (0 = one per CPU core); health checks "
    "and small calls are answered on the event loop",
    "reload_interval": "seconds between checks of the store for new map versions",
    "blas_threads": "BLAS threads per call (default %(default)s); calls run in parallel",
    "grace": "seconds in-flight calls get to finish after the drain; then they are cancelled",
    "drain": "seconds between SIGTERM (health NOT_SERVING, calls still answered) and refusing new "
    "calls (UNAVAILABLE)",
    "triton_url": "Triton gRPC address (host:port) serving the face models; enables Embed",
    "weights_dir": "folder of model folders, for dlib's landmark model (default: zoo's models/)",
    "triton_timeout": "seconds each Triton call may take before Embed answers UNAVAILABLE",
    "log_level": "logging level",
    "port_file": "write the bound gRPC port here once serving (maps loaded, health SERVING)",
}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="mapper-serve",
        description="Serve fitted face-embedding maps over gRPC (translate, compare, manage maps). "
        "Every flag can also be set by an environment variable MAPPER_<FLAG> (e.g. MAPPER_PORT).",
    )
    for f in dataclasses.fields(ServiceConfig):
        env = f"MAPPER_{f.name.upper()}"
        if f.type == "bool":
            on = os.environ.get(env, "").lower() in ("1", "true", "yes")
            ap.add_argument(
                f"--{f.name.replace('_', '-')}", action="store_true", default=on, help=HELP[f.name]
            )
            continue
        # argparse converts a string default with `type`, so MAPPER_<FLAG> is checked like the flag.
        kind: Callable[[str], Any] = {"int": int, "float": float}.get(str(f.type), str)
        ap.add_argument(
            f"--{f.name.replace('_', '-')}",
            type=kind,
            default=os.environ.get(env, f.default),
            help=HELP[f.name],
        )
    return ap


def main(argv: list[str] | None = None) -> None:
    serve(ServiceConfig(**vars(build_parser().parse_args(argv))))


if __name__ == "__main__":
    main()
