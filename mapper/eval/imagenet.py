"""The 2020 paper's classification experiment: ImageNet classifiers mapped into each other.

For every ordered pair (A, B) of classifiers, A's penultimate embedding is mapped into B's
space and classified by **B's own final layer**. Four maps are compared:

- **fitted** from photos: ridge regression (:class:`~mapper.core.maps.LinearMap`) on pairs
  of embeddings of the same inputs, alpha chosen by photo-disjoint cross-validation inside
  the training folds. Labels are never used; augmented views multiply the inputs. Photos
  are split k-fold: a map is fitted on the training folds' photos (all their views) and
  tested on the held-out photos (the plain view), so no tested photo is seen in any view.
- **rotation** from the same photos and folds: orthogonal Procrustes with one scale (the
  2021 paper's rotation-only maps; semi-orthogonal where the dimensions differ);
- **ridge towards the rotation**: ridge whose penalty pulls towards that rotation rather
  than towards zero (ridge on what the rotation leaves unexplained);
- **closed form** from the two heads (:func:`~mapper.core.heads.head_map`): no photos, so
  it is tested on every photo.

Embeddings arrive as ``{model: (views, n_photos, dim)}``; view 0 is the plain photo.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
from sklearn.model_selection import GroupKFold, KFold
from tqdm import tqdm

from mapper.classifiers.runtimes import logits
from mapper.core.heads import head_map
from mapper.core.maps import AffineMap, EmbeddingMap, procrustes, ridge_cv_errors
from mapper.errors import InvalidInput

#: Ridge penalties for raw (unnormalised) classifier embeddings, whose squared norms are in
#: the hundreds: wide enough that cross-validation never picks an end of the grid here.
ALPHAS = tuple(float(a) for a in np.logspace(0, 7, 15))


#: Random projections of the outputs on which ridge's alpha is cross-validated.
CV_OUTPUTS = 512


@dataclass(frozen=True)
class Material:
    """What the experiment reads: labels, embeddings by view, and each model's head."""

    models: list[str]
    y: np.ndarray  # (n,) class indices
    embeddings: dict[str, np.ndarray]  # model -> (views, n, dim) float32
    heads: dict[str, tuple[np.ndarray, np.ndarray]]  # model -> W (classes, dim), b (classes,)

    def predict(self, model: str, e: np.ndarray) -> np.ndarray:
        """(n,) classes ``model``'s head gives (n, dim) embeddings in its space."""
        return logits(e, *self.heads[model]).argmax(1)

    @cached_property
    def own_predictions(self) -> dict[str, np.ndarray]:
        """Each model's classes on every photo (plain view), computed once."""
        return {name: self.predict(name, self.embeddings[name][0]) for name in self.models}

    @property
    def n_views(self) -> int:
        return min(e.shape[0] for e in self.embeddings.values())


