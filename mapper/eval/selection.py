"""Choosing a map and its scoring per model pair, by identity-disjoint cross-validation.

Deployments run at FAR 1e-3 and below, where what decides is the impostor tail of the
scores, not the regression error a ridge penalty minimises. So each candidate (a map
recipe) is fitted on some fitting people and judged by verification on the others: all
pairs of the held-out images, one side mapped from A, the other B's own, TAR at the
target FARs, for every scoring. Nothing of the evaluation people is seen.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.model_selection import GroupKFold

from mapper.core.kinds import DIRECT
from mapper.core.maps import EmbeddingMap
from mapper.core.scoring import SCORINGS, ScoreSpace
from mapper.core.validation import FitError, check_pairs, l2_normalize
from mapper.eval.metrics import tar_at_far_strict

#: The FARs a choice is judged at: the mean TAR over them is maximised.
SELECTION_FARS = (1e-3, 1e-4)
#: Share of the fitting people whose templates give S-norm's statistics instead of fitting
#: the map, so that no map-fitting person's template enters the file (issue 20). On LFW's
#: four default models it cost tuned Compare 0.004 / 0.011 TAR at FAR 1e-3 / 1e-4
#: (docs/results/trustworthy-maps.md).
COHORT_FRACTION = 0.1
#: Fewer fitting identities than this and there is nothing to choose on: the first recipe
#: (the papers' linear map) with a plain cosine. (Each training fold needs 5 people for
#: the linear map's own penalty CV.)
MIN_IDENTITIES = 10


@dataclass(frozen=True)
class Recipe:
    """A named way to fit a map: ``make(source_id, target_id)`` returns an unfitted map."""

    name: str
    make: Callable[[str | None, str | None], EmbeddingMap]


def direct(kind: str, **settings: Any) -> Callable[[str | None, str | None], EmbeddingMap]:
    """``make(a, b)``: a map of :data:`mapper.core.kinds.DIRECT`'s ``kind`` with ``settings``."""
    return lambda a, b: DIRECT[kind](**settings, source_id=a, target_id=b)


#: Candidates mapper-train chooses among: the papers' two maps (ridge with its penalty by
#: CV; rotation, which needs the fewest pairs), ridge shrunk towards the rotation (for
#: noisy pairs: two photos of one person), the polynomial kernel at three settings, and
#: the ensemble of ridge, rotation and the d3/a3 kernel.
DEFAULT_RECIPES: tuple[Recipe, ...] = (
    Recipe("linear", direct("linear")),
    Recipe("rotation", direct("rotation")),
    Recipe("linear-towards-rotation", direct("linear", towards="rotation")),
    Recipe("kernel-d2-a1", direct("kernel", degree=2, alpha=1.0)),
    Recipe("kernel-d3-a3", direct("kernel", degree=3, alpha=3.0)),
    Recipe("kernel-d3-a10", direct("kernel", degree=3, alpha=10.0)),
    Recipe("ensemble", direct("ensemble")),
)


