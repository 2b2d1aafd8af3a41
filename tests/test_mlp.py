"""MLPMap: beats a linear map where the planted relation is non-linear; its linear path is
the ridge map; training is repeatable."""

from __future__ import annotations

import numpy as np

from mapper import LinearMap, MLPMap


def test_mlp_fits_nonlinear_relation_better_than_linear():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((2000, 16))
    Xt = rng.standard_normal((500, 16))
    A = rng.standard_normal((16, 8))
    Y, Yt = np.tanh(X @ A), np.tanh(Xt @ A)
    raw = {"normalize_input": False, "normalize_output": False}
    mlp = MLPMap(hidden=(128,), epochs=400, lr=3e-3, **raw).fit(X, Y)
    lin = LinearMap(**raw).fit(X, Y)
    mse_mlp = ((mlp.transform(Xt) - Yt) ** 2).mean()
    mse_lin = ((lin.transform(Xt) - Yt) ** 2).mean()
    assert mse_mlp < 0.6 * mse_lin


def test_mlp_training_is_repeatable():
    rng = np.random.default_rng(1)
    X, Y = rng.standard_normal((200, 8)), rng.standard_normal((200, 4))
    a = MLPMap(hidden=(16,), epochs=10).fit(X, Y)
    b = MLPMap(hidden=(16,), epochs=10).fit(X, Y)
    # Seeded: the same weights up to thread-order rounding in torch's reductions.
    np.testing.assert_allclose(a.transform(X), b.transform(X), rtol=1e-5, atol=1e-6)


def test_mlp_linear_path_is_the_ridge_map():
    """The hidden layers correct the ridge map (alpha by the same CV), so the file holds no
    linear layer fitted more closely to the fitting people than ridge (issue 20)."""
    rng = np.random.default_rng(2)
    X, Y = rng.standard_normal((300, 12)), rng.standard_normal((300, 6))
    groups = np.repeat(np.arange(100), 3)
    mlp = MLPMap(hidden=(16,), epochs=5).fit(X, Y, groups=groups)
    lin = LinearMap().fit(X, Y, groups=groups)
    assert mlp.fit_info_["alpha"] == lin.alpha_
    np.testing.assert_allclose(mlp.weight_, lin.weight_, rtol=1e-9, atol=1e-12)
