"""Calibrating a map's decision thresholds on cross-model pairs of the fitting people."""

from __future__ import annotations

import numpy as np

from mapper.core.calibration import Calibration, far_key
from mapper.core.maps import EmbeddingMap
from mapper.eval.metrics import STANDARD_FARS, tar_at_far_strict


def calibrate(m: EmbeddingMap, x_src: np.ndarray, x_dst: np.ndarray, ids: np.ndarray) -> Calibration:
    """Thresholds at the standard FARs (strict convention) over all pairs of the given images:
    row i of ``x_src`` (A's embedding, mapped) against row j of ``x_dst`` (B's), i < j,
    scored as the map records (cosine, centred or S-norm).

    x_src: (n, d_A); x_dst: (n, d_B); ids: (n,) identity of each image. FARs that fewer than
    one impostor pair can resolve are left out.
    """
    iu = np.triu_indices(len(ids), 1)
    scores = m.score_matrix(m.transform(x_src), x_dst)[iu]
    same = (ids[:, None] == ids[None, :])[iu]
    return Calibration(
        {
            far_key(f): tar_at_far_strict(scores[same], scores[~same], f)[2]
            for f in STANDARD_FARS
            if f * (~same).sum() >= 1
        }
    )
