"""The package works installed from a wheel, away from the checkout: no library code
resolves paths from the source tree."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import numpy as np
import pytest

from mapper_service.client import MapperClient
from mapper_service.launcher import wait_port_file

from .servers import ROOT

MODELS = ["sface-2021dec-int8bq", "face-reid-retail-0095"]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A fresh virtualenv holding only the face-mapper wheel; its dependencies come from the
    test environment's site-packages through a .pth line (no downloads, no editable finder)."""
    tmp = tmp_path_factory.mktemp("install")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            tmp / "wheel",
            ROOT,
        ],
        check=True,
        cwd=tmp,
    )
    (wheel,) = (tmp / "wheel").glob("face_mapper-*.whl")
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    py = venv / "bin" / "python"
    site = subprocess.run(
        [py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    # Lines of a .pth file join sys.path, but .pth files inside them are not run: the test
    # environment's editable install of this checkout stays invisible.
    Path(site, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", py, "install", "-q", "--no-deps", wheel], check=True
    )
    elsewhere = tmp / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "FACE_ZOO_DIR")}
    return venv, elsewhere, env, wheel


def test_the_wheel_holds_the_two_packages_and_no_dev_tools(installed):
    """Top level: mapper and mapper_service only (no generic ``service``, no ``tools``, no
    ``tests``); the protobuf generator stays in the checkout."""
    names = zipfile.ZipFile(installed[3]).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"mapper", "mapper_service"}, top
    assert not [n for n in names if "protogen" in n]


def test_imports_come_from_the_installed_wheel(installed):
    venv, elsewhere, env, _ = installed
    out = subprocess.run(
        [
            venv / "bin" / "python",
            "-c",
            "import mapper.cli.train, mapper_service.app; print(mapper.__file__)",
        ],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert Path(out.strip()).is_relative_to(venv), out


def test_train_then_serve_from_another_directory(installed, face_zoo):
    venv, elsewhere, env, _ = installed
    run = subprocess.run(
        [
            venv / "bin" / "mapper-train",
            "--embeddings",
            face_zoo / "embeddings" / "lfw-embeddings.npz",
            "--images",
            "300",
            "--models",
            *MODELS,
            "--kinds",
            "linear",
            "--no-fewshot",
            "--no-security",
            "--no-progress",
            "--store",
            "maps.sqlite",
        ],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert (elsewhere / "out" / "train" / "report.md").exists()
    assert not (elsewhere / ".cache").exists()  # precomputed embeddings need no cache

    port_file = elsewhere / "port"
    proc = subprocess.Popen(
        [venv / "bin" / "mapper-serve", "--port", "0", "--port-file", port_file, "--metrics-port", "-1"],
        cwd=elsewhere,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        port = wait_port_file(port_file, proc)
        with MapperClient(f"127.0.0.1:{port}") as client:
            assert client.list_models() == {MODELS[0]: 128, MODELS[1]: 256}
            x = np.random.default_rng(0).standard_normal((3, 128)).astype(np.float32)
            y, ref = client.translate(x, MODELS[0], MODELS[1])
            assert y.shape == (3, 256) and ref.kind == "linear"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
