"""Where the face zoo lives and how to read its LFW data (images' identities, embeddings)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .models import BUILTIN


def face_zoo_dir() -> Path:
    """``$FACE_ZOO_DIR``, else ``../shared/face-zoo`` beside the project checkout."""
    env = os.environ.get("FACE_ZOO_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[1].parent / "shared" / "face-zoo"


def identity_of(image_name: str) -> str:
    """LFW file ``<Person_Name>_<NNNN>.jpg`` -> ``Person_Name``."""
    return image_name.rsplit("_", 1)[0]


def load_lfw_embeddings(
    path: str | os.PathLike[str] | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(image names (n,), {model: (n, d) float32}) from ``embeddings/lfw-embeddings.npz``."""
    path = Path(path) if path else face_zoo_dir() / "embeddings" / "lfw-embeddings.npz"
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found: point FACE_ZOO_DIR at a face-zoo folder (see README, 'Data and weights')"
        )
    with np.load(path) as data:
        names = data["names"]
        return names, {m.name: data[m.name] for m in BUILTIN if m.name in data.files}


def identity_split(names: np.ndarray, fit_fraction: float = 0.5, seed: int = 0) -> np.ndarray:
    """Boolean (n,) mask: True for images of the fitting identities, a seeded disjoint split."""
    ids = np.array([identity_of(str(n)) for n in names])
    unique = np.unique(ids)
    rng = np.random.default_rng(seed)
    chosen = rng.choice(unique, round(fit_fraction * unique.size), replace=False)
    return np.isin(ids, chosen)
