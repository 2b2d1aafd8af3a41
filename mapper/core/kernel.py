"""A non-linear map by kernel ridge regression with a polynomial kernel on synthetic landmarks.

Measured on LFW (docs/results/low-far.md): where a linear map loses most (dlib's
space, either way) a polynomial kernel recovers much of the loss. Exact kernel ridge
regression expands the map over the fitting inputs themselves, so its file would hold
every fitting template; this map expands over ``n_landmarks`` points drawn at random from
a Gaussian with the fitting inputs' mean and (shrunk) covariance (Nystroem kernel ridge
regression). The landmarks are no one's face, and the map's size and cost do not grow
with the number of fitting pairs. A file stores the Gaussian's factor and the seed, and
the landmarks are drawn again when it is loaded.

The coefficients are still weighted sums of the fitting people's target templates, and
with 2,048 of them one row is often closest to some fitting person: a membership attack
on the file told fitting people from unseen ones at ROC AUC 0.59 (``tests/test_privacy.py``).
So the map is fitted on targets with Gaussian noise added (``label_noise`` times each
dimension's spread): every row then also carries noise that no one holds, and the same
attack falls to AUC 0.50-0.55 on four model pairs. Removing it would take the fitting
inputs, not just the seed. Measured on LFW (docs/results/trustworthy-maps.md), on four
model pairs it costs an ensemble up to 0.007 TAR at FAR 1e-3, a kernel map alone up to 0.034.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.linalg
from sklearn.covariance import ledoit_wolf

from mapper.core.maps import NonlinearMap
from mapper.core.validation import FitError, l2_normalize

#: The most coefficients (landmarks x target dimensions) a kernel map holds: 2,048
#: landmarks up to 256-d targets, 1,024 for 512-d, so that a 512 -> 512 tuned ensemble's
#: file stays under 8 MB.
MAX_COEFFICIENTS = 2**19


class KernelMap(NonlinearMap):
    """``y = mean_t + k(n(x), Z) @ coef``, ``k(x, z) = (x . z + 1) ** degree``.

    ``Z`` (m, d_source) are unit rows of ``mean_s + N(0, I) @ factor^T``, drawn with seed
    ``random_state``, where ``factor`` is the Cholesky factor of the fitting inputs'
    Ledoit-Wolf covariance; ``m = min(n_landmarks, MAX_COEFFICIENTS // d_target)``.
    ``coef`` (m, d_target) minimises ``|k(X, Z) coef - (Yc + E)|^2 + alpha coef^T k(Z, Z) coef``
    on the centred targets (kernel ridge regression restricted to the landmarks' span),
    ``E`` Gaussian with ``label_noise`` times each target dimension's standard deviation,
    drawn from another stream of ``random_state``.
    Fitted attributes besides the base class's: ``landmark_factor_``, ``coef_``;
    ``weight_`` is the expansion's linear term ``degree * Z^T coef`` (its shape is the
    map's shape). A zero input row (no face) maps to a zero row. Needs ``normalize_input``
    (the kernel's scale assumes unit rows).
    """

    kind = "kernel"

    def __init__(
        self,
        *,
        degree: int = 3,
        alpha: float = 3.0,
        n_landmarks: int = 2048,
        label_noise: float = 1.0,
        random_state: int = 0,
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
        self.n_landmarks = n_landmarks
        self.label_noise = label_noise
        self.random_state = random_state

    def _kernel(self, X: np.ndarray, Z: np.ndarray) -> np.ndarray:
        K = X @ Z.T
        K += 1
        # Repeated products, not K ** degree: numpy's integer power of a float array calls
        # pow() per element, about 8 times slower (benchmarks/bench_tuning.py).
        out = K.copy() if self.degree > 1 else K
        for _ in range(int(self.degree) - 1):
            out *= K
        return out

    def _landmarks(self, m: int) -> np.ndarray:
        """(m, d_source) unit landmarks from the stored factor and seed: the same rows at
        fitting and after loading (the factor is float32 in both)."""
        factor = self.landmark_factor_.astype(np.float64)
        noise = np.random.default_rng(self.random_state).standard_normal((m, len(factor)))
        return l2_normalize(self.source_mean_ + noise @ factor.T, copy=False)

    def _fit_centered(self, Xc: np.ndarray, Yc: np.ndarray, groups: Any) -> dict[str, Any]:
        if not self.normalize_input:
            raise FitError("KernelMap needs normalize_input=True: its kernel assumes unit-norm inputs")
        if (
            not self.alpha > 0
            or int(self.degree) != self.degree
            or self.degree < 1
            or self.n_landmarks < 1
            or not 0 <= self.label_noise < np.inf
        ):
            raise FitError(
                "need alpha > 0, an integer degree >= 1, n_landmarks >= 1 and a finite label_noise >= 0, "
                f"got {self.alpha}, {self.degree}, {self.n_landmarks}, {self.label_noise}"
            )
        # More landmarks than pairs add cost, not capacity.
        m = max(1, min(int(self.n_landmarks), len(Xc), MAX_COEFFICIENTS // Yc.shape[1]))
        cov, _ = ledoit_wolf(Xc, assume_centered=True)
        self.landmark_factor_ = np.linalg.cholesky(cov + 1e-9 * np.trace(cov) * np.eye(len(cov))).astype(
            np.float32
        )
        Z = self._landmarks(m)
        if self.label_noise:
            noise = np.random.default_rng((self.random_state, 1)).standard_normal(Yc.shape)
            Yc = Yc + noise * (self.label_noise * Yc.std(axis=0))
        Phi = self._kernel(Xc + self.source_mean_, Z)  # the kernel sees the unit rows
        A = Phi.T @ Phi + self.alpha * self._kernel(Z, Z)
        A[np.diag_indices_from(A)] += 1e-9 * np.trace(A) / m
        # float32, as files store it: transform then runs two float32 matrix products
        # (twice as fast as float64), and a fitted map computes what its file will.
        self.coef_ = scipy.linalg.solve(A, Phi.T @ Yc, assume_a="pos", overwrite_a=True).astype(np.float32)
        self._landmarks_ = Z.astype(np.float32)  # what transform uses, fitted or loaded: half the memory
        self.weight_ = self.degree * Z.T @ self.coef_
        return {
            "degree": int(self.degree),
            "alpha": float(self.alpha),
            "n_landmarks": m,
            "label_noise": float(self.label_noise),
        }

    def _predict(self, Xn: np.ndarray) -> np.ndarray:
        """The centred prediction for unit rows ``Xn``, computed in float32 (the kernel's
        values are at most 2 ** degree: float32 keeps them to about 1e-7)."""
        return self._kernel(Xn.astype(np.float32, copy=False), self._landmarks_) @ self.coef_

    def _predict_centered(self, Xc: np.ndarray) -> np.ndarray:
        return self._predict(Xc + self.source_mean_)

    def _scale_residual(self, s: float) -> None:
        self.coef_ = self.coef_ * s
        super()._scale_residual(s)

    def _state_tensors(self) -> dict[str, np.ndarray]:
        return {**super()._state_tensors(), "landmark_factor": self.landmark_factor_, "coef": self.coef_}

    def _load_state(self, tensors: dict[str, np.ndarray], fit_info: dict[str, Any]) -> None:
        self.landmark_factor_ = tensors["landmark_factor"].astype(np.float32)
        self.coef_ = tensors["coef"]
        d_in, m = self.landmark_factor_.shape[0], int(fit_info.get("n_landmarks", -1))
        if self.landmark_factor_.shape != (d_in, d_in) or self.coef_.shape[0] != m:
            raise ValueError(
                f"kernel map tensors disagree: landmark_factor {self.landmark_factor_.shape}, "
                f"coef {self.coef_.shape}, n_landmarks {m}"
            )
        self.source_mean_ = tensors["source_mean"]
        Z = self._landmarks(m)
        self._landmarks_ = Z.astype(np.float32)
        tensors = {**tensors, "weight": self.degree * Z.T @ self.coef_}
        super()._load_state(tensors, fit_info)
