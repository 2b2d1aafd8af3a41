"""Issue 21's moonshot, tried and failed: a map between two galleries with no pairs at all.

Each gallery (SFace templates of one half of each LFW fitting person's photos, face-reid
templates of the other half) is whitened to 64 dimensions; FastICA finds each one's
independent sources; the sources are matched by kurtosis (Hungarian) and signed by
skewness, giving a first rotation; mutual nearest person means then refine it by
Procrustes, ten rounds (as unsupervised word translation refines its first guess).

    python -m tools.unpaired_attempt [--disjoint]

prints the share of people matched and TAR at FAR 1e-2 on the evaluation people; with the
true person links, the same whitened-Procrustes recipe shows what a working match would
give, and why this one cannot: the sources correlate weakly across the galleries and the
whitened map is far from a rotation.

It also measures what any relational method (Gromov-Wasserstein, similarity-profile
matching as unsupervised word translation starts from) would have to work with: how much
the galleries agree on how the people relate to each other (their person means' cosine
similarities), across the two models and, as a ceiling, within one model on the two
halves of the photos.
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.stats import kurtosis, skew
from sklearn.decomposition import FastICA

from mapper.datasets.face_zoo import identity_of, identity_split, load_lfw_embeddings
from mapper.eval.metrics import tar_at_far_strict
from mapper.eval.pairing import old_new_rows

A_MODEL, B_MODEL, DIM = "sface-2021dec-int8bq", "face-reid-retail-0095", 64


def unit(x: np.ndarray) -> np.ndarray:
    # float64 throughout, not the library's l2_normalize (float32): FastICA's answer moves
    # with the last bits, and the guide's figures are this script's.
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def person_means(x: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    people = np.unique(ids)
    return people, np.array([x[ids == p].mean(0) for p in people])


def whitening(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = x.mean(0)
    _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
    return mean, vt[:DIM].T / s[:DIM] * np.sqrt(len(x))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--disjoint", action="store_true", help="the galleries hold different people")
    disjoint = ap.parse_args().disjoint
    names, emb = load_lfw_embeddings()
    ids = np.array([identity_of(str(n)) for n in names])
    fit = identity_split(names, 0.5, 0)
    old, new = (np.unique(r) for r in old_new_rows(ids[fit], 0))
    xa, ga = unit(emb[A_MODEL][fit][old].astype(np.float64)), ids[fit][old]
    xb, gb = unit(emb[B_MODEL][fit][new].astype(np.float64)), ids[fit][new]
    if disjoint:
        half = np.unique(ga)[: np.unique(ga).size // 2]
        keep_a, keep_b = np.isin(ga, half), ~np.isin(gb, half)
        xa, ga, xb, gb = xa[keep_a], ga[keep_a], xb[keep_b], gb[keep_b]
    (mean_a, white_a), (mean_b, white_b) = whitening(xa), whitening(xb)
    za, zb = (xa - mean_a) @ white_a, (xb - mean_b) @ white_b
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ica_a = FastICA(whiten=False, random_state=0, max_iter=1000).fit(za)
        ica_b = FastICA(whiten=False, random_state=0, max_iter=1000).fit(zb)
    sa, sb = ica_a.transform(za), ica_b.transform(zb)
    rows, cols = linear_sum_assignment(np.abs(kurtosis(sa)[:, None] - kurtosis(sb)[None, :]))
    perm = np.zeros((DIM, DIM))
    perm[rows, cols] = np.sign(skew(sa)[rows]) * np.sign(skew(sb)[cols])
    rotation = ica_a.components_.T @ perm @ np.linalg.pinv(ica_b.components_.T)

    people_a, means_a = person_means(xa, ga)
    people_b, means_b = person_means(xb, gb)
    qa, qb = (means_a - mean_a) @ white_a, (means_b - mean_b) @ white_b

    def mapped(x: np.ndarray, r: np.ndarray) -> np.ndarray:
        return ((x - mean_a) @ white_a) @ r @ np.linalg.pinv(white_b) + mean_b

    for _ in range(10):
        s = unit(qa @ rotation) @ unit(qb).T
        a2b, b2a = s.argmax(1), s.argmax(0)
        mutual = np.flatnonzero(b2a[a2b] == np.arange(len(qa)))
        u, _, vt = np.linalg.svd(qa[mutual].T @ qb[a2b[mutual]])
        rotation = u @ vt
    ea, eb = unit(emb[A_MODEL][~fit].astype(np.float64)), unit(emb[B_MODEL][~fit].astype(np.float64))
    ge = ids[~fit]
    i, j = np.triu_indices(len(ge), 1)
    same = ge[i] == ge[j]

    def tar(r: np.ndarray) -> float:
        scores = (unit(mapped(ea, r)) @ eb.T)[i, j]
        return tar_at_far_strict(scores[same], scores[~same], 1e-2)[0]

    matched = float((people_b[(unit(qa @ rotation) @ unit(qb).T).argmax(1)] == people_a).mean())
    print(
        f"people matched: {matched:.4f} (chance {1 / len(people_b):.4f}); "
        f"TAR@1e-2 unpaired: {tar(rotation):.4f}"
    )
    if disjoint:
        return
    common = np.intersect1d(people_a, people_b)
    la, lb = qa[np.searchsorted(people_a, common)], qb[np.searchsorted(people_b, common)]
    u, _, vt = np.linalg.svd(la.T @ lb)
    print(f"TAR@1e-2 with the true person links, same recipe: {tar(u @ vt):.4f}")
    corr = np.corrcoef(ica_a.transform(la).T, ica_b.transform(lb).T)[:DIM, DIM:]
    best = np.abs(corr).max(1)
    sv = np.linalg.svd(np.linalg.lstsq(la, lb, rcond=None)[0], compute_uv=False)
    print(
        f"each source's best |correlation| with the other gallery's: median {np.median(best):.2f}, "
        f"max {best.max():.2f}; the whitened linear map's singular values (1 for a rotation): "
        f"{sv.min():.2f}-{sv.max():.2f}"
    )
    at_a, at_b = np.searchsorted(people_a, common), np.searchsorted(people_b, common)
    same_model = person_means(unit(emb[A_MODEL][fit][new].astype(np.float64)), gb)[1][at_b]
    for what, other in ((B_MODEL, means_b[at_b]), (f"{A_MODEL} on the other photos", same_model)):
        print(f"{A_MODEL} against {what}: " + relational_agreement(means_a[at_a], other))


def relational_agreement(a: np.ndarray, b: np.ndarray) -> str:
    """How far two galleries' person means (row i of each: one person) agree on how people
    relate: the correlation of their cosine similarities, how often a person's nearest
    other person is the same, and how well each person's sorted similarities to everyone
    else (a signature that needs no alignment) find them in the other gallery."""
    centred = [unit(x - x.mean(0)) for x in (a, b)]
    sims = [z @ z.T - 2 * np.eye(len(z)) for z in centred]  # -2: a person is not their own neighbour
    i, j = np.triu_indices(len(a), 1)
    corr = np.corrcoef(sims[0][i, j], sims[1][i, j])[0, 1]
    nearest = np.mean(sims[0].argmax(1) == sims[1].argmax(1))
    profiles = []
    for s in sims:
        top = -np.sort(-s, axis=1)[:, :100]
        profiles.append(unit(top - top.mean(1, keepdims=True)))
    match = profiles[0] @ profiles[1].T
    rank = np.median((match > np.diag(match)[:, None]).sum(1))
    return (
        f"similarities correlate {corr:.2f}; same nearest person {nearest:.3f}; "
        f"similarity profiles find the person {np.mean(match.argmax(1) == np.arange(len(a))):.4f} "
        f"(chance {1 / len(a):.4f}), median rank {rank:.0f} of {len(a)}"
    )


if __name__ == "__main__":
    main()
