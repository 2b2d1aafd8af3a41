"""Scoring and ROC for one model pair at IJB-C 1:1 scale, against the straightforward way.

Synthetic 512-d templates of IJB-C's shape (23,124 templates, 15,658,489 pairs of which
19,557 genuine). Baseline: gather both templates of each pair in batches of 100,000,
row-wise dot products, then ``sklearn.metrics.roc_curve`` and TAR at the ROC point nearest
each FAR. Ours: ``mapper.templates.pair_scores`` (blocked matrix products) and
``mapper.eval.metrics.evaluate`` (sorted scores, no ROC materialised). Prints wall time, peak
traced memory and the ratio; checks that both give the same scores and TARs.
"""

from __future__ import annotations

import argparse
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_curve

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mapper.eval.metrics import evaluate, tar_at_far_ijbc
from mapper.eval.templates import pair_scores

FARS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


def measure(fn):
    tracemalloc.start()
    t0 = time.perf_counter()
    out = fn()
    wall = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return out, wall, peak


def baseline(T, i, j, labels):
    scores = np.empty(len(i), np.float32)
    for s in range(0, len(i), 100_000):
        a, b = T[i[s : s + 100_000]], T[j[s : s + 100_000]]
        scores[s : s + 100_000] = np.einsum("ij,ij->i", a, b)
    fpr, tpr, _ = roc_curve(labels, scores)
    return scores, {f: tar_at_far_ijbc(fpr, tpr, f) for f in FARS}


def ours(T, i, j, labels, convention):
    scores = pair_scores(T, T, i, j)
    return scores, evaluate(scores, labels, FARS, convention=convention).tar


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--templates", type=int, default=23_124)
    ap.add_argument("--pairs", type=int, default=15_658_489)
    ap.add_argument("--genuine", type=int, default=19_557)
    ap.add_argument("--dim", type=int, default=512)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    # Templates of 3,531 people (IJB-C's subject count): a person's centre plus noise.
    person = rng.integers(0, 3531, args.templates)
    centres = rng.standard_normal((3531, args.dim), dtype=np.float32)
    T = centres[person] + 2.0 * rng.standard_normal((args.templates, args.dim), dtype=np.float32)
    T /= np.linalg.norm(T, axis=1, keepdims=True)
    # Genuine pairs: two templates of one person; impostor pairs: random, labelled by person.
    by_person = np.argsort(person, kind="stable")
    starts = np.searchsorted(person[by_person], np.arange(3531))
    counts = np.bincount(person, minlength=3531)
    who = rng.choice(np.flatnonzero(counts >= 2), args.genuine)
    a = rng.integers(0, counts[who])
    b = (a + rng.integers(1, counts[who])) % counts[who]  # another template of the same person
    gi, gj = by_person[starts[who] + a], by_person[starts[who] + b]
    n_imp = args.pairs - args.genuine
    i = np.r_[gi, rng.integers(0, args.templates, n_imp)]
    j = np.r_[gj, rng.integers(0, args.templates, n_imp)]
    labels = person[i] == person[j]
    print(f"{len(T):,} templates x {args.dim} d, {args.pairs:,} pairs ({labels.sum():,} genuine)")

    (s_base, tar_base), t_base, m_base = measure(lambda: baseline(T, i, j, labels))
    (s_ours, tar_ijbc), t_ijbc, m_ijbc = measure(lambda: ours(T, i, j, labels, "ijbc"))
    (_, tar_strict), t_strict, m_strict = measure(lambda: ours(T, i, j, labels, "strict"))
    assert np.abs(s_base - s_ours).max() < 1e-5, "scores differ"
    assert tar_base == tar_ijbc, (tar_base, tar_ijbc)
    print(f"{'method':<52} {'wall s':>7} {'peak MiB':>9}")
    print(f"{'baseline: gather 100k + dot + sklearn roc_curve':<52} {t_base:>7.2f} {m_base:>9.0f}")
    print(f"{'ours, ijbc convention (same TARs as baseline)':<52} {t_ijbc:>7.2f} {m_ijbc:>9.0f}")
    print(f"{'ours, strict convention + EER + AUC':<52} {t_strict:>7.2f} {m_strict:>9.0f}")
    print(f"speed-up: {t_base / t_ijbc:.1f}x (ijbc convention), {t_base / t_strict:.1f}x (strict)")
    print("TAR (strict): " + ", ".join(f"{f:g}: {v:.4f}" for f, v in tar_strict.items()))


if __name__ == "__main__":
    main()
