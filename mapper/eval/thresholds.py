"""Calibrating a map's decision thresholds on people the map was not fitted on.

A threshold read off the scores of the people a map was fitted on is too low for anyone
else: the map fits its own fitting people better than strangers, and on LFW such
thresholds let through 3-13 times the promised false accepts of people never seen
(issue 20). So the thresholds come from out-of-fold scores: the fitting people are split
into identity-disjoint folds, a copy of the map (same class, settings, residual scaling
and scoring) is fitted on the other folds and scores every pair within the held-out one,
and the thresholds are read off all folds' impostor scores together.

A threshold read off a sample of impostor scores keeps its FAR on new people only on
average, and at 1e-4 a calibration sample allows few false accepts (60 among the 600,000
impostor pairs of a quarter of LFW): about half such thresholds let through more. So each
threshold is set where the promised FAR is the upper 95% confidence bound (Clopper-Pearson)
of the sample's false accepts, not their point estimate (:data:`CONFIDENCE`). Chosen on
inner splits of the fitting people of ``mapper-train --full`` (four seeds; a quarter of
LFW's people fitting, another quarter measuring; llr maps of the four default models;
measured / promised FAR at 1e-4, mean and worst of 12 ordered pairs): point estimate
1.02-1.15, worst 1.30-1.46; the 95% bound 0.82-0.93, worst 0.97-1.30. The price: 0.2-0.3
points less TAR at the 1e-3 threshold, 1.0-1.3 at 1e-4.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
from scipy.stats import binom
from sklearn.base import clone
from sklearn.model_selection import GroupKFold

from mapper.core.calibration import Calibration, far_key
from mapper.core.maps import EmbeddingMap
from mapper.core.scoring import COSINE
from mapper.core.twoway import reverse_of, two_way_matrix
from mapper.eval.metrics import STANDARD_FARS, tar_at_far_strict
from mapper.eval.protocols import cross_gallery_pairs
from mapper.eval.selection import attach_scoring
from mapper.eval.templates import compare_scores, pair_scores

#: Identity-disjoint folds of the out-of-fold calibration.
CALIBRATION_FOLDS = 3
#: A threshold's promised FAR is this upper confidence bound of its calibration sample's.
CONFIDENCE = 0.95


def refit_like(
    m: EmbeddingMap,
    X: np.ndarray,
    Y: np.ndarray,
    groups: np.ndarray,
    statistics: tuple[np.ndarray, np.ndarray] | None = None,
) -> EmbeddingMap:
    """A new map of ``m``'s class and settings fitted on (X, Y), rescaled and scored as ``m``
    is; its scoring's statistics from the pairs ``statistics`` (a cohort) if given, else (X, Y)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        copy = clone(m).fit(X, Y, groups=groups)
    if "residual_scale" in m.fit_info_:
        copy.rescale_residual(X, Y)
    if m.scoring_ is not None:
        attach_scoring(copy, m.scoring_.method, *(statistics or (X, Y, groups)))
    return copy


