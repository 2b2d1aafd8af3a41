"""Where the face zoo lives and how to read its LFW data (images' identities, embeddings)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

#: Where the face zoo is looked for when $FACE_ZOO_DIR is unset, from the working directory.
SEARCH = (Path("face-zoo"), Path("..") / "shared" / "face-zoo")


#: Arrays of lfw-embeddings.npz that are not a model's embeddings (names; YuNet detections).
NOT_EMBEDDINGS = ("names", "yunet")


def face_zoo_dir() -> Path:
    """``$FACE_ZOO_DIR``, else the first of :data:`SEARCH` that exists (else the last, which
    error messages then name)."""
    env = os.environ.get("FACE_ZOO_DIR")
    if env:
        return Path(env)
    found = next((p for p in SEARCH if p.is_dir()), SEARCH[-1])
    return found.resolve()


def models_dir() -> Path:
    """The face zoo's model weights (``models/``), where every runtime looks by default."""
    return face_zoo_dir() / "models"


def lfw_images_dir() -> Path:
    """The LFW photographs, ``<Person_Name>_<NNNN>.jpg``."""
    return face_zoo_dir() / "lfw" / "images"


def lfw_pairs_path() -> Path:
    """LFW's official 6,000 View 2 pairs."""
    return face_zoo_dir() / "lfw" / "pairs.csv"


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
            f"{path} not found: point FACE_ZOO_DIR at a face-zoo folder "
            "(docs/guides/triton.md says where each file comes from)"
        )
    with np.load(path) as data:
        names = data["names"]
        return names, {k: data[k] for k in data.files if k not in NOT_EMBEDDINGS}


def identity_split(names: np.ndarray, fit_fraction: float = 0.5, seed: int = 0) -> np.ndarray:
    """Boolean (n,) mask: True for images of the fitting identities, a seeded disjoint split."""
    ids = np.array([identity_of(str(n)) for n in names])
    unique = np.unique(ids)
    rng = np.random.default_rng(seed)
    chosen = rng.choice(unique, round(fit_fraction * unique.size), replace=False)
    return np.isin(ids, chosen)


def choose_images(names: list[str], n: int | None, seed: int) -> list[str]:
    """Whole identities, seeded, until ``n`` images; identities with 2+ images first so that
    the subset has genuine pairs."""
    if n is None or n >= len(names):
        return sorted(names)
    by_id: dict[str, list[str]] = {}
    for name in names:
        by_id.setdefault(identity_of(name), []).append(name)
    rng = np.random.default_rng(seed)
    ids = sorted(by_id)
    multi = [i for i in ids if len(by_id[i]) > 1]
    single = [i for i in ids if len(by_id[i]) == 1]
    order = [*rng.permutation(multi), *rng.permutation(single)]
    chosen: list[str] = []
    for i in order:
        if len(chosen) >= n:
            break
        chosen += by_id[i]
    return sorted(chosen)
