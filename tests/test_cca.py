"""Regularised CCA and Compare's likelihood-ratio scoring (``llr``): the formula against
scipy's Gaussian densities, the correlations against scikit-learn's CCA, a map file's
round trip, and the gain it was built for on real LFW identity pairs."""

from __future__ import annotations

import numpy as np
from scipy.stats import multivariate_normal
from sklearn.cross_decomposition import CCA

from mapper.core import mapfile
from mapper.core.cca import canonical
from mapper.core.maps import LinearMap
from mapper.core.scoring import ScoreSpace
from mapper.datasets.face_zoo import identity_of, identity_split
from mapper.eval.metrics import tar_at_far_strict
from mapper.eval.pairing import identity_pairs
from mapper.eval.selection import attach_scoring

SFACE, REID = "sface-2021dec-int8bq", "face-reid-retail-0095"


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def llr_space(rho: np.ndarray) -> ScoreSpace:
    """An llr scoring with identity bases and zero means: scores read u and v directly."""
    space, k = ScoreSpace("llr"), len(rho)
    space.source_mean_, space.center_ = np.zeros(k), np.zeros(k)
    space.basis_source_, space.basis_native_ = np.eye(k, dtype=np.float32), np.eye(k, dtype=np.float32)
    space.rho_ = rho.astype(np.float32)
    return space


def test_llr_is_the_gaussian_log_likelihood_ratio():
    rng = np.random.default_rng(0)
    rho = np.array([0.9, 0.5, 0.1])
    joint = multivariate_normal(np.zeros(6), np.block([[np.eye(3), np.diag(rho)], [np.diag(rho), np.eye(3)]]))
    alone = multivariate_normal(np.zeros(3), np.eye(3))
    u, v = unit(rng.standard_normal((5, 3))), unit(rng.standard_normal((5, 3)))  # templates: unit rows
    expected = np.array(
        [[joint.logpdf(np.r_[a, b]) - alone.logpdf(a) - alone.logpdf(b) for b in v] for a in u]
    )
    space = llr_space(rho)
    got = space.matrix(u, v)
    # equal up to the constant dropped from the ratio (the joint density's normaliser) and
    # the standardisation's scale: the spread over two people's templates under the model
    w = 1 / (1 - rho**2)
    scale = np.sqrt(((rho * w) ** 2 + (rho**2 * w) ** 2).sum())
    np.testing.assert_allclose((got - got[0, 0]) * scale, expected - expected[0, 0], atol=1e-4)
    np.testing.assert_allclose(space.rows(u, v), np.diag(got), atol=1e-5)
    np.testing.assert_allclose(space.rows(3 * u, v / 2), space.rows(u, v), atol=1e-5)  # directions
    # a null row (no face) on either side matches no one
    assert space.rows(np.zeros((1, 3)), v[:1])[0] == -np.inf
    assert (space.matrix(u[:2], np.zeros((1, 3))) == -np.inf).all()


def test_llr_is_standardised_over_two_people():
    """Templates of two people, independent in the model's canonical coordinates, score
    mean 0 and spread about 1, whatever the correlations. (Templates are unit rows, so
    each side's own term varies less than with Gaussian coordinates: spread 0.94-0.96.)"""
    rng = np.random.default_rng(5)
    k = 400
    for rho in (np.full(k, 0.3), np.linspace(0.05, 0.95, k)):
        space = llr_space(rho)
        # unit rows scaled by sqrt(k): coordinates of unit variance, as the model has them
        space.basis_source_ = space.basis_native_ = np.sqrt(k) * np.eye(k, dtype=np.float32)
        s = space.rows(rng.standard_normal((20000, k)), rng.standard_normal((20000, k)))
        assert abs(s.mean()) < 0.05 and 0.9 < s.std() < 1.05, (s.mean(), s.std())


def test_canonical_correlations_match_scikit_learn():
    rng = np.random.default_rng(1)
    latent = rng.standard_normal((4000, 2))
    X = np.c_[latent, rng.standard_normal((4000, 3))] @ rng.standard_normal((5, 5)) + 3
    Y = np.c_[latent + 0.5 * rng.standard_normal((4000, 2)), rng.standard_normal((4000, 2))]
    Y = Y @ rng.standard_normal((4, 4)) - 1
    c = canonical(X, Y, shrinkage=1e-9)
    xs, ys = CCA(n_components=2, max_iter=2000).fit(X, Y).transform(X, Y)
    reference = [np.corrcoef(xs[:, i], ys[:, i])[0, 1] for i in range(2)]
    np.testing.assert_allclose(c.rho[:2], reference, atol=1e-3)
    assert c.rho[2:].max() < 0.1  # nothing else is shared
    # the canonical coordinates are uncorrelated, unit-variance, correlated pairwise by rho
    u, v = (X - c.mean_x) @ c.basis_x, (Y - c.mean_y) @ c.basis_y
    np.testing.assert_allclose(np.cov(u.T, bias=True), np.eye(4), atol=1e-6)
    np.testing.assert_allclose(np.diag(u.T @ v / len(u)), c.rho, atol=1e-6)


