"""Maps between face-embedding spaces, shaped like scikit-learn transformers.

Every map applies the same self-contained preprocessing, so a stored map needs nothing
else to be used: optional L2 normalisation of the input, subtraction of the source mean,
the fitted transform, addition of the target mean (so the output lives in the target
model's own space and compares with its native templates), optional L2 normalisation of
the output. Centring matters with real models: dlib's embeddings are far from zero-mean.
With input normalisation a zero row (a failed enrolment stored as zeros) maps to a zero
row: a null template stays null instead of becoming the mapped mean face.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.model_selection import GroupKFold, KFold
from sklearn.utils.validation import check_is_fitted

from mapper.core.scoring import COSINE, ScoreSpace
from mapper.core.validation import (
    MIN_NORM,
    EmbeddingError,
    FitError,
    check_embeddings,
    check_finite,
    check_pairs,
    inverse_norm,
    inverse_norms,
    l2_normalize,
    rescale_huge_rows,
)
from mapper.errors import InvalidInput

#: Ridge penalties tried by cross-validation. Inputs are L2-normalised by default, so the
#: Gram matrix's eigenvalues are about n/d and this grid spans "almost none" to "strong".
DEFAULT_ALPHAS = tuple(float(a) for a in np.logspace(-4, 3, 15))

# Rows per block in transform: enough for BLAS to run at full speed on all its threads
# (1,024-row blocks were 25% slower on 200,000 x 512 with 2 threads), few enough to bound
# the temporaries (32 MiB at 512-d float32).
_BLOCK = 16384


class UnderdeterminedWarning(UserWarning):
    """The pairs leave part of the map undetermined (fewer pairs than dimensions)."""


def _rank(values: np.ndarray, shape: tuple[int, int], reference: float) -> int:
    """Numerical rank of eigen/singular ``values`` against the uncentred data's scale, so
    that rows made constant by centring (round-off of order eps) count as rank 0."""
    return int((values > reference * max(shape) * np.finfo(np.float64).eps).sum())


class EmbeddingMap(TransformerMixin, BaseEstimator, auto_wrap_output_keys=None):
    """Base class: an affine map ``y = (n(x) - source_mean_) @ weight_ + target_mean_``.

    Subclasses implement :meth:`_fit_centered`; everything else (validation, preprocessing,
    application, serialisation state) lives here. Fitted attributes:

    - ``weight_``: (d_source, d_target) float64
    - ``source_mean_``: (d_source,), ``target_mean_``: (d_target,) (zeros without centring)
    - ``n_features_in_``, ``n_features_out_``: d_source, d_target
    - ``fit_info_``: dict of fit statistics (pairs, identities, residual, ...)
    """

    #: The class's kind (``kinds.DIRECT``'s key); never set on an instance.
    kind: ClassVar[str] = ""
    #: What the map is served as when not its class's kind (``"tuned"``: chosen per pair).
    label: str | None = None
    #: How Compare scores this map's output against the target's templates (None: cosine).
    scoring_: ScoreSpace | None = None

    @property
    def served_as(self) -> str:
        """The kind a catalog and a map id name: the label if any, else the class's kind."""
        return self.label or self.kind

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # No sklearn set_output wrapping of transform, here or in subclasses: pandas output
        # has no use for embeddings, and the wrapper costs about 10 us a call on a hot path.
        super().__init_subclass__(auto_wrap_output_keys=None, **kwargs)

    def __init__(
        self,
        *,
        center: bool = True,
        normalize_input: bool = True,
        normalize_output: bool = True,
        source_id: str | None = None,
        target_id: str | None = None,
    ) -> None:
        self.center = center
        self.normalize_input = normalize_input
        self.normalize_output = normalize_output
        self.source_id = source_id
        self.target_id = target_id

    # -- fitting -------------------------------------------------------------------------
    def fit(self, X: Any, Y: Any, groups: Any = None) -> EmbeddingMap:
        """Fit on paired embeddings.

        X: (n, d_source) embeddings of n face images by the source model.
        Y: (n, d_target) embeddings of the same n images, row for row, by the target model.
        groups: optional (n,) identity labels, used for identity-disjoint cross-validation
        and reported in ``fit_info_``.
        """
        X, Y = check_pairs(X, Y, min_pairs=self._min_pairs())
        if groups is not None:
            groups = np.asarray(groups)
            if groups.shape != (X.shape[0],):
                raise FitError(f"groups must have shape ({X.shape[0]},), got {groups.shape}")
        Xc, Yc = self._prepare_fit(X, Y)
        self.n_features_in_ = X.shape[1]
        self.n_features_out_ = Y.shape[1]
        info = self._fit_centered(Xc, Yc, groups)
        residual = self._predict_centered(Xc) - Yc
        info = {
            "n_pairs": int(X.shape[0]),
            "n_identities": int(np.unique(groups).size) if groups is not None else None,
            "relative_residual": float((residual**2).sum() / max((Yc**2).sum(), 1e-300)),
            **info,
        }
        self.fit_info_ = info
        self._set_bias()
        return self

    def _min_pairs(self) -> int:
        return 2

    def _prepare_fit(self, X: np.ndarray, Y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        X = X.astype(np.float64)
        Y = Y.astype(np.float64)
        if self.normalize_input:
            X, Y = l2_normalize(X, copy=False), l2_normalize(Y, copy=False)
        self.source_mean_ = X.mean(axis=0) if self.center else np.zeros(X.shape[1])
        self.target_mean_ = Y.mean(axis=0) if self.center else np.zeros(Y.shape[1])
        return X - self.source_mean_, Y - self.target_mean_

    def _fit_centered(self, Xc: np.ndarray, Yc: np.ndarray, groups: Any) -> dict[str, Any]:
        raise NotImplementedError

    @staticmethod
    def _sum_of_squares(centered: np.ndarray, mean: np.ndarray) -> float:
        return float((centered**2).sum() + centered.shape[0] * (mean**2).sum())

    def _predict_centered(self, Xc: np.ndarray) -> np.ndarray:
        return Xc @ self.weight_

    def _set_bias(self) -> None:
        # Folding the centring into one bias makes transform a single matmul plus an add.
        self.bias_ = self.target_mean_ - self.source_mean_ @ self.weight_
        self._cast: dict[np.dtype, tuple[np.ndarray, np.ndarray]] = {}

    def _params_as(self, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
        """(weight, bias) in ``dtype``, converted once: a service applies a map many times."""
        if dtype not in self._cast:
            self._cast[dtype] = (self.weight_.astype(dtype), self.bias_.astype(dtype))
        return self._cast[dtype]

    def macs_per_row(self) -> int:
        """An upper bound on the multiply-adds one row costs: every parameter array the map
        holds (members, layers, landmarks, scoring statistics) read once per row, as a matrix
        product does. A service admits a call by this before doing any work."""
        return _parameters(vars(self))

    # -- applying ------------------------------------------------------------------------
    def transform(self, X: Any) -> np.ndarray:
        """Map (n, d_source) source embeddings to (n, d_target) target-space embeddings.

        The output has X's float dtype (float32 in, float32 out). Large inputs go in row
        blocks, which bounds the temporaries.
        """
        if not hasattr(self, "bias_"):  # sklearn's check_is_fitted is slow on a hot path
            check_is_fitted(self, "weight_")
        X = check_embeddings(X, name="X", dim=self.n_features_in_, finite=False)
        if X.shape[0] == 1:  # batch 1, a service's commonest call
            done = self._apply_row(X, *self._params_as(X.dtype))
            if done is not None:
                return done
        if X.shape[0] <= _BLOCK:  # a service's usual request: no block loop
            return self._apply(X, np.empty((X.shape[0], self.n_features_out_), X.dtype))
        out = np.empty((X.shape[0], self.n_features_out_), X.dtype)
        for start in range(0, X.shape[0], _BLOCK):
            try:
                self._apply(X[start : start + _BLOCK], out[start : start + _BLOCK])
            except EmbeddingError:
                check_finite(X, "X")  # raises with the row numbers of the whole input
                raise
        return out

    def _apply(self, x: np.ndarray, out: np.ndarray) -> np.ndarray:
        """The map on one block, written into ``out``: as few numpy calls as the options
        allow, since for small requests each call's overhead outweighs its arithmetic."""
        W, bias = self._params_as(x.dtype)
        # The input's squared norms double as the NaN/Inf check (NaN and Inf propagate).
        norms = np.einsum("ij,ij->i", x, x)
        if not math.isfinite(norms.sum()):
            check_finite(x, "X")  # raises with the row numbers
            if not self.normalize_input:
                raise EmbeddingError("X has values too large for this map; rescale the input")
            x = x.copy()  # the caller's rows, scaled down: only their direction is used
            norms = rescale_huge_rows(x, norms)
        np.matmul(x, W, out=out)
        if not self.normalize_input:
            out += bias
        else:
            # xW/|x| + b = (xW + |x|b)/|x|. Written this way a zero row (no face) stays zero,
            # and when the output is normalised the division by |x| is not needed at all.
            out += np.sqrt(norms, out=norms)[:, None] * bias
            if not self.normalize_output:
                out *= inverse_norms(norms * norms)[:, None]  # 0 for rows below MIN_NORM
        if self.normalize_output:
            out *= inverse_norms(np.einsum("ij,ij->i", out, out))[:, None]
        return out

    def _apply_row(self, x: np.ndarray, W: np.ndarray, bias: np.ndarray) -> np.ndarray | None:
        """:meth:`_apply` on one (1, d) row, into a new array, with Python floats for its
        norms: a third of the numpy calls, which at one row cost more than the arithmetic.
        None for a row :meth:`_apply` must rescale or refuse (NaN, Inf, or a norm that
        overflows)."""
        squared = float(np.vdot(x, x))
        if not math.isfinite(squared):
            return None
        out = x @ W
        if not self.normalize_input:
            out += bias
        else:
            norm = math.sqrt(squared)
            out += norm * bias
            if not self.normalize_output:
                out *= inverse_norm(norm)
        if self.normalize_output:
            out *= inverse_norm(math.sqrt(float(np.vdot(out, out))))
        return out

    def _inverse_weight(self) -> np.ndarray:
        return np.linalg.pinv(self.weight_)

    def inverse_transform(self, Y: Any) -> np.ndarray:
        """Map (n, d_target) embeddings back to the source space (least-squares inverse).

        Exact for rotations without output normalisation; otherwise the best linear
        inverse. Returned vectors are L2-normalised when the map normalises its input.
        """
        check_is_fitted(self, "weight_")
        Y = check_embeddings(Y, name="Y", dim=self.n_features_out_)
        X = (Y - self.target_mean_) @ self._inverse_weight() + self.source_mean_
        X = X.astype(Y.dtype, copy=False)
        return l2_normalize(X, copy=False) if self.normalize_input else X

    # -- scoring, and the residual scale chosen after fitting ------------------------------
    def set_scoring(self, space: ScoreSpace) -> EmbeddingMap:
        """Attach a fitted :class:`ScoreSpace` (recorded in ``fit_info_`` and map files)."""
        self.scoring_ = space
        self.fit_info_ = {**self.fit_info_, "scoring": space.info()}
        return self

    @property
    def score_space(self) -> ScoreSpace:
        """How Compare scores this map's output: the recorded scoring, else a plain cosine."""
        return self.scoring_ or COSINE

    def compare_input(self, X: Any) -> np.ndarray:
        """What Compare scores for A's templates X (n, d_source): the map's output, or X
        itself when the scoring reads A's own templates (``llr``)."""
        return X if self.score_space.reads_source else self.transform(X)

    def score_matrix(self, mapped: np.ndarray, native: np.ndarray) -> np.ndarray:
        """(n, m) scores of ``mapped`` (n, ...), what :meth:`compare_input` gives, against
        native templates (m, d_target)."""
        return self.score_space.matrix(mapped, native)

    def score_rows(self, mapped: np.ndarray, native: np.ndarray) -> np.ndarray:
        """(n,) scores of output row i against native row i, in the space the map records."""
        return self.score_space.rows(mapped, native)

    def rescale_residual(self, X: Any, Y: Any) -> float:
        """Scale the mapped residual (output minus the target mean) so that its median norm
        on pairs (X, Y) matches the target's own; returns the factor.

        A ridge or kernel map shrinks its predictions toward the mean: after adding the
        target mean back, the mean dominates the output's direction and raw cosines between
        mapped and native templates are too alike. Matching the residual's norm undoes that
        in the target's raw space (what Translate returns); centred scorings do not see it.
        """
        X, Y = check_pairs(X, Y)
        Xp, Yp = (l2_normalize(X), l2_normalize(Y)) if self.normalize_input else (X, Y)
        residual = self._predict_centered(Xp - self.source_mean_)
        s = float(np.median(np.linalg.norm(Yp - self.target_mean_, axis=1))) / max(
            float(np.median(np.linalg.norm(residual, axis=1))), MIN_NORM
        )
        self._scale_residual(s)
        self.fit_info_ = {**self.fit_info_, "residual_scale": s}
        return s

    def _scale_residual(self, s: float) -> None:
        self.weight_ = self.weight_ * s
        self._set_bias()

    # -- state for serialisation ---------------------------------------------------------
    def _state_tensors(self) -> dict[str, np.ndarray]:
        tensors = {
            "weight": self.weight_,
            "source_mean": self.source_mean_,
            "target_mean": self.target_mean_,
        }
        return tensors | (self.scoring_.tensors() if self.scoring_ is not None else {})

    def _load_state(self, tensors: dict[str, np.ndarray], fit_info: dict[str, Any]) -> None:
        self.weight_ = tensors["weight"]
        self.source_mean_ = tensors["source_mean"]
        self.target_mean_ = tensors["target_mean"]
        self.n_features_in_, self.n_features_out_ = self.weight_.shape
        self.fit_info_ = fit_info
        if "scoring" in fit_info:
            self.scoring_ = ScoreSpace.from_state(
                fit_info["scoring"], tensors, self.n_features_out_, self.n_features_in_
            )
        self._set_bias()


class NonlinearMap(EmbeddingMap):
    """Base for maps that are not one matrix (kernel, ensemble): ``transform`` evaluates
    :meth:`_predict` on unit rows in blocks of 2,048 rows, which bounds the temporaries
    (a kernel's (rows, support) matrix). A zero input row (no face) maps to a zero row, as
    with the affine maps. There is no inverse."""

    _ROWS = 2048

    def _predict(self, Xn: np.ndarray) -> np.ndarray:
        """The centred prediction for unit rows ``Xn``."""
        return self._predict_centered(Xn - self.source_mean_)

    def transform(self, X: Any) -> np.ndarray:
        """Map (n, d_source) embeddings to (n, d_target) in the target's space (X's dtype)."""
        check_is_fitted(self)
        X = check_embeddings(X, name="X", dim=self.n_features_in_)
        out = np.empty((X.shape[0], self.n_features_out_), X.dtype)
        for start in range(0, X.shape[0], self._ROWS):
            x = X[start : start + self._ROWS]
            unit = l2_normalize(x.astype(np.float64), copy=False)
            y = self._predict(unit) + self.target_mean_
            y[~unit.any(axis=1)] = 0  # no direction in, none out (see validation.MIN_NORM)
            out[start : start + self._ROWS] = l2_normalize(y, copy=False) if self.normalize_output else y
        return out

    def inverse_transform(self, Y: Any) -> np.ndarray:
        raise NotImplementedError(f"a {self.kind} map has no inverse; fit a map in the other direction")

    def _state_tensors(self) -> dict[str, np.ndarray]:
        # weight_ is derived from the map's own tensors: files do not repeat it.
        tensors = super()._state_tensors()
        del tensors["weight"]
        return tensors

    def _load_state(self, tensors: dict[str, np.ndarray], fit_info: dict[str, Any]) -> None:
        # The derived linear term does not take part in transform: float32 halves the
        # memory it takes in a server that holds many maps.
        super()._load_state({**tensors, "weight": tensors["weight"].astype(np.float32)}, fit_info)


class LinearMap(EmbeddingMap):
    """Ridge-regression map (the papers' linear map); d_source may differ from d_target.

    Minimises ``||Xc W - Yc||^2 + alpha ||W - P||^2`` on centred, normalised pairs; with
    centring this is ridge regression with an unpenalised bias. ``alpha=None`` chooses
    alpha from ``alphas`` by k-fold cross-validation (identity-disjoint when ``groups`` are
    given to :meth:`fit`); ``alpha=0`` is plain least squares and needs full-rank input.

    The prior ``P`` is zero (the papers' ridge) or, with ``towards="rotation"``, the
    Procrustes rotation with one scale fitted on the same pairs: ridge on what the rotation
    leaves unexplained, which keeps the rotation's scale where the pairs are noisy (pairs
    of two photos of one person, ``mapper-train --pairing identity``). In cross-validation
    each fold's rotation is fitted on its training rows only.

    Extra fitted attributes: ``alpha_`` and, with cross-validation, ``cv_mse_`` (mean
    validation squared error per alpha in ``alphas``).
    """

    kind = "linear"

    def __init__(
        self,
        *,
        alpha: float | None = None,
        alphas: tuple[float, ...] = DEFAULT_ALPHAS,
        cv: int = 5,
        random_state: int = 0,
        towards: str | None = None,
        center: bool = True,
        normalize_input: bool = True,
        normalize_output: bool = True,
        source_id: str | None = None,
        target_id: str | None = None,
    ) -> None:
        super().__init__(
            center=center,
            normalize_input=normalize_input,
            normalize_output=normalize_output,
            source_id=source_id,
            target_id=target_id,
        )
        self.alpha = alpha
        self.alphas = alphas
        self.cv = cv
        self.random_state = random_state
        self.towards = towards

    def _min_pairs(self) -> int:
        return 2 * self.cv if self.alpha is None else 2

    def _prior(self, Xc: np.ndarray, Yc: np.ndarray) -> np.ndarray | None:
        """The weight the penalty pulls towards, fitted on these rows (None: zero)."""
        if self.towards is None:
            return None
        if self.towards != "rotation":
            raise FitError(f"towards must be None or 'rotation', got {self.towards!r}")
        rotation, scale, _ = procrustes(Xc, Yc)
        return rotation * scale

    def _fit_centered(self, Xc: np.ndarray, Yc: np.ndarray, groups: Any) -> dict[str, Any]:
        gram = Xc.T @ Xc
        eig = np.linalg.eigvalsh(gram)
        rank = _rank(eig, Xc.shape, self._sum_of_squares(Xc, self.source_mean_))
        if rank == 0:
            raise FitError("source embeddings are constant: nothing to fit a map from")
        prior = self._prior(Xc, Yc)
        cross = Xc.T @ (Yc if prior is None else Yc - Xc @ prior)
        if self.alpha is None:
            self.cv_mse_ = self._cv_errors(Xc, Yc, gram, cross, groups)
            alpha = float(np.asarray(self.alphas)[int(np.argmin(self.cv_mse_))])
        else:
            alpha = float(self.alpha)
            if alpha < 0:
                raise FitError(f"alpha must be >= 0, got {alpha}")
            if alpha == 0 and rank < Xc.shape[1]:
                raise FitError(
                    f"source embeddings have rank {rank} < {Xc.shape[1]} dimensions "
                    f"({Xc.shape[0]} pairs): least squares is not unique; use alpha > 0 "
                    "(ridge) or more pairs"
                )
        self.alpha_ = alpha
        self.weight_ = np.linalg.solve(gram + alpha * np.eye(gram.shape[0]), cross)
        if prior is not None:
            self.weight_ += prior
        return {
            "alpha": alpha,
            "source_rank": rank,
            "cv_folds": self.cv if self.alpha is None else None,
            **({"towards": self.towards} if prior is not None else {}),
        }

    def _cv_errors(
        self, Xc: np.ndarray, Yc: np.ndarray, gram: np.ndarray, cross: np.ndarray, groups: Any
    ) -> np.ndarray:
        """Validation MSE per alpha (:func:`ridge_cv_errors` over this map's folds); with a
        prior, each fold's is fitted on its training rows and its residual cross-validated."""
        if groups is not None:
            n_groups = np.unique(groups).size
            if n_groups < self.cv:
                raise FitError(f"{n_groups} identities cannot make {self.cv} CV folds")
            splits = GroupKFold(n_splits=self.cv).split(Xc, groups=groups)
        else:
            splits = KFold(self.cv, shuffle=True, random_state=self.random_state).split(Xc)
        if self.towards is None:
            return ridge_cv_errors(Xc, Yc, gram, cross, splits, self.alphas)[0] / Xc.shape[0]
        total = np.zeros(len(self.alphas))
        for train, val in splits:
            residual = Yc - Xc @ self._prior(Xc[train], Yc[train])
            total += ridge_cv_errors(Xc, residual, gram, Xc.T @ residual, [(train, val)], self.alphas)[0]
        return total / Xc.shape[0]


def ridge_cv_errors(
    Xc: np.ndarray,
    Yc: np.ndarray,
    gram: np.ndarray,
    cross: np.ndarray,
    splits: Iterable[tuple[np.ndarray, np.ndarray]],
    alphas: Sequence[float],
    column_groups: Sequence[slice] | None = None,
) -> np.ndarray:
    """Summed validation squared error of ridge (centred ``Xc`` (n, d) -> ``Yc`` (n, p), with
    ``gram = Xc^T Xc`` and ``cross = Xc^T Yc``) per alpha over ``splits`` (train, validation
    index pairs), as (groups, alphas): one row per slice of ``Yc``'s columns in
    ``column_groups`` (default: all columns), so that each group can take its own alpha.

    One eigendecomposition per fold: with ``V, s = eigh(G_train)``, ``P = X_val V`` and
    ``Q = V^T C_train``, the fold's prediction is ``P diag(1/(s+a)) Q`` and its squared error
    expands to ``|Y_val|^2 - 2 sum_i D_i a_i + D^T H D`` with ``a_i = sum_j (V^T C_val)_ij
    Q_ij`` and ``H = (V^T G_val V) * (Q Q^T)``: every alpha then costs O(d^2), and all folds
    together cost about one Gram matrix.
    """
    column_groups = [slice(None)] if column_groups is None else list(column_groups)
    alphas = np.asarray(alphas, dtype=np.float64)
    total = np.zeros((len(column_groups), alphas.size))
    for _, val in splits:
        Xv, Yv = Xc[val], Yc[val]
        g_val, c_val = Xv.T @ Xv, Xv.T @ Yv
        s, V = np.linalg.eigh(gram - g_val)
        s = np.clip(s, 0, None)
        Q, VtC = V.T @ (cross - c_val), V.T @ c_val
        G = V.T @ g_val @ V
        D = 1.0 / (s[None, :] + alphas[:, None])  # (n_alphas, d)
        for k, cols in enumerate(column_groups):
            a = np.einsum("ij,ij->i", VtC[:, cols], Q[:, cols])
            H = G * (Q[:, cols] @ Q[:, cols].T)
            total[k] += (Yv[:, cols] ** 2).sum() - 2 * D @ a + np.einsum("ai,ij,aj->a", D, H, D)
    return total


class RotationMap(EmbeddingMap):
    """Orthogonal Procrustes map, optionally with one isotropic scale.

    For d_source != d_target the weight is semi-orthogonal (orthonormal rows or columns),
    which is Procrustes on the zero-padded smaller space. ``scale=True`` fits the scale
    that best matches centred norms; it matters when centring, because the target mean is
    added back after the rotation.
    """

    kind = "rotation"

    def __init__(
        self,
        *,
        scale: bool = True,
        center: bool = True,
        normalize_input: bool = True,
        normalize_output: bool = True,
        source_id: str | None = None,
        target_id: str | None = None,
    ) -> None:
        super().__init__(
            center=center,
            normalize_input=normalize_input,
            normalize_output=normalize_output,
            source_id=source_id,
            target_id=target_id,
        )
        self.scale = scale

    def _fit_centered(self, Xc: np.ndarray, Yc: np.ndarray, groups: Any) -> dict[str, Any]:
        rotation, scale, S = procrustes(Xc, Yc, self.scale)
        reference = np.sqrt(
            self._sum_of_squares(Xc, self.source_mean_) * self._sum_of_squares(Yc, self.target_mean_)
        )
        rank = _rank(S, (Xc.shape[1], Yc.shape[1]), reference)
        if rank == 0:
            raise FitError("source and target embeddings are uncorrelated or constant")
        if rank < min(Xc.shape[1], Yc.shape[1]):
            warnings.warn(
                f"cross-covariance has rank {rank} < {min(Xc.shape[1], Yc.shape[1])} "
                f"({Xc.shape[0]} pairs): the rotation is not determined outside the "
                "span of the pairs; use more pairs",
                UnderdeterminedWarning,
                stacklevel=3,
            )
        self.rotation_ = rotation
        self.scale_ = scale
        self.weight_ = rotation * scale
        return {"scale": scale, "cross_rank": rank}

    def _inverse_weight(self) -> np.ndarray:
        return self.rotation_.T / self.scale_

    def _scale_residual(self, s: float) -> None:
        self.scale_ *= s
        self.fit_info_ = {**self.fit_info_, "scale": self.scale_}
        super()._scale_residual(s)

    def _load_state(self, tensors: dict[str, np.ndarray], fit_info: dict[str, Any]) -> None:
        super()._load_state(tensors, fit_info)
        self.scale_ = float(fit_info["scale"])
        self.rotation_ = self.weight_ / self.scale_


def procrustes(Xc: np.ndarray, Yc: np.ndarray, scale: bool = True) -> tuple[np.ndarray, float, np.ndarray]:
    """(rotation, scale, singular values) minimising ``|scale * Xc @ rotation - Yc|``.

    ``rotation`` is (d_x, d_y) with orthonormal rows or columns: ``U V^T`` from the SVD of
    ``Xc^T Yc``, which maximises ``tr(R^T Xc^T Yc)`` (Procrustes on the zero-padded space).
    """
    U, S, Vt = np.linalg.svd(Xc.T @ Yc, full_matrices=False)
    s = float(S.sum() / (Xc**2).sum()) if scale else 1.0
    return U @ Vt, s, S


class AffineMap(EmbeddingMap):
    """A map given by its parameters rather than fitted: compositions and hub legs."""

    kind = "affine"

    @classmethod
    def from_params(
        cls,
        weight: np.ndarray,
        source_mean: np.ndarray,
        target_mean: np.ndarray,
        *,
        fit_info: dict[str, Any] | None = None,
        **params: Any,
    ) -> AffineMap:
        m = cls(**params)
        m._load_state(
            {"weight": weight, "source_mean": source_mean, "target_mean": target_mean},
            fit_info or {},
        )
        return m

    def fit(self, X: Any, Y: Any, groups: Any = None) -> AffineMap:
        raise TypeError("AffineMap is built with from_params or compose, not fitted")


def compose(first: EmbeddingMap, second: EmbeddingMap) -> AffineMap:
    """One affine map equal to ``second.transform(first.transform(x))``.

    Needs ``first.normalize_output`` and ``second.normalize_input`` off (the hub's legs are
    built that way), since a normalisation in the middle is not affine.
    """
    if first.normalize_output or second.normalize_input:
        raise InvalidInput("can only compose when the middle space is not normalised")
    if first.n_features_out_ != second.n_features_in_:
        raise InvalidInput(
            f"cannot compose: {first.n_features_out_}-d output into {second.n_features_in_}-d input"
        )
    weight = first.weight_ @ second.weight_
    # (n(x) - m1) W1 + t1 - m2) W2 + t2  ==  (n(x) - m1) W1 W2 + (t1 - m2) W2 + t2
    target_mean = (first.target_mean_ - second.source_mean_) @ second.weight_ + second.target_mean_
    return AffineMap.from_params(
        weight,
        first.source_mean_,
        target_mean,
        center=True,
        normalize_input=first.normalize_input,
        normalize_output=second.normalize_output,
        source_id=first.source_id,
        target_id=second.target_id,
        fit_info={"composed_of": [first.kind, second.kind]},
    )


def _parameters(value: Any) -> int:
    """Elements of every array in ``value`` (nested dicts, lists, maps, scorings)."""
    if isinstance(value, np.ndarray):
        return value.size
    if isinstance(value, dict):
        return sum(_parameters(v) for k, v in value.items() if k != "_cast")  # _cast: copies
    if isinstance(value, list | tuple):
        return sum(_parameters(v) for v in value)
    if isinstance(value, EmbeddingMap | ScoreSpace):
        return _parameters(vars(value))
    return 0
