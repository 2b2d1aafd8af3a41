"""Every class of bad input gets a clear error, never a silent wrong answer."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from mapper import (
    CanonicalSpace,
    EmbeddingError,
    FitError,
    LinearMap,
    MLPMap,
    RotationMap,
    UnderdeterminedWarning,
)
from mapper.core.kinds import DIRECT
from mapper.errors import UnknownModelError
from mapper.eval.selection import attach_scoring

rng = np.random.default_rng(0)
X = rng.standard_normal((100, 8))
Y = rng.standard_normal((100, 6))


@pytest.fixture(scope="module")
def fitted():
    return LinearMap(alpha=1.0).fit(X, Y)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_input_is_refused(fitted, bad):
    Xb = X.copy()
    Xb[7, 3] = bad
    with pytest.raises(EmbeddingError, match="NaN or Inf in 1 row.*row 7"):
        fitted.transform(Xb)
    with pytest.raises(EmbeddingError, match="NaN or Inf"):
        LinearMap().fit(Xb, Y)
    Yb = Y.copy()
    Yb[0, 0] = bad
    with pytest.raises(EmbeddingError, match="Y \\(target\\)"):
        RotationMap().fit(X, Yb)


def test_dimension_mismatch_is_refused(fitted):
    with pytest.raises(EmbeddingError, match="has 7 dimensions, expected 8"):
        fitted.transform(X[:, :7])
    with pytest.raises(EmbeddingError, match="has 8 dimensions, expected 6"):
        fitted.inverse_transform(X)


@pytest.mark.parametrize(
    "bad", [X[0], X[None], np.zeros((0, 8)), X.astype(str), X.astype(complex), [[1, "a"]]]
)
def test_bad_shapes_and_dtypes_are_refused(fitted, bad):
    with pytest.raises(EmbeddingError):
        fitted.transform(bad)


def test_row_count_mismatch_is_refused():
    with pytest.raises(EmbeddingError, match="row for row"):
        LinearMap().fit(X, Y[:-1])


def test_too_few_pairs_is_refused():
    with pytest.raises(FitError, match="at least 10 pairs"):
        LinearMap(cv=5).fit(X[:9], Y[:9])
    with pytest.raises(FitError, match="at least 2 pairs"):
        RotationMap().fit(X[:1], Y[:1])
    with pytest.raises(FitError, match="identities"):
        LinearMap(cv=5).fit(X, Y, groups=np.arange(100) % 3)


def test_rank_deficiency():
    with pytest.raises(FitError, match="rank 5 < 8.*alpha > 0"):
        LinearMap(alpha=0, normalize_input=False).fit(X[:6], Y[:6])
    low_rank = X[:, :3] @ rng.standard_normal((3, 8))
    with pytest.raises(FitError, match="rank 3 < 8"):
        LinearMap(alpha=0, normalize_input=False).fit(low_rank, Y)
    constant = np.ones((50, 8))
    with pytest.raises(FitError, match="constant"):
        LinearMap(alpha=1.0).fit(constant, Y[:50])
    with pytest.raises(FitError, match="constant"):
        RotationMap().fit(constant, Y[:50])
    with pytest.warns(UnderdeterminedWarning, match="rank"):
        RotationMap().fit(X[:4], Y[:4])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        RotationMap().fit(X, Y)  # enough pairs: no warning


def test_unfitted_and_invalid_parameters():
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        LinearMap().transform(X)
    with pytest.raises(FitError, match="alpha must be >= 0"):
        LinearMap(alpha=-1).fit(X, Y)
    with pytest.raises(NotImplementedError, match="no inverse"):
        MLPMap(epochs=1).fit(X, Y).inverse_transform(Y)
    with pytest.raises(UnknownModelError, match="unknown reference"):
        CanonicalSpace().fit({"a": X, "b": Y}).add_model("c", X, references={"zzz": X})


@pytest.mark.parametrize("kind", [*DIRECT, "hub"])
@pytest.mark.parametrize("scale", [0.0, 1e-40, 1e-20])
def test_one_rule_for_rows_without_direction(kind, scale):
    """A row whose norm is below MIN_NORM is no template: every kind maps it to a zero row
    and every scoring scores it 0 (a 1e-40-scaled face once became a unit template under a
    tuned map and a zero row under a linear one)."""
    rng = np.random.default_rng(5)
    X, Y = rng.standard_normal((300, 16)), rng.standard_normal((300, 12))
    if kind == "hub":
        m = CanonicalSpace(name="h", max_iter=2).fit({"a": X, "b": Y}).mapping("a", "b")
    else:
        m = attach_scoring(DIRECT[kind](source_id="a", target_id="b").fit(X, Y), "snorm", X, Y)
    x = np.vstack([scale * X[:1], X[1:2]]).astype(np.float32)
    out = m.transform(x)
    assert not out[0].any()
    np.testing.assert_allclose(np.linalg.norm(out[1]), 1, atol=1e-5)
    scores = m.score_rows(out, Y[:2].astype(np.float32))
    assert scores[0] == 0 and scores[1] != 0