def test_a_map_file_keeps_its_llr_scoring():
    rng = np.random.default_rng(2)
    X = rng.standard_normal((300, 12))
    Y = np.c_[X[:, :8] @ rng.standard_normal((8, 8)), rng.standard_normal((300, 4))]
    Y += 0.3 * rng.standard_normal((300, 12))
    m = attach_scoring(LinearMap(alpha=1.0, source_id="a", target_id="b").fit(X, Y), "llr", X, Y)
    loaded = mapfile.loads(mapfile.dumps(m))
    assert loaded.score_space.method == "llr"
    a, b = rng.standard_normal((20, 12)), rng.standard_normal((20, 12))
    np.testing.assert_array_equal(loaded.compare_input(a), a)  # llr reads A's own templates
    want = m.score_matrix(a, b)
    np.testing.assert_allclose(loaded.score_matrix(a, b), want, atol=1e-4 * np.ptp(want))


def test_identity_pairs_verify_better_by_likelihood_ratio(lfw_embeddings):
    """Real LFW templates of people the maps never saw: SFace's template of one photo
    against face-reid's of another, fitted on identity pairs (two photos per pair)."""
    names = lfw_embeddings["names"]
    ids = np.array([identity_of(str(n)) for n in names])
    fit = identity_split(names, 0.5, 0)
    emb = {m: lfw_embeddings[m].astype(np.float32) for m in (SFACE, REID)}
    pairs = identity_pairs({m: e[fit] for m, e in emb.items()}, ids[fit])
    X, Y = pairs.xy(SFACE, REID)
    a, b, g = emb[SFACE][~fit][:1500], emb[REID][~fit][:1500], ids[~fit][:1500]
    iu = np.triu_indices(len(g), 1)
    same = (g[:, None] == g[None, :])[iu]

    def tar(m: LinearMap) -> float:
        scores = m.score_matrix(m.compare_input(a), b)[iu]
        return tar_at_far_strict(scores[same], scores[~same], 1e-3)[0]

    m = LinearMap(towards="rotation").fit(X, Y, groups=pairs.groups)
    before = tar(attach_scoring(m, "snorm", X, Y))
    after = tar(attach_scoring(m, "llr", X, Y, pairs.groups))
    # measured S-norm 0.9595 -> llr 0.9770 at FAR 1e-3 (0.9757 without the pairs' people):
    # 43% fewer genuine pairs missed
    assert 1 - after < 0.75 * (1 - before), (before, after)


def test_grouped_cross_covariance_is_every_combination_of_a_person():
    """With each pair's person, A's template meets every B template of its person: the
    same correlations as all those combinations listed one by one, each person's A row
    weighted as one pair."""
    rng = np.random.default_rng(3)
    groups = rng.integers(0, 40, 200)
    person = rng.standard_normal((40, 6))
    X = person[groups] + rng.standard_normal((200, 6))
    Y = person[groups] @ rng.standard_normal((6, 5)) + rng.standard_normal((200, 5))
    got = canonical(X, Y, shrinkage=0.3, groups=groups)
    # brute force: every (i, j) of one person, weight 1 / (j's of that person)
    i, j = np.nonzero(groups[:, None] == groups[None, :])
    w = 1 / np.bincount(groups)[groups[i]]
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    cross = (Xc[i] * w[:, None]).T @ Yc[j] / len(X)

    def inverse_sqrt_shrunk(Z: np.ndarray) -> np.ndarray:
        C = Z.T @ Z / len(Z)
        s, V = np.linalg.eigh(C + 0.3 * np.trace(C) / len(C) * np.eye(len(C)))
        return (V / np.sqrt(s)) @ V.T

    rho = np.linalg.svd(inverse_sqrt_shrunk(Xc) @ cross @ inverse_sqrt_shrunk(Yc), compute_uv=False)
    np.testing.assert_allclose(got.rho, rho, rtol=1e-9)
    assert not np.allclose(canonical(X, Y, shrinkage=0.3).rho, rho, rtol=1e-3)  # one pair per row differs
