"""Protocol files, templates and pair scoring, each against a plain reference."""

from __future__ import annotations

import numpy as np
import pytest

from mapper.datasets.face_zoo import identity_of, identity_split
from mapper.eval.protocols import (
    FACE_TID_MID,
    NAME_5PTS,
    TEMPLATE_PAIRS,
    lfw_all_pairs,
    read_ijbc,
    write_ijbc,
)
from mapper.eval.templates import pair_scores, pool_templates


def test_ijbc_round_trip_and_landmarks(tmp_path):
    names = np.array(["1/a.jpg", "1/b.jpg", "2/c.jpg"])
    (tmp_path / FACE_TID_MID).write_text("1/a.jpg 10 100\n1/b.jpg 10 101\n2/c.jpg 20 200\n")
    (tmp_path / TEMPLATE_PAIRS).write_text("10 20 0\n10 10 1\n")
    (tmp_path / NAME_5PTS).write_text(
        "2/c.jpg " + " ".join(["1"] * 10) + " 0.9\n1/a.jpg " + " ".join(["2"] * 10) + " 0.8\n"
        "1/b.jpg " + " ".join(["3"] * 10) + " 0.7\n"
    )
    p = read_ijbc(tmp_path)
    assert list(p.images) == list(names) and list(p.template_ids) == [10, 10, 20]
    assert p.pairs.tolist() == [[10, 20], [10, 10]] and p.labels.tolist() == [False, True]
    assert p.landmarks.shape == (3, 5, 2) and p.landmarks[0, 0, 0] == 2 and p.scores[1] == pytest.approx(0.7)
    write_ijbc(tmp_path / "copy", p)
    q = read_ijbc(tmp_path / "copy")
    assert np.array_equal(q.pairs, p.pairs) and np.array_equal(q.media_ids, p.media_ids)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        (TEMPLATE_PAIRS, "10 20 0\n10 20\n", r"ijbc_template_pair_label.txt.*row 2"),
        (TEMPLATE_PAIRS, "10 20 0\n10 x 1\n", r"ijbc_template_pair_label.txt"),
        (TEMPLATE_PAIRS, "10 20 0\n10 20 7\n", r"ijbc_template_pair_label.txt:2: label"),
        (TEMPLATE_PAIRS, "10 99 0\n", r"ijbc_template_pair_label.txt:1: template id"),
        (FACE_TID_MID, "a.jpg 10 100\nb.jpg 10\n", r"ijbc_face_tid_mid.txt:2: expected 3 columns"),
        (FACE_TID_MID, "a.jpg 10 100\nb.jpg ten 1\n", r"ijbc_face_tid_mid.txt:2: column 2"),
    ],
)
def test_malformed_files_name_file_and_line(tmp_path, name, content, message):
    (tmp_path / FACE_TID_MID).write_text("a.jpg 10 100\nb.jpg 20 200\n")
    (tmp_path / TEMPLATE_PAIRS).write_text("10 20 0\n")
    (tmp_path / name).write_text(content)
    with pytest.raises(ValueError, match=message):
        read_ijbc(tmp_path)


def test_missing_files_say_what_is_needed(tmp_path):
    with pytest.raises(FileNotFoundError, match="ijbc_face_tid_mid.txt"):
        read_ijbc(tmp_path)


def test_lfw_all_pairs_protocol(lfw_embeddings, tmp_path):
    names = lfw_embeddings["names"][:600]
    full = lfw_all_pairs(names)
    ids = np.array([identity_of(str(n)) for n in names])
    assert len(full.labels) == 600 * 599 // 2
    assert np.array_equal(full.labels, ids[full.pairs[:, 0]] == ids[full.pairs[:, 1]])
    sampled = lfw_all_pairs(names, max_impostors=5000, seed=1)
    assert sampled.labels.sum() == full.labels.sum() and (~sampled.labels).sum() == 5000
    assert np.array_equal(sampled.pairs, lfw_all_pairs(names, max_impostors=5000, seed=1).pairs)
    write_ijbc(tmp_path, sampled)
    again = read_ijbc(tmp_path)
    assert np.array_equal(again.pairs, sampled.pairs) and np.array_equal(again.labels, sampled.labels)


def test_identity_split_is_disjoint_and_seeded(lfw_embeddings):
    names = lfw_embeddings["names"]
    fit = identity_split(names, seed=3)
    ids = np.array([identity_of(str(n)) for n in names])
    assert not set(ids[fit]) & set(ids[~fit])
    assert np.array_equal(fit, identity_split(names, seed=3))
    assert not np.array_equal(fit, identity_split(names, seed=4))


def naive_templates(x, tids, mids, normalize_images):
    out = {}
    for t in np.unique(tids):
        total = 0
        for m in np.unique(mids[tids == t]):
            rows = x[(tids == t) & (mids == m)]
            if normalize_images:
                rows = rows / np.linalg.norm(rows, axis=1, keepdims=True)
            total = total + rows.mean(0)
        out[t] = total / np.linalg.norm(total)
    return out


@pytest.mark.parametrize("normalize_images", [False, True])
def test_pool_templates_matches_the_definition(normalize_images):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 16)).astype(np.float32)
    tids = rng.integers(0, 40, 300)
    mids = rng.integers(0, 5, 300)  # media ids shared across templates
    ids, T = pool_templates(x, tids, mids, normalize_images=normalize_images)
    ref = naive_templates(x, tids, mids, normalize_images)
    assert list(ids) == sorted(ref)
    np.testing.assert_allclose(T, np.stack([ref[t] for t in ids]), atol=1e-5)
    flip = rng.standard_normal((300, 16)).astype(np.float32)
    _, T_flip = pool_templates(x, tids, mids, flip_features=flip)
    np.testing.assert_allclose(T_flip, pool_templates(x + flip, tids, mids)[1], atol=1e-6)
    w = rng.random(300).astype(np.float32)
    np.testing.assert_allclose(
        pool_templates(x, tids, mids, detector_scores=w)[1],
        pool_templates(x * w[:, None], tids, mids)[1],
        atol=1e-6,
    )


def test_pair_scores_equal_gathered_dot_products():
    rng = np.random.default_rng(1)
    A, B = (
        rng.standard_normal((5000, 32)).astype(np.float32),
        rng.standard_normal((3000, 32)).astype(np.float32),
    )
    i, j = rng.integers(0, 5000, 40000), rng.integers(0, 3000, 40000)
    np.testing.assert_allclose(
        pair_scores(A, B, i, j, block=512), np.einsum("ij,ij->i", A[i], B[j]), atol=1e-4
    )
