"""The papers' experiment: every ordered model pair, one side mapped, TAR at fixed FAR.

For models A and B and a template pair (t1, t2): t1's images are embedded by A, mapped
image by image into B's space and pooled; t2 is pooled from B's own embeddings; the score
is their cosine. Kinds: ``none`` (no map: chance, both truncated to the smaller dimension),
``linear``, ``rotation``, ``hub`` (through a canonical space), ``mlp``, ``kernel`` and
``tuned`` (chosen per pair by cross-validation on the fitting people); the diagonal holds
native A/A verification. A kind ``K:compare`` evaluates kind K's maps scored as their map
files record (what Compare does) instead of by a plain cosine (what a matcher does with
Translate's output); tuned maps are scored both ways there, as Compare scores them
(:mod:`mapper.core.twoway`).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tqdm import tqdm

from mapper.core.hub import CanonicalSpace
from mapper.core.kinds import DIRECT
from mapper.core.maps import EmbeddingMap
from mapper.core.twoway import reverse_of
from mapper.core.validation import FitError, l2_normalize
from mapper.eval.metrics import evaluate
from mapper.eval.pairing import Pairs
from mapper.eval.protocols import VerificationProtocol, cross_gallery_pairs
from mapper.eval.selection import select_map
from mapper.eval.templates import compare_scores, pair_scores, pool_templates

SUMMARY_FARS = (1e-2, 1e-3, 1e-4)


class Scored(str):
    """An evaluated kind: ``"tuned"`` scores a kind's maps' output by a plain cosine (what a
    matcher does with Translate's output), ``"tuned:compare"`` as its map files record (what
    Compare does). A ``str``, so it keys reports and results.json as plain names do."""

    SUFFIX = ":compare"

    @classmethod
    def compare(cls, kind: str) -> Scored:
        return cls(kind + cls.SUFFIX)

    @property
    def map_kind(self) -> str:
        """The kind of the maps it evaluates."""
        return self.removesuffix(self.SUFFIX)

    @property
    def compares(self) -> bool:
        return self.endswith(self.SUFFIX)


CURVE_FARS = np.logspace(-6, 0, 61)


def fit_maps(
    pairs: Pairs,
    kinds: tuple[str, ...] = ("linear", "rotation", "hub"),
    *,
    progress: bool = True,
    mlp_params: dict[str, Any] | None = None,
    cohort: np.ndarray | None = None,
) -> tuple[dict[tuple[str, str, str], EmbeddingMap], CanonicalSpace | None]:
    """({(A, B, kind): map A -> B} for every ordered pair, the hub space or None), each map
    fitted on ``pairs.xy(A, B)`` with CV folds by person. ``hub`` maps are compositions
    through one :class:`CanonicalSpace` fitted on all models (needs rows shared by all
    models); ``tuned`` maps are chosen by :func:`select_map`, with the rows ``cohort``
    ((len(pairs),) bool, from :func:`cohort_rows`) as S-norm's cohort."""
    models = pairs.models
    if "hub" in kinds and not pairs.shared_rows:
        raise FitError(
            f"the hub fits every model on the same rows, which {pairs.pairing} pairs do not have: "
            "fit direct kinds (linear, rotation, tuned) instead"
        )
    maps: dict[tuple[str, str, str], EmbeddingMap] = {}
    hub = None
    jobs = [(a, b, k) for k in kinds if k in (*DIRECT, "tuned") for a in models for b in models if a != b]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for a, b, kind in tqdm(jobs, desc="fitting maps", unit="map", disable=not progress):
            X, Y = pairs.xy(a, b)
            if kind == "tuned":
                maps[a, b, kind] = select_map(X, Y, pairs.groups, source_id=a, target_id=b, cohort=cohort)
                continue
            params = (mlp_params or {}) if kind == "mlp" else {}
            maps[a, b, kind] = DIRECT[kind](source_id=a, target_id=b, **params).fit(X, Y, groups=pairs.groups)
        if "hub" in kinds:
            hub = CanonicalSpace(name="hub").fit(pairs.source, groups=pairs.groups)
            for a in models:
                for b in models:
                    if a != b:
                        maps[a, b, "hub"] = hub.mapping(a, b)
    return maps, hub


