"""Where a mapped template is scored against a native one: the space a map file records.

Translate returns templates in the target model's raw space, where a vendor's matcher
takes a plain cosine. Compare may do better, measured on LFW (docs/results/low-far.md):
centring both sides on the target's fitted mean removes the large shared component that
mapped templates over- or under-state, and symmetric score normalisation (S-norm)
corrects each template's own score offset, which is what decides the impostor tail at FAR
1e-3 and below.

S-norm here stores no cohort of templates. A template's impostor scores against a cohort
whose rows are Gaussian, ``c ~ N(0, C)``, have the spread ``sqrt(p^T C p)``, and a top-k
cohort's mean and std are both proportional to it; so normalising by it is S-norm against
an infinite Gaussian cohort. A map file then stores two covariance matrices of many
people's centred templates instead of the templates themselves (measured on LFW, four
models: within 0.003 at FAR 1e-3 and 0.006 at 1e-4 of S-norm against 3,865 real
templates, docs/results/trustworthy-maps.md). mapper-train computes them from a cohort of
people the map is not fitted on (``selection.cohort_rows``): matrices of the map's own
fitting people told those people from unseen ones at the membership test's bound (AUC
0.55, tests/test_privacy.py).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.covariance import ledoit_wolf

from mapper.core.cca import canonical
from mapper.core.validation import l2_normalize
from mapper.errors import InvalidInput

#: cosine: plain cosine in the target's space; centred: cosine after subtracting the
#: target's fitted mean from both sides; snorm: centred, then normalised by each side's
#: impostor-score spread under a Gaussian model of the other side's templates; llr: the
#: likelihood ratio of a canonical-correlation model of A's and B's templates
#: (mapper.core.cca), which reads A's own template, not the map's output.
SCORINGS = ("cosine", "centred", "snorm", "llr")
_BLOCK = 4096


class ScoreSpace:
    """How to score (n, d) mapped templates against (n, d) native ones of the target model.

    ``fit(mapped, native, center)``: the fitting images' map outputs and the target's own
    embeddings of the same images, row for row, and the target's fitted mean. For
    ``snorm`` the (d, d) second-moment matrices of both sides' centred unit rows are kept
    (``cov_mapped_``, ``cov_native_``; Ledoit-Wolf shrunk, so a few pairs give a full-rank
    matrix); a mapped template ``p`` is scored ``0.5 * s * (1 / sqrt(p^T C_native p) +
    1 / sqrt(q^T C_mapped q))`` against a native ``q``, ``s`` their centred cosine. No row
    of either side is stored.

    ``llr`` is fitted on the pairs themselves (``source``: A's templates of the pairs) and
    scores A's template, not the map's output, against B's (:attr:`reads_source`) by the
    log-likelihood ratio, standardised over two people's templates under its model:
    ``basis_source_`` (d_A, k), ``basis_native_`` (d_B, k), ``rho_`` (k,), the means
    ``source_mean_`` and ``center_`` (:func:`mapper.core.cca.canonical` of unit rows). A
    null row on either side (no face) scores -inf: it matches no one.
    """

    def __init__(self, method: str = "cosine") -> None:
        if method not in SCORINGS:
            raise InvalidInput(f"scoring must be one of {SCORINGS}, got {method!r}")
        self.method = method

    @property
    def reads_source(self) -> bool:
        """Whether Compare gives this space A's own templates rather than the map's outputs."""
        return self.method == "llr"

    def fit(
        self,
        mapped: np.ndarray | None,
        native: np.ndarray,
        center: np.ndarray | None,
        source: np.ndarray | None = None,
        groups: np.ndarray | None = None,
    ) -> ScoreSpace:
        """Fit on the pairs' map outputs ``mapped`` and B's templates ``native`` (n, d_B),
        centred on ``center``; ``llr`` reads neither ``mapped`` nor ``center`` but A's
        templates of the pairs, ``source`` (n, d_A), and their people ``groups`` (n,) if
        known (:func:`mapper.core.cca.canonical`)."""
        if self.method == "llr":
            if source is None:
                raise InvalidInput("the llr scoring is fitted on A's templates of the pairs: give source")
            c = canonical(*(l2_normalize(np.asarray(z, np.float32)) for z in (source, native)), groups=groups)
            self.source_mean_, self.center_ = c.mean_x, c.mean_y
            self.basis_source_, self.basis_native_, self.rho_ = (
                z.astype(np.float32) for z in (c.basis_x, c.basis_y, c.rho)
            )
            return self
        self.center_ = np.asarray(center, np.float64)
        if self.method == "snorm":
            self.cov_mapped_ = _second_moment(self._prepare(mapped))
            self.cov_native_ = _second_moment(self._prepare(native))
        return self

    def _prepare(self, Z: np.ndarray) -> np.ndarray:
        """Unit rows (templates are directions), then centred and unit again; a zero row
        (no face) stays zero: it matches no one rather than everyone near the mean."""
        Z = l2_normalize(np.asarray(Z, np.float32))
        if self.method != "cosine":
            null = ~Z.any(axis=1)
            Z = l2_normalize(Z - self.center_.astype(np.float32), copy=False)
            Z[null] = 0
        return Z

    @staticmethod
    def _inverse_spread(Z: np.ndarray, cov: np.ndarray) -> np.ndarray:
        """1 / sqrt(z^T C z) per row, in row blocks (bounded temporaries for large requests);
        a zero row gets 0, so its scores stay 0."""
        out = np.empty(len(Z), np.float32)
        for start in range(0, len(Z), _BLOCK):
            z = Z[start : start + _BLOCK]
            out[start : start + _BLOCK] = np.einsum("ij,ij->i", z @ cov, z)
        null = out <= 0
        out[null] = 1
        out = 1 / np.sqrt(out)
        out[null] = 0
        return out

    def _llr(self, source: np.ndarray, native: np.ndarray, pairwise: bool) -> np.ndarray:
        P, Q = l2_normalize(np.asarray(source, np.float32)), l2_normalize(np.asarray(native, np.float32))
        U = (P - self.source_mean_.astype(np.float32)) @ self.basis_source_
        V = (Q - self.center_.astype(np.float32)) @ self.basis_native_
        w = 1 / (1 - self.rho_**2)
        cross, own = self.rho_ * w, 0.5 * self.rho_**2 * w  # per dimension
        # Standardised by the ratio's mean and spread over two people's templates under the
        # model (u, v independent unit normals: mean -2 sum(own), variance sum(cross^2 +
        # 4 own^2)). The order of scores is unchanged, but a fit on fewer pairs, whose
        # correlations come out higher, no longer scores on a wider scale: Compare's
        # thresholds, set on copies fitted on two thirds of the pairs, then hold for the
        # map fitted on all (measured on LFW identity pairs, four model pairs: measured /
        # promised FAR 1.80 / 1.89 / 2.07 at 1e-2 / 1e-3 / 1e-4 unstandardised, 0.84 /
        # 0.88 / 1.12 standardised).
        shift, scale = 2 * own.sum(), np.sqrt((cross**2 + 4 * own**2).sum())
        a, b = (U**2) @ own, (V**2) @ own
        s = (
            (U * cross) @ V.T - a[:, None] - b[None, :]
            if pairwise
            else np.einsum("ij,ij->i", U * cross, V) - a - b
        )
        s = (s + shift) / scale
        null_p, null_q = ~P.any(axis=1), ~Q.any(axis=1)
        if pairwise:
            s[null_p] = -np.inf
            s[:, null_q] = -np.inf
        else:
            s[null_p | null_q] = -np.inf
        return s

    def _scores(self, mapped: np.ndarray, native: np.ndarray, pairwise: bool) -> np.ndarray:
        if self.method == "llr":
            return self._llr(mapped, native, pairwise).astype(np.float32, copy=False)
        P, Q = self._prepare(mapped), self._prepare(native)
        s = P @ Q.T if pairwise else np.einsum("ij,ij->i", P, Q)
        if self.method == "snorm":
            ip = self._inverse_spread(P, self.cov_native_)
            iq = self._inverse_spread(Q, self.cov_mapped_)
            s *= 0.5 * ((ip[:, None] + iq) if pairwise else (ip + iq))
        return s.astype(np.float32, copy=False)

    def matrix(self, mapped: np.ndarray, native: np.ndarray) -> np.ndarray:
        """(n_mapped, n_native) float32 scores of every mapped row (A's own rows when
        :attr:`reads_source`) against every native row."""
        return self._scores(mapped, native, pairwise=True)

    def rows(self, mapped: np.ndarray, native: np.ndarray) -> np.ndarray:
        """(n,) float32 scores of row i of ``mapped`` against row i of ``native``."""
        return self._scores(mapped, native, pairwise=False)

    # -- state for map files ---------------------------------------------------------------
    def tensors(self) -> dict[str, np.ndarray]:
        out = {"score.center": self.center_}
        if self.method == "snorm":
            out |= {"score.cov_mapped": self.cov_mapped_, "score.cov_native": self.cov_native_}
        if self.method == "llr":
            out |= {
                "score.source_mean": self.source_mean_,
                "score.basis_source": self.basis_source_,
                "score.basis_native": self.basis_native_,
                "score.rho": self.rho_,
            }
        return out

    def info(self) -> dict[str, Any]:
        # "kind" in files (map files written before the attribute was renamed read the same)
        return {"kind": self.method, "statistics": "gaussian" if self.method == "snorm" else None}

    @classmethod
    def from_state(
        cls, info: dict[str, Any], tensors: dict[str, np.ndarray], dim: int, source_dim: int
    ) -> ScoreSpace:
        """The space a map file stored, for a map from ``source_dim`` to ``dim`` dimensions
        (ValueError if its tensors do not fit, or if it is an S-norm that stored templates
        as cohorts)."""
        space = cls(info["kind"])
        space.center_ = tensors["score.center"]
        shapes = [space.center_.shape == (dim,)]
        if space.method == "snorm":
            if "score.cov_mapped" not in tensors:
                raise ValueError(
                    "this S-norm scoring stores cohorts of fitting people's templates (written by an "
                    "earlier mapper): refit the map, which now stores statistics only"
                )
            space.cov_mapped_ = tensors["score.cov_mapped"].astype(np.float32)
            space.cov_native_ = tensors["score.cov_native"].astype(np.float32)
            shapes += [c.shape == (dim, dim) for c in (space.cov_mapped_, space.cov_native_)]
        if space.method == "llr":
            names = ("source_mean", "basis_source", "basis_native", "rho")
            if any(f"score.{n}" not in tensors for n in names):
                raise ValueError("the llr scoring's tensors are missing")
            space.source_mean_, space.basis_source_, space.basis_native_, space.rho_ = (
                tensors[f"score.{n}"] for n in names
            )
            k = space.rho_.shape
            shapes += [
                space.basis_native_.shape == (dim, *k),
                space.basis_source_.shape == (space.source_mean_.shape[0], *k),
                space.source_mean_.shape == (source_dim,),
            ]
        if not all(shapes):
            raise ValueError(f"scoring tensors do not fit a {dim}-d target space")
        return space


def _second_moment(Z: np.ndarray) -> np.ndarray:
    """(d, d) float32 E[z z^T] of rows Z, Ledoit-Wolf shrunk toward a scaled identity."""
    Z = Z[Z.any(axis=1)].astype(np.float64)
    if len(Z) < 2:
        raise InvalidInput("S-norm needs at least two non-null templates on each side")
    cov, _ = ledoit_wolf(Z)
    mean = Z.mean(axis=0)
    return (cov + np.outer(mean, mean)).astype(np.float32)


#: A plain cosine: needs nothing fitted; what a map without a recorded scoring uses.
COSINE = ScoreSpace("cosine")
