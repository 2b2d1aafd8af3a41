"""Maps between face-embedding spaces: fit, apply, store, evaluate.

The package is layered; each subpackage imports only those below it (checked by
import-linter, see pyproject.toml)::

    cli       command-line applications (argparse, printing, where maps are published)
    eval      the papers' evaluation: metrics, protocols, cross-model tables, reports
    serving   transport-neutral serving: map catalog, stores, translate/compare
    triton    Triton client, python-backend model, repository generator, local server
    faces     face models: registry, detection and alignment, runtimes, embedding
    core      the maps themselves and their file format (numpy, scipy, scikit-learn)
    datasets  where the face zoo lives and how its LFW files are named

Names below are re-exported lazily (PEP 562), so ``import mapper.faces.registry`` (as a
Triton model does) does not pay for scikit-learn.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:  # pyproject.toml is the one place the version is written
    __version__ = version("face-mapper")
except PackageNotFoundError:  # a bare checkout on sys.path, not installed
    __version__ = "0+unknown"

_EXPORTS = {
    "AffineMap": "mapper.core.maps",
    "EmbeddingMap": "mapper.core.maps",
    "LinearMap": "mapper.core.maps",
    "RotationMap": "mapper.core.maps",
    "UnderdeterminedWarning": "mapper.core.maps",
    "compose": "mapper.core.maps",
    "MLPMap": "mapper.core.mlp",
    "KernelMap": "mapper.core.kernel",
    "EnsembleMap": "mapper.core.ensemble",
    "CanonicalSpace": "mapper.core.hub",
    "EmbeddingError": "mapper.errors",
    "FitError": "mapper.errors",
    "MapFileError": "mapper.errors",
    "MapperError": "mapper.errors",
    "load": "mapper.core.mapfile",
    "save": "mapper.core.mapfile",
}
__all__ = [
    "AffineMap",
    "CanonicalSpace",
    "EmbeddingError",
    "EmbeddingMap",
    "EnsembleMap",
    "FitError",
    "KernelMap",
    "LinearMap",
    "MLPMap",
    "MapFileError",
    "MapperError",
    "RotationMap",
    "UnderdeterminedWarning",
    "compose",
    "load",
    "save",
]

if TYPE_CHECKING:
    from mapper.core.ensemble import EnsembleMap
    from mapper.core.hub import CanonicalSpace
    from mapper.core.kernel import KernelMap
    from mapper.core.mapfile import load, save
    from mapper.core.maps import (
        AffineMap,
        EmbeddingMap,
        LinearMap,
        RotationMap,
        UnderdeterminedWarning,
        compose,
    )
    from mapper.core.mlp import MLPMap
    from mapper.errors import EmbeddingError, FitError, MapFileError, MapperError


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'mapper' has no attribute {name!r}")