def fit_maps(
    m: Material,
    a: str,
    targets: Sequence[str],
    photos: np.ndarray,
    views: int,
    towards: Callable[[np.ndarray], dict[str, AffineMap]] | None = None,
) -> dict[str, AffineMap]:
    """Ridge maps from A into each of ``targets``, fitted on ``photos`` (indices) in their
    first ``views`` views, as ``{target: map}``, each with its own alpha. With ``towards``
    (photos -> a map per target fitted on them, e.g. :func:`rotation_maps`), each ridge
    shrinks towards that map's weight instead of towards zero: it is ridge on what that
    map leaves unexplained.

    The map pulled towards must not have seen the photos its alpha is validated on, and
    refitting it costs an SVD per target: its alpha is validated on one fold of the five,
    against a map fitted on the other four (fitted on all photos, the validation photos
    shaped the prior: a test with a planted case shows the choice moving), and the final
    map is fitted on all ``photos``.

    One ridge fit on the targets side by side: ridge solves each output column on its own,
    so this equals one fit per pair, at a fraction of the cost (the eigendecompositions
    depend on A only). Each target's alpha is cross-validated on its own outputs, in folds
    that keep each photo's views together (:func:`~mapper.core.maps.ridge_cv_errors`, the
    CV that :class:`~mapper.core.maps.LinearMap` runs). Only the validation error summed
    over a target's outputs matters, which a random projection keeps in expectation, so a
    target wider than :data:`CV_OUTPUTS` is cross-validated on that many projected outputs;
    every target's full width is then solved with its alpha (tests compare the maps with
    LinearMap's).
    """
    X = m.embeddings[a][:views, photos].reshape(-1, m.embeddings[a].shape[-1]).astype(np.float64)
    blocks = [m.embeddings[b][:views, photos].reshape(-1, m.embeddings[b].shape[-1]) for b in targets]
    y_means = [Y.mean(0, dtype=np.float64) for Y in blocks]
    x_mean = X.mean(0)
    Xc = X - x_mean
    gram = Xc.T @ Xc
    Xc32 = Xc.astype(np.float32)
    blocks = [(Y - mu).astype(np.float32) for Y, mu in zip(blocks, y_means, strict=True)]
    rng = np.random.default_rng(0)
    projections = [
        (rng.normal(size=(Y.shape[1], CV_OUTPUTS)) / np.sqrt(CV_OUTPUTS)).astype(np.float32)
        if Y.shape[1] > CV_OUTPUTS
        else np.eye(Y.shape[1], dtype=np.float32)
        for Y in blocks
    ]
    edges = np.cumsum([0, *(p.shape[1] for p in projections)])
    columns = [slice(s, e) for s, e in itertools.pairwise(edges)]
    Yp = np.hstack([Y @ p for Y, p in zip(blocks, projections, strict=True)], dtype=np.float64)
    rows = np.tile(photos, views)
    splits = list(GroupKFold(n_splits=5).split(Xc, groups=rows))
    if towards is not None:  # one fold, its prior from its training photos (see above)
        splits = splits[:1]
        fold_prior = towards(np.unique(rows[splits[0][0]]))
        Yp -= Xc @ np.hstack([fold_prior[b].weight_ @ p for b, p in zip(targets, projections, strict=True)])
    errors = ridge_cv_errors(Xc, Yp, gram, Xc.T @ Yp, splits, ALPHAS, columns)
    alphas = [ALPHAS[i] for i in errors.argmin(1)]
    priors = [0.0] * len(targets)
    if towards is not None:  # what is left to fit (the outputs' width times n rows, float32)
        prior_maps = towards(photos)
        priors = [prior_maps[b].weight_ for b in targets]
        blocks = [Y - Xc32 @ P.astype(np.float32) for Y, P in zip(blocks, priors, strict=True)]
    # The wide product in float32; the solves in float64.
    cross = (Xc32.T @ np.hstack(blocks)).astype(np.float64)
    eig, V = np.linalg.eigh(gram)
    eig = np.clip(eig, 0, None)
    how = "ridge" if towards is None else "ridge towards the given map"
    maps, start = {}, 0
    for b, block, mu, alpha, prior in zip(targets, blocks, y_means, alphas, priors, strict=True):
        cols = slice(start, start + block.shape[1])
        start = cols.stop
        weight = prior + V @ ((V.T @ cross[:, cols]) / (eig + alpha)[:, None])
        fitted_from = f"{len(photos)} photos x {views} views ({how})"
        maps[b] = _raw_map(a, b, weight, x_mean, mu, fitted_from=fitted_from, alpha=alpha)
    return maps


def _raw_map(
    a: str, b: str, weight: np.ndarray, x_mean: np.ndarray, y_mean: np.ndarray, **info: Any
) -> AffineMap:
    """An affine map on raw (unnormalised) classifier embeddings, from A to B."""
    return AffineMap.from_params(
        weight,
        x_mean,
        y_mean,
        fit_info=info,
        normalize_input=False,
        normalize_output=False,
        source_id=a,
        target_id=b,
    )


def rotation_maps(
    m: Material, a: str, targets: Sequence[str], photos: np.ndarray, views: int
) -> dict[str, AffineMap]:
    """Rotation maps with one scale from A into each of ``targets``, fitted on ``photos`` in
    their first ``views`` views: what :class:`~mapper.core.maps.RotationMap` fits without
    normalisation (a test compares them), with A's centred embeddings computed once."""
    X = m.embeddings[a][:views, photos].reshape(-1, m.embeddings[a].shape[-1])
    x_mean = X.mean(0, dtype=np.float64)
    Xc = (X - x_mean).astype(np.float32)
    maps = {}
    for b in targets:
        Y = m.embeddings[b][:views, photos].reshape(-1, m.embeddings[b].shape[-1])
        y_mean = Y.mean(0, dtype=np.float64)
        rotation, scale, _ = procrustes(Xc, (Y - y_mean).astype(np.float32))
        fitted_from = f"{len(photos)} photos x {views} views (rotation)"
        maps[b] = _raw_map(
            a, b, rotation.astype(np.float64) * scale, x_mean, y_mean, fitted_from=fitted_from, scale=scale
        )
    return maps


def closed_form(m: Material, a: str, b: str) -> EmbeddingMap:
    return head_map(*m.heads[a], *m.heads[b], source_id=a, target_id=b)


def native(m: Material) -> dict[str, float]:
    """Each model's own top-1 on every photo (plain view)."""
    return {name: float((pred == m.y).mean()) for name, pred in m.own_predictions.items()}


def _scores(m: Material, a: str, b: str, mapped: np.ndarray, photos: np.ndarray) -> dict[str, float]:
    pred = m.predict(b, mapped)
    return {
        "top1": float((pred == m.y[photos]).mean()),
        "agree_b": float((pred == m.own_predictions[b][photos]).mean()),
        "agree_a": float((pred == m.own_predictions[a][photos]).mean()),
    }


def _fold_means(per_fold: list[dict[str, float]]) -> dict[str, float]:
    """Each score's mean over folds, and top-1's standard deviation across them."""
    out = {k: float(np.mean([f[k] for f in per_fold])) for k in per_fold[0]}
    top1 = np.array([f["top1"] for f in per_fold])
    out["top1_std"] = float(top1.std(ddof=1)) if len(top1) > 1 else 0.0
    return out


