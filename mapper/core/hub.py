"""A canonical hub space shared by K face models: K map pairs instead of K(K-1) maps."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from mapper.core.maps import AffineMap, LinearMap, compose, procrustes
from mapper.core.validation import EmbeddingError, FitError, check_embeddings, l2_normalize
from mapper.errors import InvalidInput, UnknownModelError

HUB_LEGS = ("rotation", "linear")


class CanonicalSpace(BaseEstimator):
    """Hub space fitted jointly over K >= 2 models by generalised Procrustes analysis.

    The consensus ``Z`` (n, dim) is found by alternating: rotate (and scale) each model's
    centred, normalised embeddings onto ``Z``, then set ``Z`` to their mean. Each model then
    gets two legs: ``forward`` (model -> hub) and ``backward`` (hub -> model). With
    ``legs="rotation"`` they are the Procrustes rotations and their exact inverses; with
    ``legs="linear"`` they are ridge regressions onto and out of the consensus (the linear
    least-squares variant). A -> B is ``backward[B] o forward[A]``, one affine map.

    Fitted attributes: ``models_`` (names in order), ``dim_``, ``legs_`` ({name: (forward,
    backward)} as :class:`AffineMap`), ``n_iter_``, ``fit_info_``.
    """

    def __init__(
        self,
        *,
        legs: str = "rotation",
        dim: int | None = None,
        alpha: float | None = None,
        max_iter: int = 500,
        tol: float = 1e-7,
        center: bool = True,
        normalize_input: bool = True,
        normalize_output: bool = True,
        name: str = "hub",
    ) -> None:
        self.legs = legs
        self.dim = dim
        self.alpha = alpha
        self.max_iter = max_iter
        self.tol = tol
        self.center = center
        self.normalize_input = normalize_input
        self.normalize_output = normalize_output
        self.name = name

    def _prepare(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        X = X.astype(np.float64)
        if self.normalize_input:
            X = l2_normalize(X, copy=False)
        mean = X.mean(axis=0) if self.center else np.zeros(X.shape[1])
        return X - mean, mean

    def fit(self, embeddings: Mapping[str, Any], groups: Any = None) -> CanonicalSpace:
        """Fit on {model name: (n, d_model) embeddings}, row i being the same image in all."""
        if self.legs not in HUB_LEGS:
            raise InvalidInput(f"legs must be one of {HUB_LEGS}, got {self.legs!r}")
        if len(embeddings) < 2:
            raise FitError(f"a hub needs at least 2 models, got {len(embeddings)}")
        arrays = {m: check_embeddings(x, name=f"embeddings[{m!r}]") for m, x in embeddings.items()}
        counts = {m: x.shape[0] for m, x in arrays.items()}
        if len(set(counts.values())) != 1:
            raise EmbeddingError(f"all models must embed the same images row for row: {counts}")
        n = next(iter(counts.values()))
        if n < 2:
            raise FitError(f"need at least 2 images to fit a hub, got {n}")
        prepared = {m: self._prepare(x) for m, x in arrays.items()}
        dim = self.dim or max(x.shape[1] for x in arrays.values())

        # Start from the widest model, zero-padded to the hub dimension, at unit RMS row norm.
        widest = max(prepared, key=lambda m: prepared[m][0].shape[1])
        Z = np.zeros((n, dim))
        start = prepared[widest][0][:, :dim]
        Z[:, : start.shape[1]] = start
        Z *= np.sqrt(n) / np.linalg.norm(Z)
        fits: dict[str, tuple[np.ndarray, float]] = {}  # model -> (rotation, scale) onto Z
        change, it = np.inf, 0
        while it < self.max_iter and change >= self.tol:
            it += 1
            Z_new = np.zeros_like(Z)
            for m, (xc, _) in prepared.items():
                rotation, scale, _ = procrustes(xc, Z)
                fits[m] = rotation, scale
                Z_new += (xc @ rotation) * scale
            Z_new *= np.sqrt(n) / np.linalg.norm(Z_new)
            change = float(np.linalg.norm(Z_new - Z) / np.sqrt(n))
            Z = Z_new
        self.n_iter_ = it
        self.dim_ = dim
        self.models_ = list(prepared)
        self.legs_ = {m: self._legs(m, xc, mean, Z, fits[m], groups) for m, (xc, mean) in prepared.items()}
        self.fit_info_ = {
            "n_pairs": n,
            "n_identities": int(np.unique(groups).size) if groups is not None else None,
            "n_iter": it,
            "final_change": change,
            "consensus_residual": {m: self.legs_[m][0].fit_info_["relative_residual"] for m in self.models_},
        }
        return self

    def _legs(
        self,
        model: str,
        xc: np.ndarray,
        mean: np.ndarray,
        Z: np.ndarray,
        fit: tuple[np.ndarray, float] | None,
        groups: Any,
    ) -> tuple[AffineMap, AffineMap]:
        """Forward and backward legs of one model; ``fit`` is its (rotation, scale) onto Z
        when the caller has it."""
        if self.legs == "rotation":
            rotation, scale = fit if fit is not None else procrustes(xc, Z)[:2]
            weight = rotation * scale
            residual = float(((xc @ weight - Z) ** 2).sum() / (Z**2).sum())
            fwd_weight, back_weight = weight, rotation.T / scale
            fwd_info = {"scale": scale, "relative_residual": residual}
            back_info = {"scale": 1 / scale, "relative_residual": residual}
        else:
            to_hub = _raw_linear(self.alpha).fit(xc, Z, groups)
            back = _raw_linear(self.alpha).fit(Z, xc, groups)
            fwd_weight, back_weight = to_hub.weight_, back.weight_
            fwd_info, back_info = to_hub.fit_info_, back.fit_info_
        zeros = np.zeros(Z.shape[1])
        forward = AffineMap.from_params(
            fwd_weight,
            mean,
            zeros,
            fit_info=fwd_info,
            center=self.center,
            normalize_input=self.normalize_input,
            normalize_output=False,
            source_id=model,
            target_id=self.name,
        )
        backward = AffineMap.from_params(
            back_weight,
            zeros,
            mean,
            fit_info=back_info,
            center=self.center,
            normalize_input=False,
            normalize_output=self.normalize_output,
            source_id=self.name,
            target_id=model,
        )
        return forward, backward

    def add_model(
        self, model: str, X: Any, references: Mapping[str, Any], groups: Any = None
    ) -> CanonicalSpace:
        """Join a new model without refitting the others.

        X: (n, d_new) embeddings by the new model; references: {existing model: (n, d) its
        embeddings of the same n images}. Their hub coordinates (mean over the references)
        are the target of the new model's legs; every existing leg stays as it was.
        """
        check_is_fitted(self, "legs_")
        if model in self.legs_:
            raise InvalidInput(f"model {model!r} is already in the hub")
        if not references:
            raise FitError("add_model needs embeddings of the same images by at least one hub model")
        unknown = sorted(set(references) - set(self.legs_))
        if unknown:
            raise UnknownModelError(f"unknown reference model(s) {unknown}; the hub has {self.models_}")
        X = check_embeddings(X, name="X")
        Z = np.mean(
            [self.legs_[r][0].transform(np.asarray(x, dtype=np.float64)) for r, x in references.items()],
            axis=0,
        )
        if Z.shape[0] != X.shape[0]:
            raise EmbeddingError(f"X has {X.shape[0]} rows, references have {Z.shape[0]}")
        xc, mean = self._prepare(X)
        self.legs_[model] = self._legs(model, xc, mean, Z, None, groups)
        self.models_.append(model)
        return self

    def mapping(self, source: str, target: str) -> AffineMap:
        """The composed map source -> hub -> target as one affine map."""
        check_is_fitted(self, "legs_")
        for m in (source, target):
            if m not in self.legs_:
                raise UnknownModelError(f"model {m!r} is not in hub {self.name!r}; it has {self.models_}")
        composed = compose(self.legs_[source][0], self.legs_[target][1])
        composed.fit_info_ = {"hub": self.name, "hub_legs": self.legs}
        return composed

    def translate(self, X: Any, source: str, target: str) -> np.ndarray:
        """Map (n, d_source) embeddings of ``source`` into ``target``'s space via the hub."""
        return self.mapping(source, target).transform(X)

    def to_hub(self, X: Any, model: str) -> np.ndarray:
        """(n, d_model) embeddings as L2-normalised (n, dim_) hub coordinates."""
        check_is_fitted(self, "legs_")
        if model not in self.legs_:
            raise UnknownModelError(f"model {model!r} is not in hub {self.name!r}; it has {self.models_}")
        return l2_normalize(self.legs_[model][0].transform(X), copy=False)


def _raw_linear(alpha: float | None) -> LinearMap:
    return LinearMap(alpha=alpha, center=False, normalize_input=False, normalize_output=False)
