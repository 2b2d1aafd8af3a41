"""The real service as a subprocess on loopback, for tests."""

from __future__ import annotations

from pathlib import Path

from service.launcher import ServiceProcess, free_port, start_service

#: The checkout: tests run commands from here and compare generated files with its own.
ROOT = Path(__file__).resolve().parents[1]

__all__ = ["ROOT", "ServiceProcess", "free_port", "start_server"]


def start_server(workdir: Path, store: Path, *args: str, timeout: float = 30) -> ServiceProcess:
    # No drain delay unless a test asks for one: each stop would wait for it.
    return start_service(
        store, "--reload-interval", "0.2", "--drain", "0", *args, workdir=workdir, timeout=timeout
    )
