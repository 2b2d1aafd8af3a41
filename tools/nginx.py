"""A real nginx balancing gRPC over mapper-serve replicas on loopback, with deploy/nginx.conf
itself (for tests/test_replicas.py and benchmarks/bench_replicas.py)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from mapper.triton.server import free_port

ROOT = Path(__file__).resolve().parents[1]


def start_nginx(binary: str, conf_dir: Path, ports: list[int]) -> tuple[subprocess.Popen[bytes], int]:
    """nginx balancing gRPC over the replicas at ``ports`` with deploy/nginx.conf itself
    (its replicas and port swapped for loopback ones, its files kept in ``conf_dir``);
    returns the process and its port."""
    conf_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf = (ROOT / "deploy" / "nginx.conf").read_text()
    replica = re.compile(r"^( *)server mapper-\d+:\d+ (.*)\n", re.M)
    indent, options = replica.search(conf).groups()
    servers = "".join(f"{indent}server 127.0.0.1:{p} {options}\n" for p in ports)
    conf = replica.sub("", conf).replace(f"{indent}keepalive ", servers + f"{indent}keepalive ", 1)
    conf = conf.replace("listen 50051 ", f"listen 127.0.0.1:{port} ")
    conf = conf.replace("worker_processes auto;", "worker_processes 1;")
    conf = conf.replace("http {", f"http {{\n    client_body_temp_path {conf_dir}/body;", 1)
    conf = f"pid {conf_dir}/nginx.pid;\nerror_log {conf_dir}/error.log warn;\n{conf}"
    (conf_dir / "nginx.conf").write_text(conf)
    proc = subprocess.Popen(
        [binary, "-p", str(conf_dir), "-c", str(conf_dir / "nginx.conf"), "-g", "daemon off;"]
    )
    return proc, port
