"""Templates as IJB-C practitioners build them, and fast scoring of template pairs."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from mapper.core.maps import EmbeddingMap
from mapper.core.validation import check_embeddings, l2_normalize
from mapper.errors import InvalidInput


def pool_templates(
    features: np.ndarray,
    template_ids: np.ndarray,
    media_ids: np.ndarray,
    *,
    flip_features: np.ndarray | None = None,
    detector_scores: np.ndarray | None = None,
    normalize_images: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """(sorted unique template ids (T,), (T, d) L2-normalised templates).

    features: (n, d) one row per face image. Media feature = mean of its images; template
    = sum of its media features, then L2-normalised. Options: ``flip_features`` (features
    of the mirrored images) are added to the features (flip-sum); ``detector_scores``
    weight each image; ``normalize_images`` L2-normalises each image first. The common
    IJB-C evaluation code keeps the per-image norm as a quality weight: the default.
    """
    x = check_embeddings(features, name="features").astype(np.float32, copy=True)
    if flip_features is not None:
        x += check_embeddings(flip_features, name="flip_features", dim=x.shape[1])
    if normalize_images:
        l2_normalize(x, copy=False)
    if detector_scores is not None:
        x *= np.asarray(detector_scores, np.float32)[:, None]
    template_ids = np.asarray(template_ids)
    media_ids = np.asarray(media_ids)
    if not (len(template_ids) == len(media_ids) == len(x)):
        raise InvalidInput("features, template_ids and media_ids need one row per image")
    # Media are (template, media) pairs: a media id may appear in several templates.
    order = np.lexsort((media_ids, template_ids))
    t, m, xs = template_ids[order], media_ids[order], x[order]
    new_media = np.r_[True, (t[1:] != t[:-1]) | (m[1:] != m[:-1])]
    starts = np.flatnonzero(new_media)
    counts = np.diff(np.r_[starts, len(t)])
    media = np.add.reduceat(xs, starts, axis=0) / counts[:, None]
    media_template = t[starts]
    new_template = np.r_[True, media_template[1:] != media_template[:-1]]
    tstarts = np.flatnonzero(new_template)
    templates = np.add.reduceat(media, tstarts, axis=0)
    return media_template[tstarts], l2_normalize(templates, copy=False)


def pair_scores(
    A: np.ndarray,
    B: np.ndarray,
    i: np.ndarray,
    j: np.ndarray,
    *,
    block: int = 2048,
    matrix: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
) -> np.ndarray:
    """Scores ``A[i[k]] . B[j[k]]`` for every pair k, float32, in bounded memory; with
    ``matrix(A_rows, B)`` (e.g. a map's :meth:`score_matrix`) that score instead of the dot.

    Gathering both rows of every pair reads 2 * 4 * d bytes per pair (64 GB for IJB-C's
    15.7M pairs at d = 512). Instead, rows of A are taken ``block`` at a time, multiplied
    with all of B as one matrix product (fast BLAS), and each pair picks its entry: memory
    is ``block`` x len(B) floats, and the work is one dense A B^T.
    """
    A = np.ascontiguousarray(A, np.float32)
    B = np.ascontiguousarray(B, np.float32)
    i = np.asarray(i, np.int64)
    j = np.asarray(j, np.int64)
    out = np.empty(len(i), np.float32)
    blocks = (i // block).astype(np.int32 if len(A) // block > 32000 else np.int16)
    order = np.argsort(blocks, kind="stable")  # radix sort on small integers: O(n)
    bounds = np.searchsorted(blocks[order], np.arange(0, (len(A) + block - 1) // block + 1))
    BT = np.ascontiguousarray(B.T)
    for b in range(len(bounds) - 1):
        sel = order[bounds[b] : bounds[b + 1]]
        if sel.size == 0:
            continue
        rows = A[b * block : (b + 1) * block]
        gram = rows @ BT if matrix is None else matrix(rows, B)
        out[sel] = gram[i[sel] - b * block, j[sel]]
    return out


def compare_scores(
    m: EmbeddingMap,
    x: np.ndarray,
    y: np.ndarray,
    i: np.ndarray,
    j: np.ndarray,
    reverse: EmbeddingMap | None = None,
) -> np.ndarray:
    """Compare's scores of the pairs (x[i[k]] of model A, y[j[k]] of model B): ``m``'s
    (A -> B) scoring in B's space; with ``reverse`` (B -> A), both ways
    (:mod:`mapper.core.twoway`). x: (n_a, d_A), y: (n_b, d_B) templates."""
    s = pair_scores(l2_normalize(m.compare_input(x)), l2_normalize(y), i, j, matrix=m.score_matrix)
    if reverse is not None:
        back = l2_normalize(reverse.compare_input(y))
        s = (s + pair_scores(back, l2_normalize(x), j, i, matrix=reverse.score_matrix)) / 2
    return s
