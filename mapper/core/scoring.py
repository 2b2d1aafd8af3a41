"""Where a mapped template is scored against a native one: the space a map file records.

Translate returns templates in the target model's raw space, where a vendor's matcher
takes a plain cosine. Compare may do better, measured on LFW (README, "Translation at low
FAR"): centring both sides on the target's fitted mean removes the large shared component
that mapped templates over- or under-state, and symmetric score normalisation (S-norm)
against cohorts of fitting people corrects each template's own score offset, which is
what decides the impostor tail at FAR 1e-3 and below.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mapper.core.validation import l2_normalize
from mapper.errors import InvalidInput

#: cosine: plain cosine in the target's space; centred: cosine after subtracting the
#: target's fitted mean from both sides; snorm: centred, then S-norm against cohorts.
SCORINGS = ("cosine", "centred", "snorm")
_BLOCK = 4096


class ScoreSpace:
    """How to score (n, d) mapped templates against (n, d) native ones of the target model.

    ``fit(mapped, native, center)``: the fitting images' map outputs and the target's own
    embeddings of the same images, row for row, and the target's fitted mean. For
    ``snorm`` a seeded sample of at most ``cohort_size`` of them is kept as the two cohorts
    (``cohort_mapped_``, ``cohort_native_``, centred and unit rows); a template's score
    statistics are the mean and std of its ``top_k`` highest scores against the other
    side's cohort.
    """

    def __init__(
        self, kind: str = "cosine", *, top_k: int = 300, cohort_size: int = 4000, random_state: int = 0
    ) -> None:
        if kind not in SCORINGS:
            raise InvalidInput(f"scoring must be one of {SCORINGS}, got {kind!r}")
        self.kind = kind
        self.top_k = top_k
        self.cohort_size = cohort_size
        self.random_state = random_state

    def fit(self, mapped: np.ndarray, native: np.ndarray, center: np.ndarray) -> ScoreSpace:
        self.center_ = np.asarray(center, np.float64)
        if self.kind == "snorm":
            n = len(mapped)
            keep = np.arange(n)
            if n > self.cohort_size:
                keep = np.sort(
                    np.random.default_rng(self.random_state).choice(n, self.cohort_size, replace=False)
                )
            self.cohort_mapped_ = self._prepare(mapped[keep])
            self.cohort_native_ = self._prepare(native[keep])
        return self

    def _prepare(self, Z: np.ndarray) -> np.ndarray:
        """Unit rows (templates are directions), then centred and unit again; a zero row
        (no face) stays zero: it matches no one rather than everyone near the mean."""
        Z = l2_normalize(np.asarray(Z, np.float32))
        if self.kind != "cosine":
            null = ~Z.any(axis=1)
            Z = l2_normalize(Z - self.center_.astype(np.float32), copy=False)
            Z[null] = 0
        return Z

    def _stats(self, Z: np.ndarray, cohort: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(mean, std) of each row's ``top_k`` highest scores against ``cohort``, in row
        blocks: a service's 65,536-row request against a 4,000-row cohort stays at 64 MiB."""
        k = min(self.top_k, len(cohort))
        mean = np.empty(len(Z), np.float32)
        std = np.empty(len(Z), np.float32)
        for start in range(0, len(Z), _BLOCK):
            s = Z[start : start + _BLOCK] @ cohort.T
            top = np.partition(s, s.shape[1] - k, axis=1)[:, -k:]
            mean[start : start + _BLOCK] = top.mean(axis=1)
            std[start : start + _BLOCK] = top.std(axis=1)
        return mean, np.maximum(std, 1e-6)

    def _scores(self, mapped: np.ndarray, native: np.ndarray, pairwise: bool) -> np.ndarray:
        P, Q = self._prepare(mapped), self._prepare(native)
        s = P @ Q.T if pairwise else np.einsum("ij,ij->i", P, Q)
        if self.kind == "snorm":
            mp, sp = self._stats(P, self.cohort_native_)
            mq, sq = self._stats(Q, self.cohort_mapped_)
            if pairwise:  # row statistics down the rows, column statistics across the columns
                mp, sp = mp[:, None], sp[:, None]
            s = 0.5 * ((s - mp) / sp + (s - mq) / sq)
        return s.astype(np.float32, copy=False)

    def matrix(self, mapped: np.ndarray, native: np.ndarray) -> np.ndarray:
        """(n_mapped, n_native) float32 scores of every mapped row against every native row."""
        return self._scores(mapped, native, pairwise=True)

    def rows(self, mapped: np.ndarray, native: np.ndarray) -> np.ndarray:
        """(n,) float32 scores of row i of ``mapped`` against row i of ``native``."""
        return self._scores(mapped, native, pairwise=False)

    # -- state for map files ---------------------------------------------------------------
    def tensors(self) -> dict[str, np.ndarray]:
        out = {"score.center": self.center_}
        if self.kind == "snorm":
            out |= {"score.cohort_mapped": self.cohort_mapped_, "score.cohort_native": self.cohort_native_}
        return out

    def info(self) -> dict[str, Any]:
        return {"kind": self.kind, "top_k": self.top_k, "cohort_size": self.cohort_size}

    @classmethod
    def from_state(cls, info: dict[str, Any], tensors: dict[str, np.ndarray], dim: int) -> ScoreSpace:
        """The space a map file stored, for a target of ``dim`` dimensions (ValueError if
        its tensors do not fit)."""
        space = cls(info["kind"], top_k=int(info["top_k"]), cohort_size=int(info["cohort_size"]))
        space.center_ = tensors["score.center"]
        shapes = [space.center_.shape == (dim,)]
        if space.kind == "snorm":
            space.cohort_mapped_ = tensors["score.cohort_mapped"].astype(np.float32)
            space.cohort_native_ = tensors["score.cohort_native"].astype(np.float32)
            shapes += [
                c.ndim == 2 and c.shape[1] == dim and len(c) > 0
                for c in (space.cohort_mapped_, space.cohort_native_)
            ]
        if not all(shapes) or space.top_k < 1:
            raise ValueError(f"scoring tensors do not fit a {dim}-d target space")
        return space


#: A plain cosine: needs nothing fitted; what a map without a recorded scoring uses.
COSINE = ScoreSpace("cosine")
