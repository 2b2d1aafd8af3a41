"""Shared fixtures: real LFW embeddings from the face zoo, planted synthetic data."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from mapper.datasets.face_zoo import face_zoo_dir

ROOT_DIR = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def face_zoo() -> Path:
    path = face_zoo_dir()
    if not (path / "embeddings" / "lfw-embeddings.npz").exists():
        if os.environ.get("CI"):
            pytest.fail(f"face zoo not found at {path}; set FACE_ZOO_DIR")
        pytest.skip(f"face zoo not found at {path}; set FACE_ZOO_DIR")
    return path


@pytest.fixture(scope="session")
def lfw_embeddings(face_zoo: Path) -> dict[str, np.ndarray]:
    with np.load(face_zoo / "embeddings" / "lfw-embeddings.npz") as data:
        return {k: data[k] for k in data.files}


def random_orthogonal(rng: np.random.Generator, d: int) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return q * np.sign(np.diag(r))


@pytest.fixture(scope="session")
def triton(face_zoo: Path):
    """A real tritonserver with every model of model_repository/, for the whole session."""
    from mapper.triton.server import TritonServer

    root = Path(__file__).resolve().parents[1]
    with TritonServer(root / "model_repository", weights_dir=face_zoo / "models") as server:
        yield server


@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL server for the session (see tools/postgres.py)."""
    from tools.postgres import PostgresServer, available

    if not available():
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL binaries not found (Debian: apt-get install postgresql)")
        pytest.skip("PostgreSQL binaries not found (Debian: apt-get install postgresql)")
    with PostgresServer() as server:
        yield server
