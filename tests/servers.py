"""The real service as a subprocess on loopback, for tests."""

from __future__ import annotations

from pathlib import Path

from service.launcher import ROOT, ServiceProcess, free_port, start_service

__all__ = ["ROOT", "ServiceProcess", "free_port", "start_server"]


def start_server(workdir: Path, store: Path, *args: str, timeout: float = 30) -> ServiceProcess:
    return start_service(store, "--reload-interval", "0.2", *args, workdir=workdir, timeout=timeout)
