"""Decision thresholds: each promised FAR is an upper confidence bound of the calibration
sample's false accepts, so that it holds on new people, not only on average."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binomtest, norm

from mapper.core.calibration import far_key
from mapper.eval.thresholds import CONFIDENCE, allowed_false_accepts, thresholds


@pytest.mark.parametrize("n", [2_000, 29_955, 29_956, 100_000, 1_234_567])
@pytest.mark.parametrize("far", [1e-2, 1e-3, 1e-4])
def test_allowed_false_accepts_is_the_largest_count_whose_clopper_pearson_bound_holds(n, far):
    c = allowed_false_accepts(far, n)

    def bound(k: int) -> float:  # scipy's exact (Clopper-Pearson) interval, one-sided
        return binomtest(k, n).proportion_ci(confidence_level=2 * CONFIDENCE - 1, method="exact").high

    if c is None:
        assert bound(0) > far
    else:
        assert bound(c) <= far < bound(c + 1)
        assert c < far * n  # always stricter than the point estimate


def test_thresholds_keep_their_far_on_new_samples_at_the_stated_confidence():
    # Impostor scores from a known distribution: a threshold's true FAR is norm.sf(t).
    far, n, trials = 1e-3, 100_000, 300
    rng = np.random.default_rng(0)
    genuine = np.ones(10, np.float32)
    over_bounded = over_point = 0
    for _ in range(trials):
        impostor = rng.standard_normal(n)
        t_bounded = thresholds(genuine, impostor).threshold(far)
        t_point = thresholds(genuine, impostor, confidence=0.5).threshold(far)
        over_bounded += norm.sf(t_bounded) > far
        over_point += norm.sf(t_point) > far
    # 5% expected (binomial sd 1.3% over 300 trials); the point estimate is over about half the time.
    assert over_bounded / trials < 0.1
    assert over_point / trials > 0.3


def test_fars_a_sample_cannot_bound_are_not_offered():
    impostor = np.random.default_rng(1).standard_normal(20_000)
    offered = thresholds(np.ones(3), impostor).thresholds
    # 20,000 pairs bound 1e-3 (about 3,000 needed) but not 1e-4 (about 30,000).
    assert far_key(1e-3) in offered and far_key(1e-4) not in offered
