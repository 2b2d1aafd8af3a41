"""LinearMap and RotationMap: planted maps, agreement with scipy/sklearn, the fast CV."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.linalg import orthogonal_procrustes
from sklearn.linear_model import Ridge
from sklearn.model_selection import KFold

from mapper import AffineMap, LinearMap, RotationMap, compose
from mapper.core import maps

from .conftest import random_orthogonal

RAW = {"center": False, "normalize_input": False, "normalize_output": False}


def test_recovers_planted_rotation_under_noise():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((4000, 64))
    Q = random_orthogonal(rng, 64)
    Y = X @ Q + 1e-3 * rng.standard_normal(X.shape)
    m = RotationMap(scale=False, **RAW).fit(X, Y)
    assert np.abs(m.weight_ - Q).max() < 1e-3
    assert np.allclose(m.weight_.T @ m.weight_, np.eye(64), atol=1e-10)


def test_recovers_planted_scale_and_offsets():
    rng = np.random.default_rng(2)
    X = rng.standard_normal((3000, 32)) + 5.0
    Q = random_orthogonal(rng, 32)
    shift = rng.standard_normal(32)
    Y = 0.37 * (X - X.mean(0)) @ Q + shift
    m = RotationMap(scale=True, center=True, normalize_input=False, normalize_output=False).fit(X, Y)
    assert m.scale_ == pytest.approx(0.37, rel=1e-10)
    np.testing.assert_allclose(m.transform(X), Y, atol=1e-9)
    np.testing.assert_allclose(m.inverse_transform(Y), X, atol=1e-9)


def test_rotation_matches_scipy_orthogonal_procrustes():
    rng = np.random.default_rng(3)
    X, Y = rng.standard_normal((500, 40)), rng.standard_normal((500, 40))
    R, _ = orthogonal_procrustes(X, Y)
    m = RotationMap(scale=False, **RAW).fit(X, Y)
    np.testing.assert_allclose(m.weight_, R, atol=1e-10)


@pytest.mark.parametrize(("d_source", "d_target"), [(24, 40), (40, 24)])
def test_rectangular_rotation_is_zero_padded_procrustes(d_source, d_target):
    rng = np.random.default_rng(4)
    X, Y = rng.standard_normal((300, d_source)), rng.standard_normal((300, d_target))
    d = max(d_source, d_target)
    Xp = np.zeros((300, d))
    Yp = np.zeros((300, d))
    Xp[:, :d_source], Yp[:, :d_target] = X, Y
    R, _ = orthogonal_procrustes(Xp, Yp)
    m = RotationMap(scale=False, **RAW).fit(X, Y)
    # Both maximise tr(W^T X^T Y): the padded solution's block is the semi-orthogonal map.
    np.testing.assert_allclose(m.weight_, R[:d_source, :d_target], atol=1e-10)
    k = min(d_source, d_target)
    gram = m.weight_.T @ m.weight_ if d_source > d_target else m.weight_ @ m.weight_.T
    np.testing.assert_allclose(gram, np.eye(k), atol=1e-10)


def test_recovers_planted_linear_map_with_bias():
    rng = np.random.default_rng(5)
    X = rng.standard_normal((5000, 48))
    A = rng.standard_normal((48, 24))
    b = rng.standard_normal(24)
    Y = X @ A + b + 1e-3 * rng.standard_normal((5000, 24))
    m = LinearMap(alpha=1e-9, center=True, normalize_input=False, normalize_output=False).fit(X, Y)
    assert np.abs(m.weight_ - A).max() < 2e-4
    assert np.abs(m.bias_ - b).max() < 2e-4


def test_linear_matches_closed_form_ridge_and_sklearn():
    rng = np.random.default_rng(6)
    X, Y = rng.standard_normal((200, 30)), rng.standard_normal((200, 20))
    alpha = 3.0
    m = LinearMap(alpha=alpha, center=True, normalize_input=False, normalize_output=False).fit(X, Y)
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    closed = np.linalg.solve(Xc.T @ Xc + alpha * np.eye(30), Xc.T @ Yc)
    np.testing.assert_allclose(m.weight_, closed, rtol=1e-10, atol=1e-12)
    ridge = Ridge(alpha=alpha, fit_intercept=True).fit(X, Y)
    np.testing.assert_allclose(m.weight_, ridge.coef_.T, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(m.bias_, ridge.intercept_, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(m.transform(X), ridge.predict(X), rtol=1e-8, atol=1e-10)


def test_fast_cv_equals_brute_force_folds():
    rng = np.random.default_rng(7)
    X = rng.standard_normal((300, 25))
    Y = X @ rng.standard_normal((25, 15)) + 0.5 * rng.standard_normal((300, 15))
    alphas = (0.01, 1.0, 10.0, 100.0)
    m = LinearMap(alphas=alphas, cv=4, random_state=3, normalize_input=False, normalize_output=False).fit(
        X, Y
    )
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    brute = np.zeros(len(alphas))
    for tr, va in KFold(4, shuffle=True, random_state=3).split(Xc):
        for i, a in enumerate(alphas):
            W = np.linalg.solve(Xc[tr].T @ Xc[tr] + a * np.eye(25), Xc[tr].T @ Yc[tr])
            brute[i] += ((Xc[va] @ W - Yc[va]) ** 2).sum()
    np.testing.assert_allclose(m.cv_mse_, brute / 300, rtol=1e-8)
    assert m.alpha_ == alphas[int(np.argmin(brute))]


def test_ridge_towards_the_rotation_is_the_rotation_plus_ridge_on_its_residual():
    rng = np.random.default_rng(16)
    X = rng.standard_normal((200, 30))
    Y = X @ random_orthogonal(rng, 30)[:, :20] + 0.8 * rng.standard_normal((200, 20))
    plain = dict(center=True, normalize_input=False, normalize_output=False)
    m = LinearMap(alpha=3.0, towards="rotation", **plain).fit(X, Y)
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    rotation, scale, _ = maps.procrustes(Xc, Yc)
    residual = Yc - Xc @ rotation * scale
    want = rotation * scale + np.linalg.solve(Xc.T @ Xc + 3.0 * np.eye(30), Xc.T @ residual)
    np.testing.assert_allclose(m.weight_, want, rtol=1e-8, atol=1e-10)
    assert m.fit_info_["towards"] == "rotation"
    # A huge penalty leaves the rotation; no penalty is least squares either way.
    stiff = LinearMap(alpha=1e12, towards="rotation", **plain).fit(X, Y)
    np.testing.assert_allclose(stiff.weight_, RotationMap(**plain).fit(X, Y).weight_, atol=1e-8)
    free = LinearMap(alpha=0.0, towards="rotation", **plain).fit(X, Y)
    np.testing.assert_allclose(free.weight_, LinearMap(alpha=0.0, **plain).fit(X, Y).weight_, atol=1e-8)
    with pytest.raises(maps.FitError, match="towards"):
        LinearMap(towards="zero", **plain).fit(X, Y)


def test_cv_towards_the_rotation_fits_each_fold_s_rotation_on_its_training_rows():
    rng = np.random.default_rng(17)
    X = rng.standard_normal((240, 12))
    Y = X @ random_orthogonal(rng, 12) + 1.5 * rng.standard_normal((240, 12))
    alphas = (0.1, 10.0, 100.0, 1000.0)
    plain = dict(normalize_input=False, normalize_output=False)
    m = LinearMap(alphas=alphas, cv=4, random_state=2, towards="rotation", **plain).fit(X, Y)
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    brute = np.zeros(len(alphas))
    for tr, va in KFold(4, shuffle=True, random_state=2).split(Xc):
        rotation, scale, _ = maps.procrustes(Xc[tr], Yc[tr])
        P = rotation * scale
        for i, a in enumerate(alphas):
            W = P + np.linalg.solve(Xc[tr].T @ Xc[tr] + a * np.eye(12), Xc[tr].T @ (Yc[tr] - Xc[tr] @ P))
            brute[i] += ((Xc[va] @ W - Yc[va]) ** 2).sum()
    np.testing.assert_allclose(m.cv_mse_, brute / 240, rtol=1e-8)
    assert brute[alphas.index(m.alpha_)] <= brute.min() * (1 + 1e-9)  # a near tie may go either way


def test_cv_picks_strong_ridge_for_pure_noise_and_weak_for_clean_data():
    rng = np.random.default_rng(8)
    X = rng.standard_normal((400, 20))
    noise = LinearMap(normalize_input=False).fit(X, rng.standard_normal((400, 20)))
    clean = LinearMap(normalize_input=False).fit(X, X @ rng.standard_normal((20, 20)))
    assert noise.alpha_ > 10 * clean.alpha_


def test_group_cv_uses_identities():
    """20 people, 5 near-identical images each, and nothing linear between A and B: a map
    that memorises the people looks perfect when a person's images fall in both the
    training and the validation folds (plain KFold picks a tiny penalty), and
    useless across people (identity-disjoint folds pick the largest)."""
    rng = np.random.default_rng(9)
    groups = np.repeat(np.arange(20), 5)
    X = rng.standard_normal((20, 32))[groups] + 0.01 * rng.standard_normal((100, 32))
    Y = rng.standard_normal((20, 8))[groups] + 0.01 * rng.standard_normal((100, 8))
    grouped = LinearMap(cv=5).fit(X, Y, groups=groups)
    ungrouped = LinearMap(cv=5).fit(X, Y)
    assert grouped.fit_info_["n_identities"] == 20 and grouped.fit_info_["cv_folds"] == 5
    assert ungrouped.alpha_ <= 1e-2
    assert grouped.alpha_ == max(grouped.alphas)


def test_dtype_is_preserved_and_float32_matches_float64():
    rng = np.random.default_rng(10)
    X, Y = rng.standard_normal((500, 16)), rng.standard_normal((500, 12))
    m = LinearMap(alpha=1.0).fit(X, Y)
    out32 = m.transform(X.astype(np.float32))
    out64 = m.transform(X)
    assert out32.dtype == np.float32 and out64.dtype == np.float64
    np.testing.assert_allclose(out32, out64, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(out64, axis=1), 1.0, atol=1e-12)


@pytest.mark.parametrize("normalize_input", [True, False])
@pytest.mark.parametrize("normalize_output", [True, False])
def test_transform_equals_explicit_preprocessing(normalize_input, normalize_output, monkeypatch):
    monkeypatch.setattr(maps, "_BLOCK", 1000)
    rng = np.random.default_rng(11)
    X, Y = rng.standard_normal((300, 10)) + 2, rng.standard_normal((300, 6)) - 1
    options = {"normalize_input": normalize_input, "normalize_output": normalize_output}
    m = RotationMap(**options).fit(X, Y)
    # Three transform blocks, and a zero row (a failed enrolment).
    Xt = np.vstack([rng.standard_normal((2500, 10)) + 2, np.zeros((1, 10))])
    Xn = Xt / np.linalg.norm(Xt, axis=1, keepdims=True).clip(1e-300) if normalize_input else Xt
    expected = (Xn - m.source_mean_) @ m.weight_ + m.target_mean_
    if normalize_output:
        expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    if normalize_input:
        expected[-1] = 0  # a null template stays null
    np.testing.assert_allclose(m.transform(Xt), expected, atol=1e-12)
    np.testing.assert_allclose(m.transform(Xt[:5].astype(np.float32)), expected[:5], atol=1e-6)


_ROW_X = np.random.default_rng(21).standard_normal((200, 12)) + 1
_ROW_Y = np.random.default_rng(22).standard_normal((200, 7))
_ROW_MAPS = {
    (kind.__name__, ni, no): kind(normalize_input=ni, normalize_output=no).fit(_ROW_X, _ROW_Y)
    for kind in (LinearMap, RotationMap)
    for ni in (True, False)
    for no in (True, False)
}


@settings(max_examples=150, deadline=None)
@given(
    key=st.sampled_from(sorted(_ROW_MAPS)),
    dtype=st.sampled_from([np.float32, np.float64]),
    scale=st.sampled_from([0.0, 1e-40, 1e-13, 1e-6, 1.0, 1e3, 1e20, 1e30]),
    seed=st.integers(0, 2**16),
)
def test_one_row_path_equals_the_block_path(key, dtype, scale, seed):
    """A single row (a service's batch 1) is mapped with scalar norms; it must give the block
    path's row, for tiny, zero and overflowing rows too."""
    m = _ROW_MAPS[key]
    x = (np.random.default_rng(seed).standard_normal((3, 12)) * scale).astype(dtype)
    try:
        block = m.transform(x)
    except ValueError as e:  # rows too large for a map that does not normalise its input
        assert "too large" in str(e)
        with pytest.raises(ValueError, match="too large"):
            m.transform(x[1:2])
        return
    for i in range(3):
        # The two paths sum in different orders: compare to the row's scale (100 ulps), as an
        # output that cancels to near zero carries the rounding of its large terms.
        scale_i = float(np.abs(block[i]).max())
        atol = 100 * np.finfo(dtype).eps * scale_i + 1e-30
        np.testing.assert_allclose(m.transform(x[i : i + 1])[0], block[i], rtol=1e-5, atol=atol)
    nan = x[1:2].copy()
    nan[0, 3] = np.nan
    with pytest.raises(ValueError, match="NaN or Inf in 1 row"):
        m.transform(nan)


def test_non_finite_row_is_reported_by_its_place_in_the_whole_input(monkeypatch):
    monkeypatch.setattr(maps, "_BLOCK", 1000)
    rng = np.random.default_rng(13)
    m = LinearMap(alpha=1.0).fit(rng.standard_normal((100, 8)), rng.standard_normal((100, 8)))
    X = rng.standard_normal((3000, 8))
    X[2100, 5] = np.nan  # in the third block
    with pytest.raises(ValueError, match="NaN or Inf in 1 row.*row 2100"):
        m.transform(X)


def test_compose_equals_applying_in_turn():
    rng = np.random.default_rng(12)
    X, Y, Z = (rng.standard_normal((200, d)) for d in (10, 12, 8))
    first = LinearMap(alpha=1.0, normalize_output=False).fit(X, Y)
    second = RotationMap(normalize_input=False).fit(Y, Z)
    composed = compose(first, second)
    assert isinstance(composed, AffineMap)
    np.testing.assert_allclose(composed.transform(X), second.transform(first.transform(X)), atol=1e-12)
    with pytest.raises(ValueError, match="not normalised"):
        compose(LinearMap(alpha=1.0).fit(X, Y), second)


def test_centering_matters_for_real_dlib_embeddings(lfw_embeddings):
    """The face zoo's finding: maps into dlib need mean-centring."""
    from sklearn.metrics import roc_auc_score

    ids = np.array([n.rsplit("_", 1)[0] for n in lfw_embeddings["names"]])
    fit = np.isin(ids, np.unique(ids)[::2])
    src, dst = lfw_embeddings["sface-2021dec-int8bq"], lfw_embeddings["dlib-resnet-v1"]
    ev = np.flatnonzero(~fit)[:1500]
    same = ids[ev][:, None] == ids[ev][None, :]
    iu = np.triu_indices(len(ev), 1)
    target = dst[ev] / np.linalg.norm(dst[ev], axis=1, keepdims=True)
    aucs = {}
    for center in (True, False):
        m = LinearMap(center=center).fit(src[fit], dst[fit])
        scores = (m.transform(src[ev]) @ target.T)[iu]
        aucs[center] = roc_auc_score(same[iu], scores)
    assert aucs[True] > 0.98
    assert aucs[True] > aucs[False] + 0.01
