"""Fitting without image pairs: identity pairs from one set of photos (--pairing identity)
and from two Parquet galleries of different photos (--old-gallery / --new-gallery)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors import safe_open

from mapper.cli import train
from mapper.core.maps import LinearMap
from mapper.core.validation import FitError
from mapper.datasets.face_zoo import identity_of
from mapper.datasets.gallery import read_gallery, write_gallery
from mapper.errors import InvalidInput
from mapper.eval.crossmodel import Scored, cross_model_eval, fit_maps
from mapper.eval.pairing import gallery_pairs, identity_pairs, image_pairs, old_new_rows
from mapper.eval.protocols import cross_gallery_pairs, lfw_all_pairs
from mapper.eval.selection import attach_scoring
from tools import pairing_gap
from tools.lfw_galleries import write_lfw_galleries

SFACE, REID = "sface-2021dec-int8bq", "face-reid-retail-0095"


@given(st.lists(st.integers(0, 12), min_size=1, max_size=60), st.integers(0, 2**16))
@settings(max_examples=60, deadline=None)
def test_identity_pairs_never_share_a_photo(people, seed):
    groups = np.array([f"p{p}" for p in people])
    counts = {p: int((groups == p).sum()) for p in set(groups)}
    if max(counts.values()) < 2:
        with pytest.raises(InvalidInput):
            old_new_rows(groups, seed)
        return
    old, new = old_new_rows(groups, seed)
    assert old.size == new.size
    assert (groups[old] == groups[new]).all()  # each pair is one person's
    assert not set(old) & set(new)  # no photo is on both sides
    for person, n in counts.items():
        used = np.r_[old, new][np.r_[groups[old], groups[new]] == person]
        if n < 2:
            assert used.size == 0
        else:  # ceil(n/2) pairs, every photo used
            assert (groups[old] == person).sum() == -(-n // 2)
            assert set(used) == set(np.flatnonzero(groups == person))


def test_identity_pairs_link_different_photos_of_real_people(lfw_embeddings):
    names = lfw_embeddings["names"][:600]
    ids = np.array([identity_of(str(n)) for n in names])
    emb = {SFACE: lfw_embeddings[SFACE][:600], REID: lfw_embeddings[REID][:600]}
    pairs = identity_pairs(emb, ids)
    assert pairs.pairing == "identity" and not pairs.shared_rows
    x, y = pairs.xy(SFACE, REID)
    old, new = old_new_rows(ids)
    np.testing.assert_array_equal(x, emb[SFACE][old])
    np.testing.assert_array_equal(y, emb[REID][new])
    # the same model's two sides of a pair are two photos: never the same template
    same_model = np.einsum(
        "ij,ij->i", *(e / np.linalg.norm(e, axis=1, keepdims=True) for e in pairs.xy(SFACE, SFACE))
    )
    assert same_model.max() < 0.999
    with pytest.raises(FitError, match="hub"):
        fit_maps(pairs, ("hub",), progress=False)


def test_simulated_identity_pairs_are_compared_one_way(lfw_embeddings):
    """From one set of photos the B -> A map's identity pairs are other photos than the A
    -> B map's, which no migration has (:mod:`mapper.core.twoway`): such maps are neither
    evaluated nor calibrated both ways; image pairs still are."""
    names = lfw_embeddings["names"][:800]
    ids = np.array([identity_of(str(n)) for n in names])
    fit = np.isin(ids, np.unique(ids)[::2])
    emb = {m: lfw_embeddings[m][:800] for m in (SFACE, REID)}
    protocol, evaluated = lfw_all_pairs(names[~fit]), {m: e[~fit] for m, e in emb.items()}
    fitting = {m: e[fit] for m, e in emb.items()}
    compare = Scored.compare("tuned")
    for pairs in (identity_pairs(fitting, ids[fit]), image_pairs(fitting, ids[fit])):
        maps = {
            (a, b, "tuned"): attach_scoring(
                LinearMap(source_id=a, target_id=b).fit(*pairs.xy(a, b)), "snorm", *pairs.xy(a, b)
            )
            for a, b in ((SFACE, REID), (REID, SFACE))
        }
        _, two_way = train.calibrate_maps(pairs, maps, None)
        auc = {  # A -> B's Compare, scored one way, both ways, and as the pairs allow
            how: cross_model_eval(
                evaluated, protocol, maps, kinds=(compare,), both_ways=both, progress=False
            ).auc[compare][0, 1]
            for how, both in (("one", False), ("both", True), ("allowed", pairs.shared_rows))
        }
        assert auc["one"] != auc["both"]  # the reverse map changes the scores
        if pairs.shared_rows:
            assert set(two_way) == set(maps) and auc["allowed"] == auc["both"]
        else:  # the same one-way scores, bit for bit
            assert two_way == {} and auc["allowed"] == auc["one"]


def test_gallery_pairs_join_people_in_both_galleries():
    rng = np.random.default_rng(0)
    xa, xb = rng.standard_normal((6, 4)), rng.standard_normal((5, 3))
    pa_ = np.array(["ann", "ann", "ann", "bob", "cy", "dee"])
    pb_ = np.array(["bob", "bob", "ann", "cy", "eve"])
    pairs = gallery_pairs(("A", xa, pa_), ("B", xb, pb_), np.array(["ann", "bob", "eve"]))
    assert pairs.shared_rows and list(pairs.groups) == ["ann"] * 3 + ["bob"] * 2  # eve: not in A
    np.testing.assert_array_equal(pairs.source["A"], xa[[0, 1, 2, 3, 3]])
    np.testing.assert_array_equal(pairs.source["B"], xb[[2, 2, 2, 0, 1]])
    with pytest.raises(InvalidInput, match="both galleries"):
        gallery_pairs(("A", xa, pa_), ("B", xb, pb_), np.array(["dee", "eve"]))


def test_gallery_file_rows_that_cannot_be_used_are_counted(tmp_path):
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    write_gallery(tmp_path / "g.parquet", ["a", "b", "c", "d"], ["p", "p", "q", "q"], x)
    g = read_gallery(tmp_path / "g.parquet")
    np.testing.assert_array_equal(g.embeddings, x)
    assert list(g.persons) == ["p", "p", "q", "q"] and g.rejected == {}
    table = pa.table(
        {
            "id": ["a", "b", "c", "d", None],
            "who": ["p", None, "q", "q", "q"],
            "vec": [
                x[0].tobytes(),
                x[1].tobytes(),
                np.full(3, np.nan, np.float32).tobytes(),
                b"\0" * 8,
                x[3].tobytes(),
            ],
        }
    )
    pq.write_table(table, tmp_path / "bad.parquet")
    g = read_gallery(tmp_path / "bad.parquet", person_column="who", embedding_column="vec")
    assert list(g.ids) == ["a"]
    assert g.rejected == {
        "missing person": 1,
        "NaN or Inf in embedding": 1,
        "wrong dimension or unreadable embedding": 1,
        "missing id": 1,
    }
    with pytest.raises(InvalidInput, match="columns"):
        read_gallery(tmp_path / "bad.parquet")  # no "person" column


@pytest.fixture(scope="module")
def galleries(lfw_embeddings, tmp_path_factory):
    """An old SFace gallery and new face-reid enrolments of other photos of the same LFW
    people, and 40 people in the old gallery only."""
    tmp = tmp_path_factory.mktemp("galleries")
    names = lfw_embeddings["names"][:2500]
    old, new = write_lfw_galleries(tmp, SFACE, REID, names=names, embeddings=lfw_embeddings, singles=40)
    return tmp, names, old, new


def test_train_from_galleries(galleries):
    tmp, names, old, new = galleries
    assert not set(names[old]) & set(names[new])  # no photo in both galleries
    args = ["--old-gallery", str(tmp / "old.parquet"), "--new-gallery", str(tmp / "new.parquet")]
    out = tmp / "run"
    code = train.main(
        [*args, "--models", SFACE, REID, "--kinds", "linear", "rotation", "--out", str(out), "--no-progress"]
    )
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    summary = results["summary"]
    assert summary["linear"]["0.01"] > 0.8 > 0.05 > summary["none"]["0.01"]
    assert set(results["far_check"]) >= {"native", "linear", "linear:translate"}
    assert "identity pairs" in (out / "report.md").read_text()
    with safe_open(out / "maps" / f"{SFACE}__{REID}.linear.safetensors", "np") as f:
        provenance = json.loads(f.metadata()["mapper"])["provenance"]
    assert provenance["pairing"] == "identity"
    # one pair or more per fitting person, never more than the old and new templates there are
    assert provenance["fit_identities"] <= provenance["fit_pairs"] <= old.size + new.size
    assert (out / "maps" / f"{REID}__{SFACE}.linear.safetensors").exists()  # and back


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--models", SFACE], "two models"),
        (["--models", SFACE, REID, "--pairing", "image"], "identity pairs"),
        (["--models", SFACE, REID, "--full"], "--full"),
        (["--models", SFACE, REID, "--kinds", "hub"], "hub"),
    ],
)
def test_gallery_settings_that_cannot_work_are_refused(galleries, extra, message):
    tmp = galleries[0]
    with pytest.raises(SystemExit, match=message):
        train.main(
            ["--old-gallery", str(tmp / "old.parquet"), "--new-gallery", str(tmp / "new.parquet"), *extra]
        )
    with pytest.raises(SystemExit, match="both"):
        train.main(["--old-gallery", str(tmp / "old.parquet"), "--models", SFACE, REID])


def test_a_gallery_of_another_model_is_refused(galleries):
    tmp = galleries[0]
    args = ["--old-gallery", str(tmp / "new.parquet"), "--new-gallery", str(tmp / "old.parquet")]
    with pytest.raises(SystemExit, match="256-d templates, but"):
        train.main([*args, "--models", SFACE, REID, "--out", str(tmp / "x"), "--no-progress"])


def test_identity_pairing_on_lfw(tmp_path, face_zoo):
    out = tmp_path / "run"
    code = train.main(
        [
            "--embeddings",
            str(face_zoo / "embeddings" / "lfw-embeddings.npz"),
            "--images",
            "1200",
            "--models",
            SFACE,
            REID,
            "--pairing",
            "identity",
            "--kinds",
            "linear",
            "--no-security",
            "--pairing-study",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert results["provenance"]["pairing"] == "identity"
    study = results["pairing_study"]
    assert (out / "pairing.png").exists() and "Image pairs or identity pairs" in (
        out / "report.md"
    ).read_text()
    assert study["pairs"] == sorted(study["pairs"]) and set(study["tar"]) == {"image", "identity"}
    assert len(study["people"]) == len(study["pairs"]) and study["people"] == sorted(study["people"])
    assert study["people"][-1] < study["pairs"][-1]  # a person with 3+ photos makes 2+ pairs
    assert set(study["compare"]) == {"image", "identity"}  # Compare by llr on the same pairs
    for curve in [*study["tar"].values(), *study["compare"].values()]:
        assert curve["0.01"][-1] > curve["0.01"][0]  # more pairs, better maps: the last point beats the first
    # the few-shot curve draws identity pairs too: its last point is every one of them
    n_pairs = results["provenance"]["fit_pairs"]
    assert results["fewshot"]["pairs"][-1] == n_pairs < results["provenance"]["fit_images"]
    assert results["summary"]["linear"]["0.01"] > 0.7
    with pytest.raises(SystemExit, match="hub"):
        train.load_config(["--pairing", "identity", "--kinds", "hub"])
    with pytest.raises(SystemExit, match="unlinked galleries"):
        train.load_config(["--pairing", "none"])
    assert "hub" not in train.load_config(["--pairing", "identity"]).kinds  # the default kinds, less the hub


def test_pairing_gap_grows_the_fitting_people_and_keeps_the_evaluation_people(
    tmp_path, face_zoo, monkeypatch
):
    out = tmp_path / "gap.json"
    argv = ["--models", SFACE, REID, "--kinds", "linear", "--fit-fraction", "0.9", "--people", "0.4", "1"]
    monkeypatch.setattr(
        "sys.argv", ["pairing_gap", *argv, "--plot", str(tmp_path / "gap.png"), "--json", str(out)]
    )
    pairing_gap.main()
    small, full = json.loads(out.read_text())
    assert (small["share"], full["share"]) == (0.4, 1.0) and (tmp_path / "gap.png").stat().st_size > 0
    assert small["reenrolled"] < full["reenrolled"] and small["pairs"] < full["pairs"]
    # the same evaluation people (native is computed the same way on the same photos)
    assert small["summary"]["image"]["native"] == full["summary"]["image"]["native"]
    for pairing in ("image", "identity"):  # more people, better maps
        assert full["summary"][pairing]["linear"]["0.01"] > small["summary"][pairing]["linear"]["0.01"]


@given(
    st.lists(st.integers(0, 6), min_size=2, max_size=40),
    st.lists(st.integers(0, 6), min_size=1, max_size=40),
    st.booleans(),
    st.integers(1, 300),
)
@settings(max_examples=80, deadline=None)
def test_cross_gallery_pairs_keep_every_genuine_pair_and_sample_impostors(a, b, within, limit):
    ids_a = np.array([f"p{p}" for p in a])
    ids_b = None if within else np.array([f"p{p}" for p in b])
    i, j, same = cross_gallery_pairs(ids_a, ids_b, max_impostors=limit, rng=np.random.default_rng(0))
    other = ids_a if within else ids_b
    every = {(x, y) for x in range(len(ids_a)) for y in range(len(other)) if not within or x < y}
    genuine = {(x, y) for x, y in every if ids_a[x] == other[y]}
    got = list(zip(i.tolist(), j.tolist(), strict=True))
    assert len(set(got)) == len(got) and set(got) <= every  # distinct pairs, i < j within one gallery
    np.testing.assert_array_equal(same, ids_a[i] == other[j])
    assert {p for p, s in zip(got, same, strict=True) if s} == genuine
    assert (~same).sum() == min(limit, len(every) - len(genuine))
