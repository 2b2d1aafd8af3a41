"""CanonicalSpace: composition through the hub, adding a model, real embeddings."""

from __future__ import annotations

import numpy as np
import pytest

from mapper import CanonicalSpace, LinearMap, RotationMap
from mapper.core.validation import EmbeddingError, FitError
from mapper.errors import UnknownModelError

from .conftest import random_orthogonal


def planted_models(rng, n=600, latent=24, dims=(24, 32, 40), linear=False):
    """Models that are exact (semi-)orthogonal or linear images of one latent space."""
    Z = rng.standard_normal((n, latent))
    out = {}
    for k, d in enumerate(dims):
        if linear:
            A = rng.standard_normal((latent, d))
        else:
            A = random_orthogonal(rng, d)[:latent]  # orthonormal rows: latent -> d
        out[f"m{k}"] = Z @ A + rng.standard_normal(d)  # each model has its own mean
    return out


RAW = {"normalize_input": False, "normalize_output": False}
# Planted models wider than their latent space are rank-deficient by construction.
pytestmark = pytest.mark.filterwarnings("ignore::mapper.UnderdeterminedWarning")


def test_hub_composition_equals_direct_rotation_on_consistent_data():
    models = planted_models(np.random.default_rng(0))
    hub = CanonicalSpace(legs="rotation", **RAW).fit(models)
    for a in models:
        for b in models:
            if a == b:
                continue
            direct = RotationMap(**RAW).fit(models[a], models[b]).transform(models[a])
            np.testing.assert_allclose(hub.translate(models[a], a, b), direct, atol=1e-8)
            np.testing.assert_allclose(direct, models[b], atol=1e-8)


def test_hub_composition_equals_direct_linear_on_consistent_data():
    models = planted_models(np.random.default_rng(1), dims=(24, 24, 30), linear=True)
    hub = CanonicalSpace(legs="linear", alpha=1e-10, **RAW).fit(models)
    for a in models:
        for b in models:
            if a != b:
                direct = LinearMap(alpha=1e-10, **RAW).fit(models[a], models[b])
                np.testing.assert_allclose(
                    hub.translate(models[a], a, b), direct.transform(models[a]), atol=1e-6
                )


def test_add_model_leaves_existing_legs_unchanged():
    rng = np.random.default_rng(2)
    models = planted_models(rng, dims=(24, 32, 40, 28))
    new = models.pop("m3")
    hub = CanonicalSpace(**RAW).fit(models)
    before = {m: [leg.weight_.copy() for leg in legs] for m, legs in hub.legs_.items()}
    hub.add_model("m3", new, references={"m0": models["m0"], "m1": models["m1"]})
    for m, weights in before.items():
        for leg, w in zip(hub.legs_[m], weights, strict=True):
            assert np.array_equal(leg.weight_, w)  # untouched arrays: exact by construction
    assert hub.models_ == ["m0", "m1", "m2", "m3"]
    np.testing.assert_allclose(hub.translate(new, "m3", "m2"), models["m2"], atol=1e-8)
    np.testing.assert_allclose(hub.translate(models["m0"], "m0", "m3"), new, atol=1e-8)


def test_hub_errors():
    rng = np.random.default_rng(3)
    models = planted_models(rng)
    with pytest.raises(FitError, match="at least 2 models"):
        CanonicalSpace().fit({"m0": models["m0"]})
    with pytest.raises(EmbeddingError, match="same images"):
        CanonicalSpace().fit({"m0": models["m0"], "m1": models["m1"][:-1]})
    hub = CanonicalSpace().fit(models)
    with pytest.raises(UnknownModelError, match="not in hub"):
        hub.translate(models["m0"], "m0", "nope")
    with pytest.raises(ValueError, match="legs"):
        CanonicalSpace(legs="magic").fit(models)


@pytest.mark.slow
def test_hub_on_real_models_is_close_to_direct_maps(lfw_embeddings):
    from sklearn.metrics import roc_auc_score

    names = ["dlib-resnet-v1", "sface-2021dec-int8bq", "face-reid-retail-0095", "mobilefacenet-arcface"]
    ids = np.array([n.rsplit("_", 1)[0] for n in lfw_embeddings["names"]])
    fit = np.isin(ids, np.unique(ids)[1::2])
    hub = CanonicalSpace().fit({m: lfw_embeddings[m][fit] for m in names})
    ev = np.flatnonzero(~fit)[:1200]
    iu = np.triu_indices(len(ev), 1)
    same = (ids[ev][:, None] == ids[ev][None, :])[iu]
    a, b = "face-reid-retail-0095", "mobilefacenet-arcface"
    target = lfw_embeddings[b][ev] / np.linalg.norm(lfw_embeddings[b][ev], axis=1, keepdims=True)
    hub_auc = roc_auc_score(same, (hub.translate(lfw_embeddings[a][ev], a, b) @ target.T)[iu])
    direct = RotationMap().fit(lfw_embeddings[a][fit], lfw_embeddings[b][fit])
    direct_auc = roc_auc_score(same, (direct.transform(lfw_embeddings[a][ev]) @ target.T)[iu])
    assert hub_auc > 0.99
    assert abs(hub_auc - direct_auc) < 0.01
