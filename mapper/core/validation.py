"""Input validation at the library boundary: clear errors, never silent wrong answers."""

from __future__ import annotations

import math

import numpy as np

from mapper.errors import EmbeddingError, FitError

FLOAT_DTYPES = (np.float32, np.float64)
#: A row whose L2 norm is below MIN_NORM has no direction, so it is no template: normalising
#: makes it a zero row (no face), which every map kind passes on as a zero row and every
#: scoring scores 0. Nothing divides by zero, and factors stay finite in float32.
MIN_NORM = 1e-12


def check_embeddings(
    x: object, *, name: str = "X", dim: int | None = None, finite: bool = True
) -> np.ndarray:
    """Return ``x`` as a C-contiguous float32/float64 array of shape (n, d).

    Integer input is converted to float64; everything else that is not a real float
    array is refused. ``finite=False`` skips the NaN/Inf scan for callers that detect
    non-finite rows on the way (see ``EmbeddingMap.transform``). Raises
    :class:`EmbeddingError` naming ``name`` and what is wrong.
    """
    arr = np.asarray(x)
    if arr.dtype not in FLOAT_DTYPES:
        if arr.dtype.kind in "iub":
            arr = arr.astype(np.float64)
        else:
            raise EmbeddingError(f"{name} must be a float32 or float64 array, got dtype {arr.dtype}")
    if arr.ndim != 2:
        raise EmbeddingError(f"{name} must have shape (n, d), got shape {arr.shape}")
    n, d = arr.shape
    if n == 0 or d == 0:
        raise EmbeddingError(f"{name} is empty: shape {arr.shape}")
    if dim is not None and d != dim:
        raise EmbeddingError(f"{name} has {d} dimensions, expected {dim}")
    if finite:
        check_finite(arr, name)
    return np.ascontiguousarray(arr)


def check_finite(arr: np.ndarray, name: str = "X") -> None:
    """Raise :class:`EmbeddingError` if any row of (n, d) ``arr`` holds NaN or Inf."""
    ok = np.isfinite(arr).all(axis=1)
    if not ok.all():
        bad = np.flatnonzero(~ok)
        raise EmbeddingError(f"{name} contains NaN or Inf in {bad.size} row(s), first at row {int(bad[0])}")


def check_pairs(x: object, y: object, *, min_pairs: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Validate paired embeddings: row i of ``x`` and of ``y`` are the same face image."""
    x = check_embeddings(x, name="X (source)")
    y = check_embeddings(y, name="Y (target)")
    if x.shape[0] != y.shape[0]:
        raise EmbeddingError(
            f"X and Y must hold the same images row for row: {x.shape[0]} != {y.shape[0]} rows"
        )
    if x.shape[0] < min_pairs:
        raise FitError(f"need at least {min_pairs} pairs to fit this map, got {x.shape[0]}")
    return x, y


def l2_normalize(x: np.ndarray, *, copy: bool = True) -> np.ndarray:
    """Rows of (n, d) ``x`` divided by their norm: unit rows; rows with a norm below
    ``MIN_NORM`` (zero rows, or a template scaled towards zero) become zero rows."""
    out = x.copy() if copy else x
    squared = np.einsum("ij,ij->i", x, x)
    if not math.isfinite(squared.sum()):  # float32 squares overflow above about 1.8e19
        squared = rescale_huge_rows(out, squared)
    out *= inverse_norms(squared)[:, None]  # n divisions, then multiplies
    return out


def rescale_huge_rows(x: np.ndarray, squared: np.ndarray) -> np.ndarray:
    """Divide, in place, the finite rows of (n, d) ``x`` whose squared norm overflowed by
    their largest magnitude (their direction is all that normalising keeps), and return the
    (n,) squared norms recomputed for them. NaN/Inf rows are left as they are."""
    big = ~np.isfinite(squared) & np.isfinite(x).all(axis=1)
    x[big] /= np.abs(x[big]).max(axis=1, keepdims=True)
    squared[big] = np.einsum("ij,ij->i", x[big], x[big])
    return squared


def inverse_norm(norm: float) -> float:
    """:func:`inverse_norms` for one row's norm, as a Python float (one row's hot path)."""
    return 1 / norm if norm >= MIN_NORM else 0.0


def inverse_norms(squared: np.ndarray) -> np.ndarray:
    """1 / sqrt(squared) for (n,) squared row norms, computed in place; 0 where the norm is
    below ``MIN_NORM`` (see there)."""
    np.sqrt(squared, out=squared)
    tiny = squared < MIN_NORM
    np.divide(1, squared, out=squared, where=~tiny)
    squared[tiny] = 0
    return squared