@dataclass
class CrossModelResults:
    models: list[str]
    kinds: list[str]
    fars: tuple[float, ...]
    convention: str
    #: tar[kind][far] is a (K, K) matrix: row = model A (mapped side), column = model B.
    #: The diagonal is native verification for every kind.
    tar: dict[str, dict[float, np.ndarray]] = field(default_factory=dict)
    auc: dict[str, np.ndarray] = field(default_factory=dict)
    #: curves[(A, B, kind)] = TAR at CURVE_FARS (strict), for ROC plots
    curves: dict[tuple[str, str, str], np.ndarray] = field(default_factory=dict)
    n_genuine: int = 0
    n_impostor: int = 0

    def summary(self) -> dict[str, dict[float, float]]:
        """Mean native (diagonal) and mean per map kind (off-diagonal) TAR at each FAR."""
        k = len(self.models)
        off = ~np.eye(k, dtype=bool)
        first = self.kinds[0]
        with warnings.catch_warnings():  # FARs too fine for the protocol are all-NaN: mean NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            out = {"native": {f: float(np.nanmean(np.diag(self.tar[first][f]))) for f in self.fars}}
            for kind in self.kinds:
                out[kind] = {f: float(np.nanmean(self.tar[kind][f][off])) for f in self.fars}
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "models": self.models,
            "kinds": self.kinds,
            "convention": self.convention,
            "n_genuine": self.n_genuine,
            "n_impostor": self.n_impostor,
            "tar": {k: {f"{f:g}": m.tolist() for f, m in v.items()} for k, v in self.tar.items()},
            "auc": {k: v.tolist() for k, v in self.auc.items()},
            "summary": {k: {f"{f:g}": v for f, v in d.items()} for k, d in self.summary().items()},
        }


