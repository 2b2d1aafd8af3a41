"""The closed-form map between two classifiers' embedding spaces, from their final layers.

For two networks trained on the same classes with linear softmax heads
(``logits = W @ e + b``), a map ``e_B = M e_A + c`` keeps every prediction when B's logits
on the mapped embedding equal A's logits up to a constant per input (softmax ignores a
common shift). With ``C`` the centring over classes, that is ``C W_B M = C W_A`` and
``C W_B c = C (b_A - b_B)``, solved by least squares with the pseudo-inverse, which also
copes with a rank-deficient head. No images are needed.

The solution is exact when the centred head ``C W_B`` has full row rank (k - 1 for k
classes), which needs ``d_B >= k - 1``: e.g. every 1280-d head of 1,000 classes. With a
smaller ``d_B`` it is the least-squares best and ``fit_info_`` reports how far it is off.
"""

from __future__ import annotations

import numpy as np

from mapper.core.maps import AffineMap
from mapper.errors import FitError


def _centred(W: np.ndarray, b: np.ndarray, k: int, name: str) -> tuple[np.ndarray, np.ndarray]:
    W, b = np.asarray(W, np.float64), np.asarray(b, np.float64)
    if (
        W.ndim != 2
        or W.shape[0] != k
        or b.shape != (k,)
        or not (np.isfinite(W).all() and np.isfinite(b).all())
    ):
        raise FitError(
            f"{name} head must be a finite (classes, dim) weight and (classes,) bias over {k} classes"
        )
    return W - W.mean(0), b - b.mean()


def head_map(
    W_source: np.ndarray,
    b_source: np.ndarray,
    W_target: np.ndarray,
    b_target: np.ndarray,
    *,
    source_id: str | None = None,
    target_id: str | None = None,
) -> AffineMap:
    """The map from the source's embeddings into the target's whose target-head logits
    equal the source-head logits (up to a shift), as an :class:`AffineMap`.

    W_source: (k, d_source), b_source: (k,); W_target: (k, d_target), b_target: (k,),
    rows in the same class order. ``fit_info_`` holds the target head's rank and the
    relative residual of the logits (0 when exact).
    """
    k = np.asarray(W_source).shape[0]
    Wa, ba = _centred(W_source, b_source, k, "source")
    Wb, bb = _centred(W_target, b_target, k, "target")
    pinv = np.linalg.pinv(Wb)  # (d_target, k)
    M = pinv @ Wa  # (d_target, d_source)
    c = pinv @ (ba - bb)
    residual = np.linalg.norm(Wb @ M - Wa) / max(np.linalg.norm(Wa), 1e-300)
    info = {
        "fitted_from": "final layers (closed form)",
        "classes": int(k),
        "target_head_rank": int(np.linalg.matrix_rank(Wb)),
        "logit_residual": float(residual),
        "bias_residual": float(np.linalg.norm(Wb @ c - (ba - bb)) / max(np.linalg.norm(ba - bb), 1e-300)),
    }
    return AffineMap.from_params(
        M.T,
        np.zeros(Wa.shape[1]),
        c,
        fit_info=info,
        center=False,
        normalize_input=False,
        normalize_output=False,
        source_id=source_id,
        target_id=target_id,
    )
