"""Verification protocols: LFW View 2 (ten folds), LFW all-pairs, identity splits, IJB-C 1:1."""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mapper.datasets.face_zoo import lfw_pairs_path
from mapper.errors import InvalidInput


@dataclass
class PairList:
    """Pairs of images by name: left[i] vs right[i], same[i] True for one person."""

    left: np.ndarray
    right: np.ndarray
    same: np.ndarray
    fold: np.ndarray  # (n,) fold index; all zero when the protocol has none

    def images(self) -> list[str]:
        """Every image named by some pair, sorted."""
        return sorted(set(self.left) | set(self.right))


def read_lfw_pairs(path: str | os.PathLike[str] | None = None) -> PairList:
    """LFW View 2 from ``lfw/pairs.csv`` (columns fold,left,right,same): 6,000 pairs, 10 folds."""
    path = Path(path) if path else lfw_pairs_path()
    rows = []
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        missing = {"fold", "left", "right", "same"} - set(reader.fieldnames or ())
        if missing:
            raise InvalidInput(f"{path}: missing columns {sorted(missing)}")
        for line, row in enumerate(reader, start=2):
            try:
                rows.append((int(row["fold"]), row["left"], row["right"], int(row["same"])))
            except (TypeError, ValueError) as e:
                raise InvalidInput(f"{path}:{line}: malformed row {row} ({e})") from e
    fold, left, right, same = zip(*rows, strict=True)
    return PairList(np.array(left), np.array(right), np.array(same, bool), np.array(fold))


def best_threshold_accuracy(scores: np.ndarray, same: np.ndarray) -> tuple[float, float]:
    """(threshold, accuracy) maximising accuracy of ``score >= threshold`` on these pairs."""
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], same[order]
    # Accepting the top k: correct = genuine among them + impostors among the rest.
    tp = np.r_[0, np.cumsum(y)]
    fp = np.r_[0, np.cumsum(~y)]
    correct = tp + ((~y).sum() - fp)
    k = int(np.argmax(correct))
    threshold = np.inf if k == 0 else float(s[k - 1])
    return threshold, float(correct[k] / len(s))


def view2_accuracy(scores: np.ndarray, pairs: PairList) -> tuple[float, float]:
    """The standard LFW figure: mean and std over folds of the accuracy at the threshold
    chosen on the other nine folds."""
    accs = []
    for f in np.unique(pairs.fold):
        test = pairs.fold == f
        threshold, _ = best_threshold_accuracy(scores[~test], pairs.same[~test])
        accs.append(float(((scores[test] >= threshold) == pairs.same[test]).mean()))
    return float(np.mean(accs)), float(np.std(accs))


# -- IJB-C 1:1 layout ---------------------------------------------------------------------------
@dataclass
class VerificationProtocol:
    """A template-based 1:1 verification protocol: the three IJB-C 1:1 files, as arrays.
    Rows of each model's embedding array are ``images``; templates group them.

    media: ``image_name template_id media_id`` per face; pairs: ``template_id_1
    template_id_2 label``; landmarks (optional): 5 points and a detector score per face.
    """

    images: np.ndarray  # (n,) image names
    template_ids: np.ndarray  # (n,) int64
    media_ids: np.ndarray  # (n,) int64
    pairs: np.ndarray  # (p, 2) int64 template ids
    labels: np.ndarray  # (p,) bool
    landmarks: np.ndarray | None = None  # (n, 5, 2) float32, rows aligned with images
    scores: np.ndarray | None = None  # (n,) detector scores


FACE_TID_MID = "ijbc_face_tid_mid.txt"
TEMPLATE_PAIRS = "ijbc_template_pair_label.txt"
NAME_5PTS = "ijbc_name_5pts_score.txt"