def out_of_fold_scores(
    m: EmbeddingMap,
    x_src: np.ndarray,
    x_dst: np.ndarray,
    ids: np.ndarray,
    folds: int = CALIBRATION_FOLDS,
    statistics: tuple[np.ndarray, np.ndarray] | None = None,
    *,
    reverse: EmbeddingMap | None = None,
    reverse_statistics: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(genuine, impostor) scores of all pairs within each held-out fold, each scored by a
    copy of ``m`` fitted on the other folds (row i's A side mapped against row j's B side,
    i < j, scored as ``m`` records, its statistics from ``statistics`` if given). With
    ``reverse`` (the B -> A map), scored both ways (:mod:`mapper.core.twoway`) by copies
    of both, the reverse copy's statistics from ``reverse_statistics`` (B side first).

    x_src: (n, d_A), x_dst: (n, d_B): n fitting pairs, row i of both of person ids[i]
    (one photo, or two photos of that person).
    """
    genuine, impostor = [], []
    for train, val in GroupKFold(n_splits=folds).split(x_src, groups=ids):
        fold = refit_like(m, x_src[train], x_dst[train], ids[train], statistics)
        a, b = x_src[val], x_dst[val]
        if reverse is None:
            matrix = fold.score_matrix(fold.compare_input(a), b)
        else:
            back = refit_like(reverse, x_dst[train], x_src[train], ids[train], reverse_statistics)
            matrix = two_way_matrix(fold, back, a, b)
        iu = np.triu_indices(len(val), 1)
        scores = matrix[iu]
        same = (ids[val][:, None] == ids[val][None, :])[iu]
        genuine.append(scores[same])
        impostor.append(scores[~same])
    return np.concatenate(genuine), np.concatenate(impostor)


def allowed_false_accepts(far: float, n: int, confidence: float = CONFIDENCE) -> int | None:
    """The most false accepts among ``n`` impostor pairs that still show FAR <= ``far`` at
    ``confidence`` (their Clopper-Pearson upper bound is <= ``far``); None when not even
    zero does (fewer than about 3 / ``far`` pairs at 0.95).

    By the bound's duality with the binomial test: the largest c with P(Binomial(n, far)
    <= c) <= 1 - confidence."""
    alpha = 1 - confidence
    c = int(binom.ppf(alpha, n, far))  # the smallest c with P(<= c) >= alpha
    if binom.cdf(c, n, far) > alpha:
        c -= 1
    return c if c >= 0 else None


def thresholds(genuine: np.ndarray, impostor: np.ndarray, confidence: float = CONFIDENCE) -> Calibration:
    """Thresholds at the standard FARs (strict convention) where each FAR is the upper
    ``confidence`` bound of ``impostor``'s false accepts (:func:`allowed_false_accepts`);
    FARs its size cannot bound are left out."""
    out = {}
    for f in STANDARD_FARS:
        allowed = allowed_false_accepts(f, impostor.size, confidence)
        if allowed is not None:
            out[far_key(f)] = tar_at_far_strict(genuine, impostor, allowed / impostor.size)[2]
    return Calibration(out)


def _uses_cohort(m: EmbeddingMap) -> bool:
    return bool((m.fit_info_.get("selection") or {}).get("cohort"))


def calibrate(
    m: EmbeddingMap,
    x_src: np.ndarray,
    x_dst: np.ndarray,
    ids: np.ndarray,
    folds: int = CALIBRATION_FOLDS,
    cohort: np.ndarray | None = None,
    *,
    reverse: EmbeddingMap | None = None,
) -> Calibration:
    """Thresholds for Compare from :func:`out_of_fold_scores` of the fitting pairs
    (x_src: (n, d_A), x_dst: (n, d_B), ids: (n,)); a file records how they were made.
    With ``reverse`` (the B -> A map): thresholds for scoring both ways.

    ``cohort`` ((n,) bool): the rows set aside as S-norm's cohort. When a map's statistics
    came from them (its selection records a cohort), each fold's copy takes its statistics
    from them too, as noisy as the map's own, and they are not scored.
    """
    statistics = reverse_statistics = None
    if cohort is not None and (_uses_cohort(m) or (reverse is not None and _uses_cohort(reverse))):
        if _uses_cohort(m):
            statistics = (x_src[cohort], x_dst[cohort])
        if reverse is not None and _uses_cohort(reverse):
            reverse_statistics = (x_dst[cohort], x_src[cohort])
        x_src, x_dst, ids = x_src[~cohort], x_dst[~cohort], ids[~cohort]
    if np.unique(ids).size < folds:
        return Calibration({})  # too few people to calibrate on anyone unseen: no decisions
    return thresholds(
        *out_of_fold_scores(
            m, x_src, x_dst, ids, folds, statistics, reverse=reverse, reverse_statistics=reverse_statistics
        )
    )


def native_thresholds(
    x: np.ndarray, ids: np.ndarray, *, max_impostors: int = 10_000_000, seed: int = 0
) -> Calibration:
    """A model's own cosine thresholds over the pairs of its (n, d) templates ``x`` of
    people ``ids``: what its vendor's matcher would use on a migrated gallery. Every
    genuine pair; impostor pairs beyond ``max_impostors`` are a seeded sample, so a large
    gallery never builds all n^2 scores."""
    i, j, same = cross_gallery_pairs(ids, max_impostors=max_impostors, rng=np.random.default_rng(seed))
    scores = pair_scores(x, x, i, j, matrix=COSINE.matrix)
    return thresholds(scores[same], scores[~same])


def measured_far(scores: np.ndarray, same: np.ndarray, calibration: Calibration) -> dict[str, float]:
    """{FAR key: the share of impostor pairs (``~same``) whose score is >= that FAR's
    threshold}: what a calibration delivers on the people ``scores`` come from."""
    impostor = scores[~same]
    return {k: float((impostor >= t).mean()) for k, t in calibration.thresholds.items()}


def far_check(
    maps: dict[tuple[str, str, str], EmbeddingMap],
    calibrations: dict[tuple[str, str, str], Calibration],
    native: dict[str, Calibration],
    emb: dict[str, np.ndarray],
    ids: np.ndarray,
    two_way: dict[tuple[str, str, str], Calibration] | None = None,
) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    """Promised against measured FAR on people the maps never saw: all pairs (i < j) of the
    evaluation images ``emb`` ({model: (n, d)}) of people ``ids`` (n,).

    Returns {use: {"A->B": {FAR key: measured FAR}}} for ``"<kind>"`` (Compare: the map's
    scoring at its calibrated thresholds; both ways at ``two_way``'s thresholds where it
    has the pair, as Compare does then, and one way as ``"<kind>:one-way"``),
    ``"<kind>:translate"`` (Translate's output under a plain cosine at B's ``native``
    thresholds) and ``"native"`` (B's own templates at those thresholds: how far the
    people alone move a FAR).
    """
    i, j = np.triu_indices(len(ids), 1)
    same = ids[i] == ids[j]
    galleries = {m: (x, ids) for m, x in emb.items()}
    return _far_check(maps, calibrations, native, two_way or {}, galleries, lambda a, b: (i, j, same))


def gallery_far_check(
    maps: dict[tuple[str, str, str], EmbeddingMap],
    calibrations: dict[tuple[str, str, str], Calibration],
    native: dict[str, Calibration],
    galleries: dict[str, tuple[np.ndarray, np.ndarray]],
    two_way: dict[tuple[str, str, str], Calibration] | None = None,
    *,
    max_impostors: int = 10_000_000,
    seed: int = 0,
) -> dict[str, dict[str, dict[str, float]]]:
    """:func:`far_check` on galleries of different photos ({model: (templates (n_m, d_m),
    persons (n_m,))} of the evaluation people): A -> B scores A templates, mapped, against
    B templates; ``native`` scores pairs within B's gallery; impostor pairs beyond
    ``max_impostors`` are a seeded sample."""
    rng = np.random.default_rng(seed)

    def pairs(a: str, b: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        other = () if a == b else (galleries[b][1],)
        return cross_gallery_pairs(galleries[a][1], *other, max_impostors=max_impostors, rng=rng)

    return _far_check(maps, calibrations, native, two_way or {}, galleries, pairs)


def _far_check(
    maps: dict[tuple[str, str, str], EmbeddingMap],
    calibrations: dict[tuple[str, str, str], Calibration],
    native: dict[str, Calibration],
    two_way: dict[tuple[str, str, str], Calibration],
    galleries: dict[str, tuple[np.ndarray, np.ndarray]],
    pairs: Callable[[str, str], tuple[np.ndarray, np.ndarray, np.ndarray]],
) -> dict[str, dict[str, dict[str, float]]]:
    out: dict[str, dict[str, dict[str, float]]] = {"native": {}}
    for b, cal in native.items():
        x = galleries[b][0]
        i, j, same = pairs(b, b)
        out["native"][b] = measured_far(pair_scores(x, x, i, j, matrix=COSINE.matrix), same, cal)
    for (a, b, kind), m in maps.items():
        if (a, b, kind) not in calibrations:
            continue
        x, y = galleries[a][0], galleries[b][0]
        i, j, same = pairs(a, b)
        pair = f"{a}->{b}"
        one_way = compare_scores(m, x, y, i, j)
        reverse = reverse_of(maps, a, b, kind)
        compare = kind
        if reverse is not None and (a, b, kind) in two_way:
            both = compare_scores(m, x, y, i, j, reverse)
            out.setdefault(kind, {})[pair] = measured_far(both, same, two_way[a, b, kind])
            compare = f"{kind}:one-way"
        out.setdefault(compare, {})[pair] = measured_far(one_way, same, calibrations[a, b, kind])
        if b in native:
            plain = pair_scores(m.transform(x), y, i, j, matrix=COSINE.matrix)
            out.setdefault(f"{kind}:translate", {})[pair] = measured_far(plain, same, native[b])
    return out


def far_table(
    check: dict[str, dict[str, dict[str, float]]], fars: tuple[float, ...] = (1e-2, 1e-3, 1e-4)
) -> str:
    """A markdown table of :func:`far_check`: per use, the mean and the largest ratio of
    measured to promised FAR, at each of ``fars``."""
    head = " | ".join(f"{f:g}: mean / max ratio" for f in fars)
    lines = [f"| use | pairs | {head} |", "|---|---|" + "---|" * len(fars)]
    for use, pairs in check.items():
        cells = []
        for f in fars:
            ratios = [v[far_key(f)] / f for v in pairs.values() if far_key(f) in v]
            cells.append(f"{np.mean(ratios):.2f} / {np.max(ratios):.2f}" if ratios else "-")
        lines.append(f"| {use} | {len(pairs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
