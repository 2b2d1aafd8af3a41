"""Metric conventions pinned against scikit-learn, on random scores and on ties."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score, roc_curve

from mapper.eval.metrics import evaluate, roc, tar_at_far_ijbc, tar_at_far_strict


def brute_strict(scores, labels, far):
    """Scan every candidate threshold: the lowest with FAR <= far."""
    best = 0.0
    for t in np.unique(np.r_[scores, np.inf]):
        acc = scores >= t
        if (acc & ~labels).sum() / (~labels).sum() <= far:
            return (acc & labels).sum() / labels.sum()
    return best


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("tied", [False, True])
def test_roc_equals_sklearn(seed, tied):
    rng = np.random.default_rng(seed)
    labels = rng.random(3000) < 0.3
    scores = rng.normal(labels * 1.5, 1.0)
    if tied:
        scores = np.round(scores, 1)
    for drop in (True, False):
        ours = roc(scores, labels, drop_intermediate=drop)
        ref = roc_curve(labels, scores, drop_intermediate=drop)
        # Thresholds are score values (exact); rates are divisions done in another order.
        fpr, tpr, thr = ours
        np.testing.assert_array_equal(thr, ref[2])
        np.testing.assert_allclose(fpr, ref[0], rtol=1e-12, atol=0)
        np.testing.assert_allclose(tpr, ref[1], rtol=1e-12, atol=0)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("tied", [False, True])
def test_strict_tar_matches_threshold_scan(seed, tied):
    rng = np.random.default_rng(seed)
    labels = rng.random(1500) < 0.4
    scores = rng.normal(labels * 2.0, 1.0)
    if tied:
        scores = np.round(scores, 1)
    for far in (1e-3, 1e-2, 0.05, 0.1, 0.5):
        tar, achieved, thr = tar_at_far_strict(scores[labels], scores[~labels], far)
        assert tar == pytest.approx(brute_strict(scores, labels, far))
        assert achieved <= far
        assert achieved == pytest.approx(((scores >= thr) & ~labels).sum() / (~labels).sum(), rel=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_ijbc_convention_equals_the_ijbc_scripts(seed):
    rng = np.random.default_rng(seed)
    labels = rng.random(5000) < 0.2
    scores = np.round(rng.normal(labels * 2.0, 1.0), 2)
    fpr_ref, tpr_ref, _ = roc_curve(labels, scores)
    res = evaluate(scores, labels, fars=(1e-3, 1e-2, 1e-1), convention="ijbc")
    for far, tar in res.tar.items():
        assert tar == pytest.approx(tpr_ref[np.argmin(np.abs(fpr_ref - far))], rel=1e-12)
    fpr, tpr, _ = roc(scores, labels)
    assert tar_at_far_ijbc(fpr, tpr, 1e-2) == pytest.approx(res.tar[1e-2], rel=1e-12)
    assert res.auc == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_conventions_differ_where_they_should():
    # 10 impostors; FAR 0.15 allows 1 false accept: strict stays at or below, ijbc may go above.
    labels = np.array([0] * 10 + [1] * 4, bool)
    scores = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9.5, 9, 8.5, 3, 2], float)
    strict = evaluate(scores, labels, fars=(0.15,)).tar[0.15]
    ijbc = evaluate(scores, labels, fars=(0.15,), convention="ijbc").tar[0.15]
    assert strict == 0.5  # threshold just above 8: accepts 9.5 (impostor), 9, 8.5
    assert ijbc == tpr_at_nearest(scores, labels, 0.15)


def tpr_at_nearest(scores, labels, far):
    fpr, tpr, _ = roc_curve(labels, scores)
    return tpr[np.argmin(np.abs(fpr - far))]


def test_unmeasurable_far_is_nan_and_bad_input_refused():
    labels = np.array([1, 0, 0, 1], bool)
    res = evaluate(np.array([0.9, 0.1, 0.2, 0.8]), labels, fars=(1e-3, 0.5))
    assert np.isnan(res.tar[1e-3]) and res.tar[0.5] == 1.0
    assert res.eer == 0.0
    with pytest.raises(ValueError, match="both genuine"):
        evaluate(np.ones(3), np.ones(3))
    with pytest.raises(ValueError, match="NaN"):
        evaluate(np.array([np.nan, 1.0]), np.array([0, 1]))
    with pytest.raises(ValueError, match="convention"):
        evaluate(np.array([0.0, 1.0]), np.array([0, 1]), convention="nearest")


def brute_eer(scores, labels):
    best = None
    for t in np.unique(scores):
        far = ((scores >= t) & ~labels).sum() / (~labels).sum()
        frr = ((scores < t) & labels).sum() / labels.sum()
        if best is None or abs(far - frr) < best[0]:
            best = (abs(far - frr), (far + frr) / 2)
    return best[1]


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("tied", [False, True])
def test_auc_and_eer_against_sklearn_and_a_threshold_scan(seed, tied):
    rng = np.random.default_rng(seed)
    labels = rng.random(2000) < 0.3
    scores = rng.normal(labels * 1.2, 1.0)
    if tied:
        scores = np.round(scores, 1)
    res = evaluate(scores, labels, fars=(1e-2,))
    assert res.auc == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert res.eer == pytest.approx(brute_eer(scores, labels), abs=1e-12)
    assert res.tar[1e-2] == pytest.approx(brute_strict(scores, labels, 1e-2))