def _columns(path: Path, n_cols: int, kinds: str) -> list[np.ndarray]:
    """Whitespace-separated columns, the fast way; on failure, the first bad line's number."""
    if kinds == "i" * n_cols:  # pair files have 10M+ lines: numpy's C parser
        try:
            table = np.loadtxt(path, dtype=np.int64, ndmin=2)
        except ValueError as e:
            raise InvalidInput(f"{path}: {e}") from e  # numpy's message names the row
        if table.shape[1] != n_cols:
            raise InvalidInput(f"{path}:1: expected {n_cols} columns, got {table.shape[1]}")
        return [table[:, k] for k in range(n_cols)]
    text = path.read_bytes()
    cols: list[list[str]] = [[] for _ in range(n_cols)]
    for number, line in enumerate(text.decode().splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != n_cols:
            raise InvalidInput(f"{path}:{number}: expected {n_cols} columns, got {len(parts)}: {line[:80]!r}")
        for k, (kind, value) in enumerate(zip(kinds, parts, strict=True)):
            try:
                cols[k].append(int(value) if kind == "i" else float(value) if kind == "f" else value)
            except ValueError as e:
                raise InvalidInput(f"{path}:{number}: column {k + 1} is not a number: {value!r}") from e
    dtypes = {"i": np.int64, "f": np.float32, "s": object}
    return [np.asarray(c, dtype=dtypes[kind]) for c, kind in zip(cols, kinds, strict=True)]


def read_ijbc(folder: str | os.PathLike[str]) -> VerificationProtocol:
    """Read the IJB-C 1:1 files of ``folder`` (the 5-point file is optional)."""
    folder = Path(folder)
    for name in (FACE_TID_MID, TEMPLATE_PAIRS):
        if not (folder / name).exists():
            raise FileNotFoundError(
                f"{folder / name} not found: an IJB-C 1:1 folder needs {FACE_TID_MID} and {TEMPLATE_PAIRS}"
            )
    images, tids, mids = _columns(folder / FACE_TID_MID, 3, "sii")
    t1, t2, label = _columns(folder / TEMPLATE_PAIRS, 3, "iii")
    if not np.isin(label, (0, 1)).all():
        bad = int(np.flatnonzero(~np.isin(label, (0, 1)))[0]) + 1
        raise InvalidInput(f"{folder / TEMPLATE_PAIRS}:{bad}: label must be 0 or 1, got {label[bad - 1]}")
    known = np.unique(tids)
    missing = ~np.isin(np.r_[t1, t2], known)
    if missing.any():
        line = int(np.flatnonzero(missing)[0] % len(t1)) + 1
        raise InvalidInput(f"{folder / TEMPLATE_PAIRS}:{line}: template id not in {FACE_TID_MID}")
    landmarks = scores = None
    if (folder / NAME_5PTS).exists():
        cols = _columns(folder / NAME_5PTS, 12, "s" + "f" * 11)
        by_name = {n: i for i, n in enumerate(cols[0])}
        order = [by_name.get(n, -1) for n in images]
        if min(order) < 0:
            raise InvalidInput(f"{folder / NAME_5PTS}: no landmarks for image {images[order.index(-1)]!r}")
        table = np.stack(cols[1:], axis=1)[order]
        landmarks, scores = table[:, :10].reshape(-1, 5, 2), table[:, 10]
    return VerificationProtocol(
        images, tids, mids, np.stack([t1, t2], axis=1), label.astype(bool), landmarks, scores
    )


def write_ijbc(folder: str | os.PathLike[str], protocol: VerificationProtocol) -> None:
    """Write a protocol in the IJB-C 1:1 layout (space-separated, no header)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / FACE_TID_MID, "w") as fh:
        fh.writelines(
            f"{n} {t} {m}\n"
            for n, t, m in zip(protocol.images, protocol.template_ids, protocol.media_ids, strict=True)
        )
    table = np.column_stack([protocol.pairs, protocol.labels.astype(np.int64)])
    np.savetxt(folder / TEMPLATE_PAIRS, table, fmt="%d")


def lfw_all_pairs(
    names: np.ndarray, *, max_impostors: int | None = None, seed: int = 0
) -> VerificationProtocol:
    """Every same-person pair of ``names`` as genuine, and every different-person pair (or a
    seeded sample of ``max_impostors``) as impostor, one image per template, IJB-C layout."""
    from mapper.datasets.face_zoo import identity_of

    ids = np.array([identity_of(str(n)) for n in names])
    _, person = np.unique(ids, return_inverse=True)
    n = len(names)
    i, j = np.triu_indices(n, 1)
    same = person[i] == person[j]
    genuine = np.flatnonzero(same)
    impostor = np.flatnonzero(~same)
    if max_impostors is not None and impostor.size > max_impostors:
        impostor = np.sort(np.random.default_rng(seed).choice(impostor, max_impostors, replace=False))
    keep = np.sort(np.r_[genuine, impostor])
    tids = np.arange(n, dtype=np.int64)
    return VerificationProtocol(
        np.asarray(names),
        tids,
        tids.copy(),
        np.stack([i[keep], j[keep]], axis=1).astype(np.int64),
        same[keep],
    )


def rows_by_person(persons: np.ndarray) -> dict[str, np.ndarray]:
    """{person: their row indices}, in one sort rather than a scan per person."""
    persons = np.asarray(persons)
    order = np.argsort(persons, kind="stable")
    unique, starts = np.unique(persons[order], return_index=True)
    return dict(zip(unique, np.split(order, starts[1:]), strict=True))


def cross_gallery_pairs(
    ids_a: np.ndarray,
    ids_b: np.ndarray | None = None,
    *,
    max_impostors: int = 10_000_000,
    rng: np.random.Generator | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(i, j, same) of every genuine pair and at most ``max_impostors`` impostor pairs
    (seeded sample) between rows i of persons ``ids_a`` and rows j of ``ids_b``, or pairs
    i < j within ``ids_a`` when ``ids_b`` is None. Memory stays bounded by the pairs
    returned: all pairs of two 100,000-template galleries are never built."""
    rng = rng or np.random.default_rng(0)
    within = ids_b is None
    ids_a = np.asarray(ids_a)
    ids_b = ids_a if within else np.asarray(ids_b)
    n_a, n_b = len(ids_a), len(ids_b)
    rows_b = rows_by_person(ids_b)
    genuine = []
    for person, ra in rows_by_person(ids_a).items():
        rb = rows_b.get(person)
        if rb is not None:
            i, j = (g.ravel() for g in np.meshgrid(ra, rb, indexing="ij"))
            genuine.append(np.stack([i, j])[:, i < j] if within else np.stack([i, j]))
    gi, gj = np.concatenate(genuine, axis=1) if genuine else np.zeros((2, 0), np.int64)
    total = n_a * (n_a - 1) // 2 if within else n_a * n_b
    if total - gi.size <= max_impostors:  # small enough: every pair
        i, j = (
            np.triu_indices(n_a, 1)
            if within
            else (g.ravel() for g in np.meshgrid(np.arange(n_a), np.arange(n_b), indexing="ij"))
        )
        return i, j, ids_a[i] == ids_b[j]
    # a sample of distinct ordered (i, j) cells, i < j within one gallery, minus genuine ones
    flat = rng.choice(
        n_a * n_b, min(n_a * n_b, int(max_impostors * (2.2 if within else 1.1)) + 1000), replace=False
    )
    i, j = np.divmod(flat, n_b)
    keep = (ids_a[i] != ids_b[j]) & ((i < j) if within else True)
    i, j = i[keep][:max_impostors], j[keep][:max_impostors]
    i, j = np.r_[gi, i], np.r_[gj, j]
    return i, j, ids_a[i] == ids_b[j]


def detections_from_landmarks(landmarks: np.ndarray, scores: np.ndarray | None = None) -> np.ndarray:
    """(n, 15) detections in YuNet's layout from (n, 5, 2) landmarks: a box around the points
    (widened as a face box is around its eyes and mouth), the points, the score (1 if none)."""
    pts = np.asarray(landmarks, np.float32).reshape(-1, 5, 2)
    lo, hi = pts.min(axis=1), pts.max(axis=1)
    size = (hi - lo).max(axis=1) * 2.2
    centre = (lo + hi) / 2
    box = np.column_stack([centre - size[:, None] / 2, size, size])
    score = np.ones(len(pts), np.float32) if scores is None else np.asarray(scores, np.float32)
    return np.column_stack([box, pts.reshape(-1, 10), np.maximum(score, 1e-3)]).astype(np.float32)