def fit_recipe(
    recipe: Recipe,
    X: np.ndarray,
    Y: np.ndarray,
    groups: np.ndarray | None,
    source_id: str | None = None,
    target_id: str | None = None,
) -> EmbeddingMap:
    """Fit ``recipe`` on pairs (X, Y) and match the residual scale (for Translate)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = recipe.make(source_id, target_id).fit(X, Y, groups=groups)
    m.rescale_residual(X, Y)
    return m


def attach_scoring(
    m: EmbeddingMap, scoring: str, X: np.ndarray, Y: np.ndarray, groups: np.ndarray | None = None
) -> EmbeddingMap:
    """Fit a :class:`ScoreSpace` of ``scoring`` on pairs (X, Y) of people ``groups`` and
    attach it to ``m``."""
    space = ScoreSpace(scoring)
    mapped = None if space.reads_source else m.transform(X)
    return m.set_scoring(space.fit(mapped, l2_normalize(Y), m.target_mean_, source=X, groups=groups))


def cohort_rows(groups: Any, fraction: float = COHORT_FRACTION, seed: int = 0) -> np.ndarray | None:
    """(n,) bool: the rows of a seeded ``fraction`` of the people in ``groups``, set aside as
    S-norm's cohort; None when that is fewer than two people or leaves fewer than
    MIN_IDENTITIES to fit on."""
    people = np.unique(np.asarray(groups))
    k = round(fraction * people.size)
    if k < 2 or people.size - k < MIN_IDENTITIES:
        return None
    return np.isin(groups, np.random.default_rng(seed).choice(people, k, replace=False))


def cross_validate(
    X: Any,
    Y: Any,
    groups: Any,
    *,
    recipes: tuple[Recipe, ...] = DEFAULT_RECIPES,
    scorings: tuple[str, ...] = SCORINGS,
    folds: int = 3,
    fars: tuple[float, ...] = SELECTION_FARS,
) -> dict[str, dict[str, list[float]]]:
    """{recipe: {scoring: TAR at each of ``fars``, mean over folds}}; empty when no
    held-out fold has both genuine and impostor pairs (one image per person).

    X: (n, d_A), Y: (n, d_B) embeddings of the same n fitting images; groups: (n,) their
    identities. Folds are identity-disjoint; within the held-out fold every image pair
    (i < j) counts once, A's side i against B's side j.
    """
    X, Y = check_pairs(X, Y)
    groups = np.asarray(groups)
    if np.unique(groups).size < folds:
        raise FitError(f"{np.unique(groups).size} identities cannot make {folds} folds")
    table = {r.name: {s: np.zeros(len(fars)) for s in scorings} for r in recipes}
    counted = 0
    for train, val in GroupKFold(n_splits=folds).split(X, groups=groups):
        iu = np.triu_indices(len(val), 1)
        same = (groups[val][:, None] == groups[val][None, :])[iu]
        if same.all() or not same.any():
            continue
        counted += 1

        def tars(scores: np.ndarray, same: np.ndarray = same) -> np.ndarray:
            return np.array([tar_at_far_strict(scores[same], scores[~same], f)[0] for f in fars])

        # A scoring that reads A's own templates (llr) scores alike under every recipe: once a fold.
        shared = {
            s: tars(
                ScoreSpace(s)
                .fit(None, Y[train], None, source=X[train], groups=groups[train])
                .matrix(X[val], Y[val])[iu]
            )
            for s in scorings
            if ScoreSpace(s).reads_source
        }
        for recipe in recipes:
            m = fit_recipe(recipe, X[train], Y[train], groups[train])
            mapped = m.transform(X[val])
            for scoring in scorings:
                if scoring in shared:
                    table[recipe.name][scoring] += shared[scoring]
                    continue
                attach_scoring(m, scoring, X[train], Y[train], groups[train])
                table[recipe.name][scoring] += tars(m.score_matrix(mapped, Y[val])[iu])
    if not counted:
        return {}
    return {r: {s: (v / counted).tolist() for s, v in d.items()} for r, d in table.items()}


def select_map(
    X: Any,
    Y: Any,
    groups: Any,
    *,
    recipes: tuple[Recipe, ...] = DEFAULT_RECIPES,
    scorings: tuple[str, ...] = SCORINGS,
    folds: int = 3,
    fars: tuple[float, ...] = SELECTION_FARS,
    source_id: str | None = None,
    target_id: str | None = None,
    cohort: np.ndarray | None = None,
) -> EmbeddingMap:
    """The best (recipe, scoring) by :func:`cross_validate`, refitted on all pairs and
    labelled ``tuned``; ``fit_info_["selection"]`` records the choice and the whole table.

    Needs "cosine" among ``scorings``: the recipe is chosen for Translate (cosine) and
    Compare (its best scoring) together. ``cohort`` ((n,) bool, whole people, e.g. from
    :func:`cohort_rows`): when the choice is S-norm, the map is refitted without those rows
    and S-norm's statistics come from them alone, so the file holds no statistic of the
    people the map was fitted on (and the cohort's people fit nothing).
    """
    t0 = time.perf_counter()
    X, Y = check_pairs(X, Y)
    n_ids = np.unique(np.asarray(groups)).size
    table: dict[str, dict[str, list[float]]] = {}
    if n_ids >= MIN_IDENTITIES:  # else too few people to judge anything on held-out ones
        table = cross_validate(X, Y, groups, recipes=recipes, scorings=scorings, folds=folds, fars=fars)
    if not table:
        recipe_name, scoring, translate = recipes[0].name, "cosine", recipes[0].name
    else:

        def mean(r: str, s: str) -> float:
            return float(np.mean(table[r][s]))

        # One map serves both uses: Translate's output under a plain cosine (a migrated
        # gallery in a vendor's matcher) and Compare's scoring. The recipe is the one best
        # at both together; its scoring the best for Compare.
        recipe_name = max(table, key=lambda r: mean(r, "cosine") + max(mean(r, s) for s in table[r]))
        scoring = max(table[recipe_name], key=lambda s: mean(recipe_name, s))
        translate = max(table, key=lambda r: mean(r, "cosine"))
    recipe = next(r for r in recipes if r.name == recipe_name)
    groups = np.asarray(groups)
    held = np.zeros(len(groups), bool)
    if scoring == "snorm" and cohort is not None:
        held = np.asarray(cohort, bool)
    fit_rows = ~held
    m = fit_recipe(recipe, X[fit_rows], Y[fit_rows], groups[fit_rows], source_id, target_id)
    stat_rows = held if held.any() else fit_rows
    attach_scoring(m, scoring, X[stat_rows], Y[stat_rows], groups[stat_rows])
    m.label = "tuned"
    m.fit_info_ = {
        **m.fit_info_,
        "selection": {
            "recipe": recipe_name,
            "scoring": scoring,
            "best_for_translate_alone": translate,
            "criterion": f"fewer than {MIN_IDENTITIES} identities, or no held-out genuine pairs: "
            "the first recipe, cosine"
            if not table
            else f"mean TAR at FAR {', '.join(f'{f:g}' for f in fars)} (strict), "
            f"{folds}-fold identity-disjoint CV on the fitting people",
            "cv_tar": table,
            "fit_pairs": int(fit_rows.sum()),
            "cohort": {"pairs": int(held.sum()), "people": int(np.unique(groups[held]).size)}
            if held.any()
            else None,
            "seconds": round(time.perf_counter() - t0, 3),
        },
    }
    return m
