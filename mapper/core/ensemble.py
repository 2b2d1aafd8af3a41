"""An ensemble of maps: the mean of their centred predictions.

Measured on LFW (docs/results/low-far.md): ridge, rotation and the polynomial
kernel err in different directions, and their mean beats each of them at FAR 1e-4 and
with few fitting pairs. The members share one centring (all normalise and centre their
inputs the same way), so the ensemble is again ``target_mean + prediction``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mapper.core.kernel import KernelMap
from mapper.core.maps import EmbeddingMap, LinearMap, NonlinearMap, RotationMap
from mapper.core.validation import FitError

#: The classes a member may be (by kind): maps whose state is plain arrays.
MEMBER_CLASSES: dict[str, type[EmbeddingMap]] = {c.kind: c for c in (LinearMap, RotationMap, KernelMap)}


class EnsembleMap(NonlinearMap):
    """``y = mean_t + mean_i(s_i * p_i(n(x) - mean_s))`` over fitted ``members``.

    ``members`` names kinds of :data:`MEMBER_CLASSES` (default ridge with its CV penalty,
    rotation and the d3/a3 kernel), each with its default settings. Each is fitted on the
    same pairs and its residual rescaled to the target's (:meth:`rescale_residual`), so each
    counts alike. Fitted attributes besides the base class's: ``members_`` (the fitted
    maps); ``weight_`` is the mean of their linear terms (its shape is the map's shape).
    """

    kind = "ensemble"

    def __init__(
        self,
        members: tuple[str, ...] = ("linear", "rotation", "kernel"),
        *,
        normalize_output: bool = True,
        source_id: str | None = None,
        target_id: str | None = None,
    ) -> None:
        super().__init__(normalize_output=normalize_output, source_id=source_id, target_id=target_id)
        self.members = members

    def _members(self) -> list[EmbeddingMap]:
        unknown = [k for k in self.members if k not in MEMBER_CLASSES]
        if unknown or not self.members:
            raise FitError(f"ensemble members must be some of {sorted(MEMBER_CLASSES)}, got {self.members!r}")
        return [MEMBER_CLASSES[k](normalize_output=False) for k in self.members]

    def _min_pairs(self) -> int:
        return max(m._min_pairs() for m in self._members())

    def _fit_centered(self, Xc: np.ndarray, Yc: np.ndarray, groups: Any) -> dict[str, Any]:
        X, Y = Xc + self.source_mean_, Yc + self.target_mean_  # the unit rows the members see
        self.members_ = []
        for m in self._members():
            m.fit(X, Y, groups=groups).rescale_residual(X, Y)
            self.members_.append(m)
        self.weight_ = np.mean([m.weight_ for m in self.members_], axis=0)
        return {"members": self._member_info()}

    def _member_info(self) -> list[dict[str, Any]]:
        return [m.fit_info_ | {"kind": m.kind} for m in self.members_]

    def _predict_centered(self, Xc: np.ndarray) -> np.ndarray:
        return np.mean([m._predict_centered(Xc) for m in self.members_], axis=0)

    def _scale_residual(self, s: float) -> None:
        for m in self.members_:
            m._scale_residual(s)
        super()._scale_residual(s)
        self.fit_info_ = {**self.fit_info_, "members": self._member_info()}  # their scales changed

    # -- state for map files: each member's tensors under "member<i>." (weights as float32) --
    def _state_tensors(self) -> dict[str, np.ndarray]:
        tensors = super()._state_tensors()
        for i, m in enumerate(self.members_):
            tensors |= {
                f"member{i}.{k}": v.astype(np.float32) if k == "weight" else v
                for k, v in m._state_tensors().items()
            }
        return tensors

    def _load_state(self, tensors: dict[str, np.ndarray], fit_info: dict[str, Any]) -> None:
        self.members_ = []
        for i, info in enumerate(fit_info["members"]):
            cls = MEMBER_CLASSES.get(info["kind"])
            if cls is None:
                raise ValueError(f"unknown ensemble member kind {info['kind']!r}")
            prefix = f"member{i}."
            own = {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}
            m = cls(normalize_output=False)
            m._load_state(own, info)
            if i and m.weight_.shape != self.members_[0].weight_.shape:
                raise ValueError(f"ensemble member {i} is {m.weight_.shape}, member 0 another shape")
            self.members_.append(m)
        if not self.members_:
            raise ValueError("an ensemble map file without members")
        weight = np.mean([m.weight_ for m in self.members_], axis=0)
        super()._load_state({**tensors, "weight": weight}, fit_info)
