"""The real service as a subprocess on loopback, for tests."""

from __future__ import annotations

import subprocess
from pathlib import Path

from service.launcher import ServiceProcess, free_port, start_service

#: The checkout: tests run commands from here and compare generated files with its own.
ROOT = Path(__file__).resolve().parents[1]

__all__ = ["ROOT", "ServiceProcess", "free_port", "start_nginx", "start_server"]


def start_server(workdir: Path, store: Path, *args: str, timeout: float = 30) -> ServiceProcess:
    # No drain delay unless a test asks for one: each stop would wait for it.
    return start_service(
        store, "--reload-interval", "0.2", "--drain", "0", *args, workdir=workdir, timeout=timeout
    )


NGINX_CONF = """
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    # nginx ends a client's HTTP/2 connection after keepalive_requests calls (GOAWAY), which
    # fails gRPC calls in flight on it: long-lived gRPC channels need a high limit.
    keepalive_requests 1000000;
    upstream replicas {{
{servers}
        keepalive 32;  # reuse HTTP/2 connections to the replicas
    }}
    server {{
        listen 127.0.0.1:{port} http2;
        location / {{
            grpc_pass grpc://replicas;
            # A replica that refuses the connection: try the next one (nothing was sent yet).
            grpc_next_upstream error timeout;
            grpc_next_upstream_tries 2;
        }}
    }}
}}
"""


def start_nginx(binary: str, conf_dir: Path, ports: list[int]) -> tuple[subprocess.Popen[bytes], int]:
    """nginx balancing gRPC over the replicas at ``ports`` (as deploy/nginx.conf does);
    returns the process and its port."""
    conf_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    servers = "\n".join(f"        server 127.0.0.1:{p} max_fails=1 fail_timeout=10s;" for p in ports)
    (conf_dir / "nginx.conf").write_text(NGINX_CONF.format(dir=conf_dir, servers=servers, port=port))
    proc = subprocess.Popen(
        [binary, "-p", str(conf_dir), "-c", str(conf_dir / "nginx.conf"), "-g", "daemon off;"]
    )
    return proc, port
