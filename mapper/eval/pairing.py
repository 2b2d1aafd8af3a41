"""Fitting pairs: which template of model A is fitted onto which template of model B.

The papers pair the two models' templates of one photo ("image" pairing). After a vendor
switch the old model often cannot run again (its licence ended, or the enrolment photos
were deleted), and what links the old gallery to new enrolments is the person: a pair
joins A's template of one photo with B's template of another photo of the same person
("identity" pairing). Both sides of such a pair carry their own photo's error.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from mapper.errors import InvalidInput
from mapper.eval.protocols import rows_by_person

#: How fitting pairs are made (``mapper-train --pairing``).
PAIRINGS = ("image", "identity")
#: Why ``--pairing none`` (no link between the galleries) is refused: measured, nothing works.
NO_PAIRS = (
    "no method tried fits a usable map from two unlinked galleries: whitening + ICA + Procrustes "
    "refinement matched no one (TAR at FAR 1e-2 0.0066, chance level; docs/guides/pairing.md). "
    "Link some people: re-enrol a few hundred of them with the new model and use identity pairs"
)


@dataclass(frozen=True)
class Pairs:
    """Rows of fitting pairs. A map A -> B fits ``source[A]`` onto ``target[B]`` row for row;
    row i of both belongs to person ``groups[i]``, which keeps CV folds identity-disjoint.

    source: {model: (p, d_model)}, target: {model: (p, d_model)}, groups: (p,). When
    ``source is target`` every model's row i comes from one set of photos, which a space
    fitted on all models at once (the hub) needs.
    """

    source: Mapping[str, np.ndarray]
    target: Mapping[str, np.ndarray]
    groups: np.ndarray
    pairing: str = "image"

    @property
    def models(self) -> list[str]:
        return list(self.source)

    @property
    def shared_rows(self) -> bool:
        return self.source is self.target

    def __len__(self) -> int:
        return len(self.groups)

    def xy(self, a: str, b: str) -> tuple[np.ndarray, np.ndarray]:
        """(X, Y): the rows a map from ``a`` into ``b`` is fitted on."""
        return self.source[a], self.target[b]

    def take(self, rows: np.ndarray) -> Pairs:
        """The pairs of ``rows`` (indices or a boolean mask), sharing rows as this does."""
        source = {m: e[rows] for m, e in self.source.items()}
        target = source if self.shared_rows else {m: e[rows] for m, e in self.target.items()}
        return Pairs(source, target, self.groups[rows], self.pairing)

    def concat(self, other: Pairs) -> Pairs:
        """These rows, then ``other``'s (same models, same pairing)."""

        def stack(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
            return {m: np.vstack([e, b[m]]) for m, e in a.items()}

        source = stack(self.source, other.source)
        target = source if self.shared_rows else stack(self.target, other.target)
        return Pairs(source, target, np.concatenate([self.groups, other.groups]), self.pairing)

    def describe(self) -> str:
        """How the pairs were made, in words for reports."""
        people = np.unique(self.groups).size
        if self.pairing == "image":
            return f"image pairs: both models' templates of one photo ({len(self)} pairs, {people} people)"
        return (
            f"identity pairs: A's template of one photo, B's of another photo of the same person "
            f"({len(self)} pairs, {people} people)"
        )


def image_pairs(emb: Mapping[str, np.ndarray], groups: np.ndarray) -> Pairs:
    """The papers' pairs: every model's template of each photo ({model: (n, d)}, groups (n,))."""
    rows = dict(emb)
    return Pairs(rows, rows, np.asarray(groups))


def old_new_rows(groups: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(old, new) row indices of equal length: each person with 2+ photos has their photos
    split at random into an "old" half (enrolled by A) and a "new" half (re-enrolled by B),
    no photo on both sides; old[k] and new[k] are one person's, ceil(n/2) pairs for a person
    with n photos (the shorter half's photos are reused). People with one photo are left out.
    """
    groups = np.asarray(groups)
    rng = np.random.default_rng(seed)
    old, new = [], []
    for person in np.unique(groups):
        rows = rng.permutation(np.flatnonzero(groups == person))
        if rows.size < 2:
            continue
        half = rows.size // 2
        a, b = rows[half:], rows[:half]  # A's half is the larger one
        k = np.arange(a.size)
        old.append(a)
        new.append(b[k % b.size])
    if not old:
        raise InvalidInput("identity pairing needs people with two or more photos; none has")
    return np.concatenate(old), np.concatenate(new)


def identity_pairs(emb: Mapping[str, np.ndarray], groups: np.ndarray, seed: int = 0) -> Pairs:
    """Identity pairs from one set of photos embedded by every model ({model: (n, d)},
    groups (n,)), as :func:`old_new_rows` splits them: the A side of every map is an "old"
    photo, the B side another, "new" photo of the same person."""
    old, new = old_new_rows(groups, seed)
    return Pairs(
        {m: e[old] for m, e in emb.items()},
        {m: e[new] for m, e in emb.items()},
        np.asarray(groups)[old],
        "identity",
    )


def make_pairs(pairing: str, emb: Mapping[str, np.ndarray], groups: np.ndarray, *, seed: int = 0) -> Pairs:
    """The fitting pairs of ``pairing`` (one of :data:`PAIRINGS`) from photos embedded by
    every model ({model: (n, d)}, groups (n,))."""
    if pairing == "image":
        return image_pairs(emb, groups)
    if pairing == "identity":
        return identity_pairs(emb, groups, seed)
    raise InvalidInput(f"pairing must be one of {PAIRINGS}, got {pairing!r}")


def gallery_pairs(
    old: tuple[str, np.ndarray, np.ndarray],
    new: tuple[str, np.ndarray, np.ndarray],
    people: np.ndarray,
) -> Pairs:
    """Identity pairs between two galleries of different photos, each ``(model, templates
    (n, d), persons (n,))``: for every person of ``people`` found in both, each of their old
    templates with one of their new ones (the fewer side's reused), max(n_old, n_new) pairs.
    Both models' rows are shared, so the pairs fit maps either way (old -> new and back)."""
    (model_a, xa, pa), (model_b, xb, pb) = old, new
    rows_a, rows_b = rows_by_person(pa), rows_by_person(pb)
    take_a, take_b, groups = [], [], []
    for person in people:
        a, b = rows_a.get(person), rows_b.get(person)
        if a is None or b is None:
            continue
        k = np.arange(max(a.size, b.size))
        take_a.append(a[k % a.size])
        take_b.append(b[k % b.size])
        groups.append(np.full(k.size, person, dtype=object))
    if not groups:
        raise InvalidInput("no person of the fitting people is in both galleries: nothing links them")
    rows = {model_a: xa[np.concatenate(take_a)], model_b: xb[np.concatenate(take_b)]}
    return Pairs(rows, rows, np.concatenate(groups).astype(str), "identity")