def cross_model_eval(
    embeddings: Mapping[str, np.ndarray],
    protocol: VerificationProtocol,
    maps: Mapping[tuple[str, str, str], Any],
    kinds: tuple[str, ...] = ("none", "linear", "rotation", "hub"),
    *,
    fars: tuple[float, ...] = SUMMARY_FARS,
    convention: str = "strict",
    progress: bool = True,
    both_ways: bool = False,
) -> CrossModelResults:
    """Evaluate every ordered pair for every kind whose maps are present in ``maps``.
    With ``both_ways``, Compare scores both ways where ``maps`` holds the reverse map: pass
    ``Pairs.shared_rows`` of the maps' fitting pairs, since only a B -> A map fitted on the
    A -> B map's own pairs is one a deployment has (:mod:`mapper.core.twoway`)."""
    models = list(embeddings)
    kinds = tuple(k for k in kinds if k == "none" or any(key[2] == Scored(k).map_kind for key in maps))
    res = CrossModelResults(models, list(kinds), tuple(fars), convention)
    res.n_genuine, res.n_impostor = int(protocol.labels.sum()), int((~protocol.labels).sum())

    def templates(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return pool_templates(x, protocol.template_ids, protocol.media_ids)

    tids = np.unique(protocol.template_ids)  # the order pool_templates returns, shared by all
    pos = {t: k for k, t in enumerate(tids)}
    i = np.array([pos[t] for t in protocol.pairs[:, 0]])
    j = np.array([pos[t] for t in protocol.pairs[:, 1]])
    native = {m: templates(embeddings[m])[1] for m in models}

    def score(
        A: np.ndarray, B: np.ndarray, m: EmbeddingMap | None = None, back: tuple | None = None
    ) -> tuple[dict[float, float], float, np.ndarray]:
        s = pair_scores(A, B, i, j, matrix=m.score_matrix if m is not None else None)
        if back is not None:  # (B's templates mapped into A's space, A's own, the B -> A map)
            s = (s + pair_scores(back[0], back[1], j, i, matrix=back[2].score_matrix)) / 2
        v = evaluate(s, protocol.labels, fars, convention=convention, curve_fars=CURVE_FARS)
        return v.tar, v.auc, v.curve

    k = len(models)
    for kind in kinds:
        res.tar[kind] = {f: np.full((k, k), np.nan) for f in fars}
        res.auc[kind] = np.full((k, k), np.nan)
    jobs = [(a, b, kind) for a in range(k) for b in range(k) for kind in kinds if a != b or kind == kinds[0]]
    for a, b, kind in tqdm(jobs, desc="evaluating", unit="pair", disable=not progress):
        A, B = models[a], models[b]
        if a == b:
            tar, auc, curve = score(native[A], native[A])
            for kd in kinds:
                for f in fars:
                    res.tar[kd][f][a, a] = tar[f]
                res.auc[kd][a, a] = auc
            res.curves[A, A, "native"] = curve
            continue
        m = back = None
        if kind == "none":
            d = min(native[A].shape[1], native[B].shape[1])
            side_a, side_b = native[A][:, :d], native[B][:, :d]
        else:
            mapping = maps[A, B, Scored(kind).map_kind]
            compares = Scored(kind).compares
            side_a = templates((mapping.compare_input if compares else mapping.transform)(embeddings[A]))[1]
            side_b = native[B]
            if compares:
                m = mapping
                reverse = reverse_of(maps, A, B, Scored(kind).map_kind) if both_ways else None
                if reverse is not None:
                    back = (templates(reverse.compare_input(embeddings[B]))[1], native[A], reverse)
        tar, auc, curve = score(side_a, side_b, m, back)
        for f in fars:
            res.tar[kind][f][a, b] = tar[f]
        res.auc[kind][a, b] = auc
        res.curves[A, B, kind] = curve
    return res


def gallery_eval(
    galleries: Mapping[str, tuple[np.ndarray, np.ndarray]],
    maps: Mapping[tuple[str, str, str], Any],
    kinds: tuple[str, ...] = ("none", "linear"),
    *,
    fars: tuple[float, ...] = SUMMARY_FARS,
    convention: str = "strict",
    max_impostors: int = 10_000_000,
    seed: int = 0,
) -> CrossModelResults:
    """The papers' experiment on galleries of different photos: ``galleries`` is {model:
    (templates (n_m, d_m), persons (n_m,))}, each model's own gallery of the evaluation
    people. A -> B scores every A template, mapped, against every B template (genuine when
    the person is the same: always two different photos); the diagonal is each gallery's
    own all-pairs verification. Impostor pairs beyond ``max_impostors`` are sampled."""
    models = list(galleries)
    kinds = tuple(k for k in kinds if k == "none" or any(key[2] == Scored(k).map_kind for key in maps))
    res = CrossModelResults(models, list(kinds), tuple(fars), convention)
    rng = np.random.default_rng(seed)
    k = len(models)
    for kind in kinds:
        res.tar[kind] = {f: np.full((k, k), np.nan) for f in fars}
        res.auc[kind] = np.full((k, k), np.nan)

    def record(a: int, b: int, kind: str, scores: np.ndarray, same: np.ndarray) -> None:
        v = evaluate(scores, same, fars, convention=convention, curve_fars=CURVE_FARS)
        for kd in kinds if a == b else (kind,):
            for f in fars:
                res.tar[kd][f][a, b] = v.tar[f]
            res.auc[kd][a, b] = v.auc
        res.curves[models[a], models[b], "native" if a == b else kind] = v.curve

    for a, A in enumerate(models):
        x, ids = galleries[A]
        i, j, same = cross_gallery_pairs(ids, max_impostors=max_impostors, rng=rng)
        t = l2_normalize(x)
        record(a, a, kinds[0], pair_scores(t, t, i, j), same)
        for b, B in enumerate(models):
            if a == b:
                continue
            y, ids_b = galleries[B]
            i, j, same = cross_gallery_pairs(ids, ids_b, max_impostors=max_impostors, rng=rng)
            res.n_genuine, res.n_impostor = int(same.sum()), int((~same).sum())  # cross-gallery pairs
            for kind in kinds:
                if kind == "none":
                    d = min(x.shape[1], y.shape[1])
                    s = pair_scores(l2_normalize(x[:, :d]), l2_normalize(y[:, :d]), i, j)
                else:
                    m = maps[A, B, Scored(kind).map_kind]
                    if Scored(kind).compares:
                        reverse = reverse_of(maps, A, B, Scored(kind).map_kind)
                        s = compare_scores(m, x, y, i, j, reverse)
                    else:
                        s = pair_scores(l2_normalize(m.transform(x)), l2_normalize(y), i, j)
                record(a, b, kind, s, same)
    return res
