"""Maps between face-embedding spaces: fit, apply, store, evaluate."""

__version__ = "0.1.0"

from .hub import CanonicalSpace
from .maps import AffineMap, EmbeddingMap, LinearMap, RotationMap, UnderdeterminedWarning, compose
from .mlp import MLPMap
from .validation import EmbeddingError, FitError

__all__ = [
    "AffineMap",
    "CanonicalSpace",
    "EmbeddingError",
    "EmbeddingMap",
    "FitError",
    "LinearMap",
    "MLPMap",
    "RotationMap",
    "UnderdeterminedWarning",
    "compose",
]
