"""Canonical correlation between two models' templates: the model behind Compare's ``llr``
scoring (:class:`mapper.core.scoring.ScoreSpace`).

A pair of templates of one person (A's of one photo, B's of the same or another photo)
is modelled as jointly Gaussian: in canonical coordinates ``u = (x - m_x) A`` and
``v = (y - m_y) B`` every dimension is a unit-variance pair with correlation ``rho_i``,
independent of the others; two different people's templates are independent. The
log-likelihood ratio of "one person" against "two people" is then, per dimension,
``(rho u v - rho^2 (u^2 + v^2) / 2) / (1 - rho^2)`` (constants dropped), summed. It
models the noise on both sides of a pair, which a regression (noise on the target only)
does not: pairs of two photos of one person (``--pairing identity``) carry both.

The covariances are shrunk towards a scaled identity (``shrinkage`` times the mean
variance), which keeps weak, noisy canonical directions from dominating. Measured on the
fitting people of LFW alone (an inner identity split of ``mapper-train --full``'s fitting
half, four models, 692 identity pairs, mean TAR at FAR 1e-3 over 12 ordered pairs):
shrinkage 0.01 / 0.1 / 0.3 / 0.6 / 1 / 2 / 4 gave 0.670 / 0.760 / 0.813 / 0.831 / 0.831 /
0.812 / 0.761, against 0.704 for ridge shrunk towards the rotation under a cosine; hence
:data:`SHRINKAGE`.

Given each pair's person (``groups``), the cross-covariance pairs each A template with the
mean of its person's B templates: every A x B combination of a person at once, where one
pair per A template leaves the others' evidence unused. It is the same expectation (two
photos' errors are independent) with less noise. On the same inner split, at FAR 1e-3:
0.8333 -> 0.8427 from identity pairs; from image pairs (a pair's two sides one photo)
0.9310 -> 0.9307, so it is used for both.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from mapper.errors import FitError

#: Default shrinkage of both covariances (see the module docstring).
SHRINKAGE = 0.6
#: Canonical correlations are capped here: a correlation of 1 would divide by zero.
MAX_RHO = 0.999


class Canonical(NamedTuple):
    """Means (d_x,), (d_y,); canonical directions (d_x, k), (d_y, k); correlations (k,),
    k = min(d_x, d_y), strongest first."""

    mean_x: np.ndarray
    mean_y: np.ndarray
    basis_x: np.ndarray
    basis_y: np.ndarray
    rho: np.ndarray


def _inverse_sqrt(C: np.ndarray) -> np.ndarray:
    s, V = np.linalg.eigh(C)
    return (V / np.sqrt(s)) @ V.T


def _group_means(Z: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """(n, d): each row replaced by the mean of its group's rows."""
    _, inverse = np.unique(np.asarray(groups), return_inverse=True)
    sums = np.zeros((inverse.max() + 1, Z.shape[1]))
    np.add.at(sums, inverse, Z)
    return (sums / np.bincount(inverse)[:, None])[inverse]


def canonical(
    X: np.ndarray, Y: np.ndarray, shrinkage: float = SHRINKAGE, groups: np.ndarray | None = None
) -> Canonical:
    """Regularised CCA of paired rows X (n, d_x) and Y (n, d_y); ``groups`` (n,): each
    pair's person, if known (see the module docstring)."""
    if not shrinkage > 0:
        raise FitError(f"shrinkage must be > 0, got {shrinkage}")
    X, Y = np.asarray(X, np.float64), np.asarray(Y, np.float64)
    mean_x, mean_y = X.mean(axis=0), Y.mean(axis=0)
    Xc, Yc = X - mean_x, Y - mean_y

    def shrunk(Z: np.ndarray) -> np.ndarray:
        C = Z.T @ Z / len(Z)
        mean_variance = np.trace(C) / len(C)
        if not mean_variance > 0:
            raise FitError("embeddings are constant: no correlation to fit")
        return C + shrinkage * mean_variance * np.eye(len(C))

    Kx, Ky = _inverse_sqrt(shrunk(Xc)), _inverse_sqrt(shrunk(Yc))
    if groups is not None:  # the means' mean is Y's: still centred
        Yc = _group_means(Yc, groups)
    U, S, Vt = np.linalg.svd(Kx @ (Xc.T @ Yc / len(X)) @ Ky, full_matrices=False)
    return Canonical(mean_x, mean_y, Kx @ U, Ky @ Vt.T, np.clip(S, 0.0, MAX_RHO))
