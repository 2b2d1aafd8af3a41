"""Verification metrics: ROC, TAR at fixed FAR (two conventions), EER, AUC.

Scores are similarities (higher = more likely the same person); a pair is accepted when
its score is >= the threshold. Two conventions for "TAR at FAR f" are offered, and every
printed figure says which one it used:

- ``"strict"`` (default): TAR at the lowest threshold whose FAR does not exceed f.
- ``"ijbc"``: the convention of the widely used IJB-C evaluation scripts: the TPR of the
  point of ``sklearn.metrics.roc_curve(labels, scores)`` whose FPR is nearest f.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mapper.errors import InvalidInput

STANDARD_FARS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
CONVENTIONS = ("strict", "ijbc")


def _split(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores)
    labels = np.asarray(labels).astype(bool)
    if scores.shape != labels.shape or scores.ndim != 1:
        raise InvalidInput(f"scores and labels must be 1-D of one length: {scores.shape} vs {labels.shape}")
    if not np.isfinite(scores).all():
        raise InvalidInput("scores contain NaN or Inf")
    genuine, impostor = scores[labels], scores[~labels]
    if genuine.size == 0 or impostor.size == 0:
        raise InvalidInput("need both genuine (label 1) and impostor (label 0) pairs")
    return genuine, impostor


def _strict_rank(far: float, n_impostor: int) -> int:
    """The ascending rank of the strict threshold's impostor score: with k = floor(far * n)
    false accepts allowed, the (k+1)-th highest; -1 when every impostor may pass."""
    return n_impostor - 1 - int(np.floor(far * n_impostor + 1e-9))


def tar_at_far_strict(genuine: np.ndarray, impostor: np.ndarray, far: float) -> tuple[float, float, float]:
    """(TAR, achieved FAR, threshold) at the lowest threshold with FAR <= ``far``.

    With k = floor(far * n_impostor) false accepts allowed and s the (k+1)-th highest
    impostor score, every threshold <= s accepts k+1 impostors, and every threshold just
    above s is allowed: TAR = P(genuine > s). One partition, O(n), no sort.
    """
    n_imp = impostor.size
    at = _strict_rank(far, n_imp)
    if at < 0:
        return 1.0, 1.0, -np.inf
    s = np.partition(impostor, at)[at]
    return float((genuine > s).mean()), float((impostor > s).sum() / n_imp), float(np.nextafter(s, np.inf))


def _sorted_tar(g: np.ndarray, s: np.ndarray, far: float) -> float:
    """:func:`tar_at_far_strict`'s TAR from ascending-sorted genuine ``g`` and impostor ``s``."""
    at = _strict_rank(far, s.size)
    if at < 0:
        return 1.0
    return float((g.size - np.searchsorted(g, s[at], side="right")) / g.size)


def _sorted_auc(g: np.ndarray, s: np.ndarray) -> float:
    """P(genuine > impostor) + P(equal) / 2, the area under the ROC (sklearn's value)."""
    below = np.searchsorted(s, g, side="left").astype(np.float64)
    ties = np.searchsorted(s, g, side="right") - below
    return float((below + ties / 2).sum() / (g.size * s.size))