def experiment(
    m: Material, *, folds: int = 5, views: int | None = None, seed: int = 0, progress: bool = True
) -> dict[str, Any]:
    """Fitted maps (ridge, rotation, ridge towards the rotation; k-fold over photos) and
    closed-form maps for every ordered pair.

    Returns ``{"native": {model: top1}, "pairs": [record per (A, B)]}``; a record holds, for
    each fitted kind, the mean and standard deviation of top-1 across folds and the mean
    agreements with A's and B's own predictions; for the closed form the same on every
    photo, with its logit residual; and how far apart the ridge and closed-form maps are:
    the relative Frobenius norm of their weights and of their outputs on the held-out
    photos, and how often their predictions agree.
    """
    views = m.n_views if views is None else views
    if not 1 <= views <= m.n_views:
        raise InvalidInput(f"views must be in 1..{m.n_views}, got {views}")
    n = len(m.y)
    splits = list(KFold(folds, shuffle=True, random_state=seed).split(np.arange(n)))
    everyone = np.arange(n)
    fitted: dict[tuple[str, str], list[AffineMap]] = {}  # (a, b) -> one map per fold
    # The other fitted kinds are scored at once: five folds of 56 maps of each kind would
    # take gigabytes.
    held_out: dict[str, dict[tuple[str, str], list[dict[str, float]]]] = {
        "rotation": {},
        "towards_rotation": {},
    }
    for a in tqdm(m.models, desc="fitting from each model", unit="model", disable=not progress):
        targets = [b for b in m.models if b != a]
        for train, test in splits:
            for b, fit in fit_maps(m, a, targets, train, views).items():
                fitted.setdefault((a, b), []).append(fit)
            fitted_rotations: dict[bytes, dict[str, AffineMap]] = {}  # each photo set's, once

            def rotations(
                photos: np.ndarray, a: str = a, targets: list[str] = targets, cache=fitted_rotations
            ) -> dict[str, AffineMap]:
                key = photos.tobytes()
                if key not in cache:
                    cache[key] = rotation_maps(m, a, targets, photos, views)
                return cache[key]

            for kind, maps in (
                ("rotation", rotations(train)),
                ("towards_rotation", fit_maps(m, a, targets, train, views, towards=rotations)),
            ):
                for b, fit in maps.items():
                    mapped = fit.transform(m.embeddings[a][0, test])
                    held_out[kind].setdefault((a, b), []).append(_scores(m, a, b, mapped, test))
    records = []
    for (a, b), fits in fitted.items():
        cf = closed_form(m, a, b)
        cf_out = cf.transform(m.embeddings[a][0])  # every photo, once per pair
        cf_pred = m.predict(b, cf_out)
        per_fold = []
        for fit, (_, test) in zip(fits, splits, strict=True):
            out_fit, out_cf = fit.transform(m.embeddings[a][0, test]), cf_out[test]
            per_fold.append(
                {
                    **_scores(m, a, b, out_fit, test),
                    "alpha": fit.fit_info_["alpha"],
                    "output_distance": float(np.linalg.norm(out_fit - out_cf) / np.linalg.norm(out_cf)),
                    "prediction_agreement": float((m.predict(b, out_fit) == cf_pred[test]).mean()),
                    "weight_distance": float(
                        np.linalg.norm(fit.weight_ - cf.weight_) / np.linalg.norm(cf.weight_)
                    ),
                }
            )

        records.append(
            {
                "a": a,
                "b": b,
                "fitted": _fold_means(per_fold),
                **{kind: _fold_means(scores[a, b]) for kind, scores in held_out.items()},
                "closed_form": {
                    **_scores(m, a, b, cf_out, everyone),
                    "logit_residual": cf.fit_info_["logit_residual"],
                    "target_head_rank": cf.fit_info_["target_head_rank"],
                },
            }
        )
    return {"native": native(m), "pairs": records, "folds": folds, "views": views, "photos": n}


def curve(
    m: Material,
    pairs: Sequence[tuple[str, str]],
    *,
    photo_counts: Sequence[int] = (100, 200, 400, 800),
    view_counts: Sequence[int] = (1, 4, 10),
    seed: int = 0,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Top-1 of fitted maps against the number of fitting inputs (photos x views), on the
    first fold's held-out photos, for ``pairs``: where the data limits the result."""
    train, test = next(KFold(5, shuffle=True, random_state=seed).split(np.arange(len(m.y))))
    order = np.random.default_rng(seed).permutation(train)
    points = [(p, v) for p in photo_counts if p <= len(train) for v in view_counts if v <= m.n_views]
    out = []
    for (a, b), (p, v) in tqdm(
        list(itertools.product(pairs, points)), desc="curve", unit="fit", disable=not progress
    ):
        fit = fit_maps(m, a, [b], np.sort(order[:p]), v)[b]
        score = _scores(m, a, b, fit.transform(m.embeddings[a][0, test]), test)
        out.append({"a": a, "b": b, "photos": p, "views": v, "inputs": p * v, "top1": score["top1"]})
    return out
