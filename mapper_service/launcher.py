"""Start mapper-serve as a subprocess and wait until it serves (demo, benchmarks, tests)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from mapper.triton.server import free_port

from .client import MapperClient


@dataclass
class ServiceProcess:
    proc: subprocess.Popen[bytes]
    port: int
    metrics_port: int
    log: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def client(self, **kw: object) -> MapperClient:
        return MapperClient(self.address, **kw)  # type: ignore[arg-type]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)


def start_service(
    store: str | os.PathLike[str],
    *args: str,
    workdir: str | os.PathLike[str] | None = None,
    timeout: float = 30,
) -> ServiceProcess:
    """``mapper-serve --store STORE ARGS`` on a free port (and metrics port); its log goes
    to ``workdir``. Raises RuntimeError with the log when it does not start."""
    work = Path(workdir or tempfile.mkdtemp(prefix="mapper-serve-"))
    work.mkdir(parents=True, exist_ok=True)
    stamp = time.monotonic_ns()
    port_file, log = work / f"port-{stamp}", work / f"server-{stamp}.log"
    metrics_port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "mapper_service",
        "--port",
        "0",
        "--port-file",
        str(port_file),
        "--store",
        str(store),
        "--metrics-port",
        str(metrics_port),
        *args,
    ]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    try:
        port = wait_port_file(port_file, proc, timeout)
    except RuntimeError as e:
        raise RuntimeError(f"mapper-serve did not start:\n{log.read_text()}") from e
    return ServiceProcess(proc, port, metrics_port, log)


def wait_port_file(port_file: Path, proc: subprocess.Popen[bytes], timeout: float = 30) -> int:
    """The port a starting server writes into ``port_file``; kills it if it exits or is late."""
    deadline = time.monotonic() + timeout
    while not port_file.exists() or not port_file.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"no port in {port_file} after {timeout:.0f} s")
        time.sleep(0.05)
    return int(port_file.read_text())
