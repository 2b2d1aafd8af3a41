"""Unequal embedding dimensions, 128 to 1024 as among the ten models, through every map
kind, the hub, a map file and the service."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from mapper import CanonicalSpace, LinearMap, MLPMap, RotationMap
from mapper.core import mapfile
from mapper.serving.sqlite import SQLiteMapStore

from .servers import start_server

rng = np.random.default_rng(21)
N = 1500
Z = rng.standard_normal((N, 64))  # a shared identity code seen through three "models"
SPACES = {d: Z @ rng.standard_normal((64, d)) + 0.05 * rng.standard_normal((N, d)) for d in (128, 512, 1024)}
FIT, TEST = slice(0, 1200), slice(1200, N)


def agreement(y: np.ndarray, target: np.ndarray) -> float:
    """Mean cosine between mapped rows and the target model's own rows."""
    t = target - target.mean(0)
    y = y - y.mean(0)
    return float(np.mean(np.einsum("ij,ij->i", y, t) / np.linalg.norm(y, axis=1) / np.linalg.norm(t, axis=1)))


@pytest.mark.parametrize("kind", ["linear", "rotation", "mlp"])
@pytest.mark.parametrize(("d_in", "d_out"), [(128, 1024), (1024, 128), (512, 128)])
def test_every_map_kind_maps_across_dimensions(kind, d_in, d_out):
    x, y = SPACES[d_in], SPACES[d_out]
    cls = {"linear": LinearMap, "rotation": RotationMap, "mlp": MLPMap}[kind]
    params = {"hidden": (256,)} if kind == "mlp" else {}  # the default 300 epochs
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = cls(source_id=f"m{d_in}", target_id=f"m{d_out}", **params).fit(x[FIT], y[FIT])
    out = m.transform(x[TEST].astype(np.float32))
    assert out.shape == (N - 1200, d_out) and out.dtype == np.float32
    # Rotations keep at most min(d_in, d_out) directions of a 64-d code: still well above 0.
    assert agreement(out, y[TEST]) > (0.5 if kind == "rotation" else 0.8), kind
    loaded = mapfile.loads(mapfile.dumps(m))
    np.testing.assert_allclose(loaded.transform(x[TEST].astype(np.float32)), out, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_hub_over_128_512_1024():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hub = CanonicalSpace(legs="linear").fit({f"m{d}": s[FIT] for d, s in SPACES.items()})
    for a in SPACES:
        for b in SPACES:
            if a != b:
                y = hub.translate(SPACES[a][TEST], f"m{a}", f"m{b}")
                assert y.shape == (N - 1200, b) and agreement(y, SPACES[b][TEST]) > 0.8, (a, b)


def test_service_translates_and_compares_128_to_1024(tmp_path):
    store = SQLiteMapStore(tmp_path / "maps.sqlite")
    store.publish(
        mapfile.dumps(LinearMap(source_id="m128", target_id="m1024").fit(SPACES[128][FIT], SPACES[1024][FIT]))
    )
    store.publish(
        mapfile.dumps(LinearMap(source_id="m1024", target_id="m128").fit(SPACES[1024][FIT], SPACES[128][FIT]))
    )
    srv = start_server(tmp_path, tmp_path / "maps.sqlite")
    try:
        with srv.client() as c:
            assert c.list_models() == {"m128": 128, "m1024": 1024}
            y, ref = c.translate(SPACES[128][TEST].astype(np.float32), "m128", "m1024")
            assert y.shape == (N - 1200, 1024) and ref.map_id == "m128->m1024:linear"
            back, _ = c.translate(SPACES[1024][TEST].astype(np.float32), "m1024", "m128")
            assert back.shape == (N - 1200, 128)
            scores = c.compare(
                SPACES[1024][TEST][:20].astype(np.float32),
                "m1024",
                SPACES[128][TEST][:20].astype(np.float32),
                "m128",
            ).scores
            assert scores.shape == (20,) and scores.mean() > 0.8
    finally:
        srv.stop()
