"""Start and stop a real ``tritonserver`` (the binary bundled in the nvidia-pytriton wheel).

The wheel ships the python backend only; its stub for the running Python is put into a
private backend directory, and the stub runs the ``python3`` first on PATH, so this
interpreter's folder goes first on PATH and its libpython on LD_LIBRARY_PATH.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import tritonclient.grpc as tc

from mapper.classifiers.registry import BY_NAME as CLASSIFIERS
from mapper.datasets.face_zoo import models_dir
from mapper.faces import registry
from mapper.triton.repository import write_classifiers, write_repository


class TritonStartError(RuntimeError):
    """tritonserver exited or did not become ready; the message carries its log's tail."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the one helper for this)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bundled_server_dir() -> Path:
    import pytriton

    path = Path(pytriton.__file__).parent / "tritonserver"
    if not (path / "bin" / "tritonserver").exists():
        raise TritonStartError(f"no tritonserver binary in {path}; install nvidia-pytriton==0.7.0")
    return path


class TritonServer:
    """``with TritonServer() as triton: triton.url`` -> "127.0.0.1:port".

    Without ``model_repository`` a CPU repository is generated from the model registry
    (``models`` and the detector, or every registered face model; ImageNet classifiers when
    ``models`` names them) into the server's private working folder, so nothing depends on
    a source checkout.

    ``models`` limits loading to those names (explicit model control); ``weights_dir`` (a
    folder of model folders; default <face zoo>/models) reaches the models as
    MAPPER_WEIGHTS_DIR.
    """

    def __init__(
        self,
        model_repository: str | os.PathLike[str] | None = None,
        *,
        models: list[str] | None = None,
        weights_dir: str | os.PathLike[str] | None = None,
        startup_timeout: float = 180.0,
        extra_args: list[str] | None = None,
    ) -> None:
        self.model_repository = Path(model_repository).resolve() if model_repository else None
        self.models = models
        self.weights_dir = Path(weights_dir) if weights_dir else models_dir()
        self.startup_timeout = startup_timeout
        self.extra_args = extra_args or []
        self.proc: subprocess.Popen[bytes] | None = None
        self.grpc_port = 0
        self.metrics_port = 0
        self._workdir: Path | None = None

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def log_path(self) -> Path:
        assert self._workdir is not None
        return self._workdir / "tritonserver.log"

    def log_tail(self, lines: int = 15) -> str:
        """Error lines of the log (model load failures name their cause), then its last lines."""
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        errors = [ln for ln in text if ln.startswith("E") or "Error" in ln or "error" in ln]
        return "\n".join([*errors[-lines:], "...", *text[-lines:]])

    def _backend_dir(self, server_dir: Path) -> Path:
        assert self._workdir is not None
        py = self._workdir / "backends" / "python"
        py.mkdir(parents=True)
        src = server_dir / "backends" / "python"
        for name in ("libtriton_python.so", "triton_python_backend_utils.py"):
            (py / name).symlink_to(src / name)
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        stub = server_dir / "python_backend_stubs" / version / "triton_python_backend_stub"
        if not stub.exists():
            raise TritonStartError(f"no python backend stub for Python {version} in {stub.parent.parent}")
        shutil.copy2(stub, py / "triton_python_backend_stub")
        return py.parent

    def start(self) -> TritonServer:
        server_dir = bundled_server_dir()
        self._workdir = Path(tempfile.mkdtemp(prefix="triton-"))
        if self.model_repository is None:
            self.model_repository = self._workdir / "model_repository"
            known = registry.load()
            names = self.models if self.models is not None else list(known)
            write_repository(self.model_repository, [known[n] for n in names if n in known])
            # ImageNet classifiers only when named: they need the ImageNet zoo and torch.
            write_classifiers(self.model_repository, [CLASSIFIERS[n] for n in names if n in CLASSIFIERS])
        self.grpc_port, self.metrics_port = free_port(), free_port()
        cmd = [
            str(server_dir / "bin" / "tritonserver"),
            f"--model-repository={self.model_repository}",
            f"--backend-directory={self._backend_dir(server_dir)}",
            f"--cache-directory={server_dir / 'caches'}",
            "--grpc-address=127.0.0.1",
            f"--grpc-port={self.grpc_port}",
            "--allow-http=false",
            "--metrics-address=127.0.0.1",
            f"--metrics-port={self.metrics_port}",
            "--allow-gpu-metrics=false",
            "--exit-on-error=true",
            "--log-verbose=0",
            *self.extra_args,
        ]
        if self.models is not None:
            cmd += ["--model-control-mode=explicit", *(f"--load-model={m}" for m in self.models)]
        env = dict(os.environ)
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        # The stub's copy loses its $ORIGIN rpath: point it at the wheel's vendored libraries.
        libs = (
            sysconfig.get_config_var("LIBDIR") or "",
            str(server_dir.parent.parent / "nvidia_pytriton.libs"),
            env.get("LD_LIBRARY_PATH", ""),
        )
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in libs if p)
        env["MAPPER_WEIGHTS_DIR"] = str(self.weights_dir)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + self.startup_timeout
        client = tc.InferenceServerClient(self.url)
        try:
            while True:
                if self.proc.poll() is not None:
                    raise TritonStartError(
                        f"tritonserver exited with {self.proc.returncode}:\n{self.log_tail()}"
                    )
                try:
                    if client.is_server_ready(client_timeout=2):
                        return
                except Exception:  # not listening yet
                    pass
                if time.monotonic() > deadline:
                    self.stop()
                    raise TritonStartError(
                        f"tritonserver not ready after {self.startup_timeout:.0f} s:\n{self.log_tail()}"
                    )
                time.sleep(0.25)
        finally:
            client.close()

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, wait, then SIGKILL; returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return self.proc.returncode

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
