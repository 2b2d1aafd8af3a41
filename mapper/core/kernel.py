"""A non-linear map by kernel ridge regression with a polynomial kernel.

Measured on LFW (README, "Translation at low FAR"): where a linear map loses most (dlib's
space, either way) the polynomial kernel recovers much of the loss, and with ~4,000
fitting pairs its closed-form fit takes seconds. Applying it needs only numpy: the
fitted support rows and dual coefficients are stored as plain arrays.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mapper.core.maps import NonlinearMap
from mapper.core.validation import FitError


class KernelMap(NonlinearMap):
    """``y = mean_t + k(n(x), S) @ coef``, ``k(x, s) = (x . s + 1) ** degree``.

    Fitted on normalised pairs: ``S`` (m, d_source) are the fitting inputs, ``coef``
    (m, d_target) solves ``(K + alpha I) coef = Yc`` for the centred targets. Fitted
    attributes besides the base class's: ``support_``, ``coef_``; ``weight_`` holds the
    expansion's linear term ``degree * S^T coef`` (its shape is the map's shape). A zero
    input row (no face) maps to a zero row, as with the linear maps. Needs
    ``normalize_input`` (the kernel's scale assumes unit rows).
    """

    kind = "kernel"

    def __init__(
        self,
        *,
        degree: int = 3,
        alpha: float = 3.0,
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
        self.degree = degree
        self.alpha = alpha

    def _kernel(self, X: np.ndarray, S: np.ndarray) -> np.ndarray:
        K = X @ S.T
        K += 1
        return K**self.degree

    def _fit_centered(self, Xc: np.ndarray, Yc: np.ndarray, groups: Any) -> dict[str, Any]:
        if not self.normalize_input:
            raise FitError("KernelMap needs normalize_input=True: its kernel assumes unit-norm inputs")
        if self.alpha <= 0 or int(self.degree) != self.degree or self.degree < 1:
            raise FitError(f"need alpha > 0 and an integer degree >= 1, got {self.alpha}, {self.degree}")
        S = Xc + self.source_mean_  # the kernel sees the unit rows, not the centred ones
        K = self._kernel(S, S)
        K[np.diag_indices_from(K)] += self.alpha
        self.support_ = S
        self.coef_ = np.linalg.solve(K, Yc)
        self.weight_ = self.degree * S.T @ self.coef_
        return {"degree": int(self.degree), "alpha": float(self.alpha), "n_support": int(S.shape[0])}

    def _predict(self, Xn: np.ndarray) -> np.ndarray:
        """The centred prediction for unit rows ``Xn``."""
        return self._kernel(Xn, self.support_) @ self.coef_

    def _predict_centered(self, Xc: np.ndarray) -> np.ndarray:
        return self._predict(Xc + self.source_mean_)

    def _scale_residual(self, s: float) -> None:
        self.coef_ = self.coef_ * s
        super()._scale_residual(s)

    def _state_tensors(self) -> dict[str, np.ndarray]:
        return {**super()._state_tensors(), "support": self.support_, "coef": self.coef_}

    def _load_state(self, tensors: dict[str, np.ndarray], fit_info: dict[str, Any]) -> None:
        super()._load_state(tensors, fit_info)
        self.support_, self.coef_ = tensors["support"], tensors["coef"]
        if self.support_.shape[1] != self.n_features_in_ or self.coef_.shape != (
            self.support_.shape[0],
            self.n_features_out_,
        ):
            raise ValueError(
                f"kernel map tensors disagree: support {self.support_.shape}, coef {self.coef_.shape}, "
                f"weight {self.weight_.shape}"
            )
