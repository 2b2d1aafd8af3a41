"""Compare both ways: a pair (a of model A, b of model B) scored by the A -> B map in B's
space and by the B -> A map in A's space, and the two scores averaged.

Each side still uses only its own model's template, so the protocol stays what a user
buys (A's template against B's). The two maps err differently; measured on LFW (four
models, tuned maps with S-norm, 12 ordered pairs), the average verifies at 0.9416 /
0.8564 TAR at FAR 1e-3 / 1e-4 where one way gives 0.9324 / 0.8390. Its scores have their
own distribution, so they get their own thresholds (``mapper.eval.thresholds``), stored in
the A -> B file with the id and :func:`~mapper.core.mapfile.fingerprint` of the B -> A map
they were calibrated with: a server scores both ways only while that very map is served.

Both maps must be fitted on one set of pairs, as a deployment fits them. Identity pairs
simulated from one set of photos (``mapper-train --pairing identity`` on LFW) give the B ->
A map other photos (B's old half, A's new half), photos A never embeds in a migration:
averaging it in scored 0.9310 TAR at FAR 1e-3 where the pairs a deployment has give 0.9154
(four models, llr, docs/guides/pairing.md). Such maps are evaluated and calibrated one way
(``Pairs.shared_rows``); galleries' identity pairs and image pairs share their rows.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from mapper.core.maps import EmbeddingMap

#: Where a map file keeps its two-way thresholds: ``metadata["provenance"][KEY]`` =
#: {"reverse_id": the B -> A map's id, "reverse": its fingerprint, "thresholds": {FAR key:
#: threshold}}.
KEY = "calibration_two_way"
#: Kinds whose Compare the trainer calibrates both ways (the maps made for Compare).
KINDS = ("tuned",)


def reverse_of(
    maps: Mapping[tuple[str, str, str], EmbeddingMap], a: str, b: str, kind: str
) -> EmbeddingMap | None:
    """The B -> A map that scores A -> B's pairs with it, if ``kind`` is scored both ways
    and ``maps`` ({(A, B, kind): map}) holds one."""
    return maps.get((b, a, kind)) if kind in KINDS else None


def two_way_rows(forward: EmbeddingMap, reverse: EmbeddingMap, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(n,) scores of row i of ``a`` (n, d_A) against row i of ``b`` (n, d_B): the mean of
    ``forward`` (A -> B) scoring in B's space and ``reverse`` (B -> A) in A's."""
    there = forward.score_rows(forward.compare_input(a), b)
    back = reverse.score_rows(reverse.compare_input(b), a)
    return (there + back) / 2


def two_way_matrix(forward: EmbeddingMap, reverse: EmbeddingMap, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(n_a, n_b) scores of every row of ``a`` against every row of ``b``, as :func:`two_way_rows`."""
    there = forward.score_matrix(forward.compare_input(a), b)
    back = reverse.score_matrix(reverse.compare_input(b), a)
    return (there + back.T) / 2