def _sorted_eer(g: np.ndarray, s: np.ndarray) -> float:
    """(FAR + FRR) / 2 at the score threshold where |FAR - FRR| is smallest.

    FAR(t) = P(impostor >= t) falls and FRR(t) = P(genuine < t) rises with t, so the
    crossing is found by binary search over each sorted score list; candidates around it
    from both lists are then compared exactly.
    """

    def rates(t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        far = (s.size - np.searchsorted(s, t, side="left")) / s.size
        frr = np.searchsorted(g, t, side="left") / g.size
        return far, frr

    candidates = []
    for values in (s, g):
        lo, hi = 0, values.size - 1
        while lo < hi:  # first index where FAR <= FRR
            mid = (lo + hi) // 2
            far, frr = rates(values[mid : mid + 1])
            if far[0] <= frr[0]:
                hi = mid
            else:
                lo = mid + 1
        candidates.append(values[max(lo - 2, 0) : lo + 3])
    t = np.concatenate(candidates)
    far, frr = rates(t)
    best = int(np.argmin(np.abs(far - frr)))
    return float((far[best] + frr[best]) / 2)


def roc(scores: np.ndarray, labels: np.ndarray, drop_intermediate: bool = True) -> tuple[np.ndarray, ...]:
    """(fpr, tpr, thresholds) exactly as ``sklearn.metrics.roc_curve`` returns them.

    Sorts the scores once; ties share one ROC point, so the order within a tie does not
    matter and the faster unstable sort is used.
    """
    scores = np.asarray(scores)
    labels = np.asarray(labels).astype(bool)
    order = np.argsort(scores)[::-1]
    s = scores[order]
    y = labels[order]
    distinct = np.flatnonzero(np.diff(s)) if s.size > 1 else np.zeros(0, np.int64)
    last = np.r_[distinct, s.size - 1]
    tps = np.cumsum(y, dtype=np.int64)[last]
    fps = last + 1 - tps
    thresholds = s[last].astype(np.float64)
    if drop_intermediate and fps.size > 2:
        keep = np.flatnonzero(np.r_[True, np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), True])
        fps, tps, thresholds = fps[keep], tps[keep], thresholds[keep]
    fps = np.r_[0, fps]
    tps = np.r_[0, tps]
    thresholds = np.r_[np.inf, thresholds]
    return fps / fps[-1], tps / tps[-1], thresholds


def tar_at_far_ijbc(fpr: np.ndarray, tpr: np.ndarray, far: float) -> float:
    """TPR at the ROC point whose FPR is nearest ``far`` (first such point on ties)."""
    return float(tpr[int(np.argmin(np.abs(fpr - far)))])


@dataclass(frozen=True)
class Verification:
    """Summary of one verification experiment."""

    tar: dict[float, float]
    convention: str
    eer: float
    auc: float
    n_genuine: int
    n_impostor: int
    curve: np.ndarray | None = None  # strict TAR at each of ``curve_fars``, for ROC plots

    def tar_label(self, far: float) -> str:
        return f"TAR@FAR={far:g} ({self.convention})"


def evaluate(
    scores: np.ndarray,
    labels: np.ndarray,
    fars: tuple[float, ...] = STANDARD_FARS,
    convention: str = "strict",
    curve_fars: np.ndarray | None = None,
) -> Verification:
    """TAR at each FAR in ``fars`` (by ``convention``), EER and AUC for one score set, and
    with ``curve_fars`` the strict TAR at each of them (from the same sorted scores).

    FARs finer than 1 / n_impostor cannot be measured and are reported as NaN.
    """
    if convention not in CONVENTIONS:
        raise InvalidInput(f"convention must be one of {CONVENTIONS}, got {convention!r}")
    genuine, impostor = _split(scores, labels)
    g, s = np.sort(genuine), np.sort(impostor)
    if convention == "ijbc":
        both = np.r_[genuine, impostor]
        fpr, tpr, _ = roc(both, np.r_[np.ones(genuine.size, bool), np.zeros(impostor.size, bool)])
    tar = {}
    for far in fars:
        if far * impostor.size < 1:
            tar[far] = float("nan")
        elif convention == "strict":
            tar[far] = _sorted_tar(g, s, far)
        else:
            tar[far] = tar_at_far_ijbc(fpr, tpr, far)
    return Verification(
        tar=tar,
        convention=convention,
        eer=_sorted_eer(g, s),
        auc=_sorted_auc(g, s),
        n_genuine=int(genuine.size),
        n_impostor=int(impostor.size),
        curve=None
        if curve_fars is None
        else np.array([_sorted_tar(g, s, f) if f * s.size >= 1 else np.nan for f in curve_fars]),
    )
