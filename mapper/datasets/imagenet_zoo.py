"""Where the ImageNet zoo lives and how to read its labelled photos.

The zoo (1,000 ImageNet photos, one per class, and five quantised TFLite MobileNets) is
research material under ImageNet's terms: it is never part of this project. Point
``$IMAGENET_ZOO_DIR`` at a copy; ``docs/guides/imagenet.md`` says where each file comes from.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

#: Where the zoo is looked for when $IMAGENET_ZOO_DIR is unset, from the working directory.
SEARCH = (Path("imagenet-zoo"), Path("..") / "shared" / "imagenet-zoo")


def imagenet_zoo_dir() -> Path:
    """``$IMAGENET_ZOO_DIR``, else the first of :data:`SEARCH` that exists (else the last)."""
    env = os.environ.get("IMAGENET_ZOO_DIR")
    if env:
        return Path(env)
    return next((p for p in SEARCH if p.is_dir()), SEARCH[-1]).resolve()


def photos(zoo: str | os.PathLike[str] | None = None) -> tuple[list[Path], np.ndarray]:
    """(photo paths (n,), class indices (n,) int64) from the zoo's ``labels.csv``, in its order."""
    zoo = Path(zoo) if zoo else imagenet_zoo_dir()
    labels = zoo / "labels.csv"
    if not labels.exists():
        raise FileNotFoundError(
            f"{labels} not found: point IMAGENET_ZOO_DIR at an imagenet-zoo folder "
            "(docs/guides/imagenet.md says where each file comes from)"
        )
    with open(labels, newline="") as fh:
        rows = list(csv.DictReader(fh))
    return [zoo / r["file"] for r in rows], np.array([int(r["class_index"]) for r in rows])
