"""Embeddings of photo views by the classifiers, cached on disk.

A run asks for (model, view) over a list of photos; each such block is one ``.npy`` file
named by the model, the view and a digest of the photo list, so a rerun reads it back and
an interrupted run keeps the blocks it finished. The photos are ImageNet's, not people's,
so caching them is not caching templates.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mapper.classifiers import views
from mapper.classifiers.registry import Classifier
from mapper.classifiers.runtimes import ClassifierRuntime, load

#: (model, (n, S, S, 3) uint8) -> (n, dim) float32: in-process runtimes or Triton.
Embed = Callable[[Classifier, np.ndarray], np.ndarray]


class LocalEmbed:
    """Every classifier in this process, each loaded on first use."""

    def __init__(self, zoo_dir: str | os.PathLike[str]) -> None:
        self.zoo_dir = zoo_dir
        self.runtimes: dict[str, ClassifierRuntime] = {}

    def runtime(self, model: Classifier) -> ClassifierRuntime:
        if model.name not in self.runtimes:
            self.runtimes[model.name] = load(model, self.zoo_dir)
        return self.runtimes[model.name]

    def __call__(self, model: Classifier, x: np.ndarray) -> np.ndarray:
        return self.runtime(model).embed(x)


def _digest(paths: Sequence[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(f"{Path(p).name}:{Path(p).stat().st_size}\n".encode())
    return h.hexdigest()[:16]


def embed_views(
    embed: Embed,
    model: Classifier,
    paths: Sequence[str | os.PathLike[str]],
    view: views.View,
    cache_dir: str | os.PathLike[str] | None,
    *,
    chunk: int = 32,
    progress: bool = True,
) -> np.ndarray:
    """(n, dim) float32 embeddings of ``paths`` seen through ``view`` by ``model``."""
    paths = [Path(p) for p in paths]
    cached = Path(cache_dir) / f"{model.name}--{view.name}--{_digest(paths)}.npy" if cache_dir else None
    if cached is not None and cached.exists():
        return np.load(cached)
    out = np.zeros((len(paths), model.dim), np.float32)
    desc = f"{model.label} {view.name}"
    for start in tqdm(
        range(0, len(paths), chunk), desc=desc, unit="chunk", disable=not progress, leave=False
    ):
        x = np.stack([views.load(p, model, view) for p in paths[start : start + chunk]])
        out[start : start + len(x)] = embed(model, x)
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(".tmp.npy")
        np.save(tmp, out)
        tmp.replace(cached)
    return out
