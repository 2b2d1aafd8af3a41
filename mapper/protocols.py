"""Verification protocols: LFW View 2 (ten folds), LFW all-pairs, identity splits, IJB-C 1:1."""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .zoo import face_zoo_dir


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
    path = Path(path) if path else face_zoo_dir() / "lfw" / "pairs.csv"
    rows = []
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        missing = {"fold", "left", "right", "same"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path}: missing columns {sorted(missing)}")
        for line, row in enumerate(reader, start=2):
            try:
                rows.append((int(row["fold"]), row["left"], row["right"], int(row["same"])))
            except (TypeError, ValueError) as e:
                raise ValueError(f"{path}:{line}: malformed row {row} ({e})") from e
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
