"""mapper-train on a small LFW subset: Triton path == precomputed path, resumable embedding,
report contents, publishing into a store the service reads."""

from __future__ import annotations

import json
import re
import signal
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pytest

from mapper.cli import train
from mapper.datasets.face_zoo import choose_images
from mapper.faces.cache import EmbeddingCache, embed_images
from mapper.faces.embed import FaceEmbedder
from mapper.serving.sqlite import SQLiteMapStore
from mapper.triton.client import TritonClient
from mapper.triton.embedding import TritonBackend

from .servers import ROOT

MODELS = ["sface-2021dec-int8bq", "face-reid-retail-0095", "mobilefacenet-arcface"]


def run_train(*args: str) -> dict:
    assert train.main(["--no-progress", *args]) == 0
    out = args[args.index("--out") + 1]
    return json.loads(open(f"{out}/results.json").read())


@pytest.fixture(scope="module")
def triton_run(triton, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("train")
    results = run_train(
        "--triton-url",
        triton.url,
        "--images",
        "160",
        "--models",
        *MODELS,
        "--cache",
        str(tmp / "cache.sqlite"),
        "--out",
        str(tmp / "triton"),
        "--store",
        str(tmp / "maps.sqlite"),
    )
    return tmp, results


@pytest.mark.slow  # embeds through Triton (about 70 s); CI runs it with make test-slow
def test_precomputed_embeddings_give_the_same_numbers(triton, triton_run, face_zoo):
    tmp, results = triton_run
    names = choose_images(sorted(p.name for p in (face_zoo / "lfw" / "images").glob("*.jpg")), 160, 0)
    paths = [face_zoo / "lfw" / "images" / n for n in names]
    cache = EmbeddingCache(tmp / "cache.sqlite")
    with TritonClient(triton.url) as client:
        embedder = FaceEmbedder(TritonBackend(client))
        arrays = {m: embed_images(embedder, paths, m, cache, progress=False)[0] for m in MODELS}
    np.savez(tmp / "emb.npz", names=np.array(names), **arrays)
    again = run_train(
        "--embeddings",
        str(tmp / "emb.npz"),
        "--images",
        str(len(names)),  # the npz holds exactly the images of the Triton run
        "--models",
        *MODELS,
        "--out",
        str(tmp / "precomputed"),
        "--no-fewshot",  # the studies are not compared; the maps and their evaluation are
        "--no-security",
    )
    # The same float32 values, in arrays of another memory layout: BLAS may round the last
    # bits differently, which can move a score across a threshold. Allow one genuine pair.
    tol = 1.01 / results["n_genuine"]
    for kind, by_far in results["tar"].items():
        for far, matrix in by_far.items():
            np.testing.assert_allclose(
                again["tar"][kind][far], matrix, rtol=0, atol=tol, err_msg=f"{kind} {far}"
            )
    for kind, by_far in results["summary"].items():
        assert again["summary"][kind] == pytest.approx(by_far, abs=tol, nan_ok=True), kind


@pytest.mark.slow  # embeds through Triton (about 70 s); CI runs it with make test-slow
def test_report_and_published_maps(triton_run):
    tmp, results = triton_run
    out = tmp / "triton"
    for name in ("report.md", "roc.png", "tar_far0.01.png", "fewshot.png", "config.json"):
        assert (out / name).exists(), name
    assert set(results["summary"]) == {
        "native",
        "none",
        "linear",
        "rotation",
        "hub",
        "tuned",
        "tuned:compare",
    }
    # 80 fitting images only: far from the full-size figures, far above chance
    assert results["summary"]["linear"]["0.01"] > 0.5 > 0.05 > results["summary"]["none"]["0.01"]
    assert len(results["security"]["pairs"]) == 6
    assert len(results["fewshot"]["pairs"]) >= 3
    stored = SQLiteMapStore(tmp / "maps.sqlite").list()
    assert len(stored) == 6 * 3 + 1  # linear, rotation and tuned per ordered pair, and the hub
    tuned = next(m for m in stored if m.ref.kind == "tuned")
    assert tuned.metadata["maps"][0]["fit_info"]["selection"]["criterion"]
    linear = next(m for m in stored if m.ref.kind == "linear")
    # 80 fitting images give too few out-of-fold impostor pairs to bound 1e-3 at 95%
    # confidence (about 3,000 needed; 300 for 1e-2): that FAR is not promised.
    calibrated = linear.metadata["provenance"]["calibration"]
    assert "0.01" in calibrated and "0.001" not in calibrated
    report = (out / "report.md").read_text()
    assert "papers, IJB-C" in report and "strict" in report and "Template security" in report


def cache_rows(path) -> int:
    try:
        with sqlite3.connect(path, timeout=10) as db:
            return db.execute("SELECT COUNT(*) FROM embeddings").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


@pytest.mark.slow  # long; CI runs it with make test-slow
def test_interrupted_run_resumes_without_redoing_work(triton, tmp_path):
    cache = tmp_path / "cache.sqlite"
    cmd = [
        sys.executable,
        "-m",
        "mapper.cli.train",
        "--no-progress",
        "--triton-url",
        triton.url,
        "--images",
        "200",
        "--models",
        "sface-2021dec-int8bq",  # two fast models: what is tested is the cache, not the CNNs
        "mobilefacenet-arcface",
        "--cache",
        str(cache),
        "--out",
        str(tmp_path / "out"),
        "--no-fewshot",
        "--no-security",
    ]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while cache_rows(cache) < 64 and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = cache_rows(cache)
    assert 0 < done < 400, "kill it midway"
    rerun = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, check=True)
    counts = re.findall(r"(\S+): (\d+) images cached, (\d+) to embed", rerun.stdout)
    n_images = int(counts[0][1]) + int(counts[0][2])
    assert sum(int(cached) for _, cached, _ in counts) == done
    assert sum(int(todo) for _, _, todo in counts) == 2 * n_images - done
    assert cache_rows(cache) == 2 * n_images


def test_config_file_and_bad_settings(tmp_path, lfw_embeddings, face_zoo):
    cfg = tmp_path / "train.toml"
    cfg.write_text('images = 120\nkinds = ["linear"]\nfewshot = false\nsecurity = false\n')
    out = run_train(
        "--config",
        str(cfg),
        "--embeddings",
        str(face_zoo / "embeddings" / "lfw-embeddings.npz"),
        "--out",
        str(tmp_path / "o"),
    )
    assert out["config"]["images"] == 120 and out["kinds"] == ["none", "linear"]
    cfg.write_text("imagez = 3\n")
    with pytest.raises(SystemExit, match="unknown settings"):
        train.main(["--config", str(cfg)])
    cfg.write_text('fewshot_draw = "everyone"\n')
    with pytest.raises(SystemExit, match="fewshot_draw must be"):
        train.main(["--config", str(cfg)])


@pytest.mark.slow
def test_fewshot_draws_images_or_people(tmp_path, face_zoo):
    zoo = str(face_zoo / "embeddings" / "lfw-embeddings.npz")
    common = ["--embeddings", zoo, "--images", "300", "--kinds", "linear", "--no-security"]
    images = run_train(*common, "--out", str(tmp_path / "i"))["fewshot"]
    people = run_train(*common, "--fewshot-draw", "people", "--out", str(tmp_path / "p"))["fewshot"]
    assert images["draw"] == "images" and images["pairs"][:3] == [25, 50, 100]
    assert people["draw"] == "people" and people["identities"][:3] == [5, 10, 25]
    # People are drawn among those with 2+ images, and bring all of them.
    assert all(p >= 2 * i for p, i in zip(people["pairs"][:-1], people["identities"][:-1], strict=True))
    assert images["pairs"][-1] == people["pairs"][-1] and images["tar"]["linear"][-1] == pytest.approx(
        people["tar"]["linear"][-1], abs=1e-12
    )  # the last point is the main fit, whichever way the others are drawn


@pytest.mark.slow
def test_ijbc_layout_evaluation(tmp_path, face_zoo, lfw_embeddings):
    """An IJB-C 1:1 folder (here made of LFW photos of people outside the fitting set, with
    YuNet's points as the 5-point file) is evaluated with maps fitted on LFW."""
    from mapper.datasets.face_zoo import identity_of
    from mapper.eval.protocols import FACE_TID_MID, NAME_5PTS, TEMPLATE_PAIRS

    names = [str(n) for n in lfw_embeddings["names"]]
    fitting = set(choose_images(names, 300, 0))
    by_id: dict[str, list[int]] = {}
    for k, n in enumerate(names):
        if n not in fitting:
            by_id.setdefault(identity_of(n), []).append(k)
    people = [p for p in sorted(by_id) if len(by_id[p]) >= 4][:12]
    rows, tid = [], 0
    for p in people:
        for half in (by_id[p][:2], by_id[p][2:4]):  # two templates per person, two images each
            rows += [(names[k], tid, k) for k in half]
            tid += 1
    (tmp_path / FACE_TID_MID).write_text("".join(f"{n} {t} {m}\n" for n, t, m in rows))
    pairs = [(a, b, int(a // 2 == b // 2)) for a in range(tid) for b in range(a + 1, tid)]
    (tmp_path / TEMPLATE_PAIRS).write_text("".join(f"{a} {b} {s}\n" for a, b, s in pairs))
    yunet = lfw_embeddings["yunet"]
    (tmp_path / NAME_5PTS).write_text(
        "".join(f"{n} " + " ".join(f"{v:.2f}" for v in yunet[k, 4:15]) + "\n" for n, _, k in rows)
    )
    common = [
        "--images",
        "300",
        "--ijbc",
        str(tmp_path),
        "--ijbc-images",
        str(face_zoo / "lfw" / "images"),
        "--kinds",
        "linear",
        "--no-fewshot",
    ]
    pre = run_train(
        "--embeddings",
        str(face_zoo / "embeddings" / "lfw-embeddings.npz"),
        *common,
        "--out",
        str(tmp_path / "pre"),
    )
    assert pre["n_genuine"] == 12 and pre["n_impostor"] == len(pairs) - 12
    assert pre["auc"]["linear"][1][2] > 0.9 > 0.7 > pre["auc"]["none"][1][2]
    assert "security" not in pre  # IJB-C's 1:1 files carry no identities for a gallery
    local = run_train(
        "--backend",
        "local",
        "--models",
        "face-reid-retail-0095",
        "mobilefacenet-arcface",
        "--cache",
        str(tmp_path / "cache.sqlite"),
        *common,
        "--out",
        str(tmp_path / "local"),
    )
    assert local["auc"]["linear"][0][1] > 0.9  # through the 5-point path, no detection


@pytest.mark.slow  # long; CI runs it with make test-slow
def test_a_new_vendor_joins_the_hub(tmp_path, face_zoo):
    models = ["sface-2021dec-int8bq", "mobilefacenet-arcface", "face-reid-retail-0095"]
    results = run_train(
        "--embeddings", str(face_zoo / "embeddings" / "lfw-embeddings.npz"), "--images", "400",
        "--models", *models, "--kinds", "hub", "--joining", "last",
        "--no-fewshot", "--no-security", "--out", str(tmp_path / "out"),
    )  # fmt: skip
    study = results["vendor_joins"]
    assert study["newcomer"] == models[-1] and len(study["pairs"]) == 6
    for row in study["pairs"].values():
        for label in ("joined", "refit"):
            assert 0.3 < row[label]["0.01"] <= 1.0  # both hubs translate, far above chance
    assert "joins a hub of the other models" in (tmp_path / "out" / "report.md").read_text()


@pytest.mark.slow
def test_ablation_rows_and_the_tuned_choice_in_the_report(tmp_path, face_zoo):
    out = run_train(
        "--embeddings",
        str(face_zoo / "embeddings" / "lfw-embeddings.npz"),
        "--models",
        "dlib-resnet-v1",
        "sface-2021dec-int8bq",
        "--images",
        "600",
        "--kinds",
        "linear",
        "tuned",
        "--ablation",
        "linear",
        "kernel/snorm",
        "--fewshot-methods",
        "linear",
        "kernel/snorm",
        "--no-security",
        "--out",
        str(tmp_path / "o"),
    )
    rows = out["ablation"]["rows"]
    assert list(rows) == [
        "native (B vs B)",
        "linear",
        "kernel/snorm",
        "tuned, Translate (cosine)",
        "tuned, Compare",
    ]
    # The papers' row is the main table's linear row, computed again by the study.
    assert rows["linear"]["tar"]["0.01"] == pytest.approx(out["summary"]["linear"]["0.01"], abs=1e-12)
    assert all(r["fit_seconds_per_map"] > 0 for name, r in rows.items() if name != "native (B vs B)")
    assert set(out["fewshot"]["tar"]) == {"linear", "tuned", "tuned:compare", "kernel/snorm"}
    # The curve's last point reuses the maps fitted on every pair: the main table's figure.
    assert out["fewshot"]["tar"]["tuned:compare"][-1] == pytest.approx(
        out["summary"]["tuned:compare"]["0.01"], abs=1e-12
    )
    report = (tmp_path / "o" / "report.md").read_text()
    assert "Ablation: what each method adds" in report and "| tuned, Compare |" in report
    with pytest.raises(SystemExit, match="unknown methods"):
        run_train(
            "--embeddings",
            str(face_zoo / "embeddings" / "lfw-embeddings.npz"),
            "--images",
            "200",
            "--ablation",
            "nonsense",
            "--no-fewshot",
            "--no-security",
            "--out",
            str(tmp_path / "p"),
        )


def test_mirrored_faces_add_a_second_pair_per_fitting_image(tmp_path, face_zoo):
    models = ["sface-2021dec-int8bq", "mobilefacenet-arcface"]
    cache = tmp_path / "cache.sqlite"
    out = run_train(
        "--backend", "local", "--images", "60", "--models", *models, "--kinds", "linear", "--mirror",
        "--no-security", "--cache", str(cache), "--out", str(tmp_path / "o"),
        "--store", str(tmp_path / "m.sqlite"),
    )  # fmt: skip
    n_fit = out["provenance"]["fit_images"]
    assert out["provenance"]["mirrored_views"] and out["fewshot"]["pairs"][-1] == n_fit
    for stored in SQLiteMapStore(tmp_path / "m.sqlite").list():
        assert stored.metadata["maps"][0]["fit_info"]["n_pairs"] == 2 * n_fit  # each image twice
    with sqlite3.connect(cache) as db:
        rows = dict(db.execute("SELECT model, COUNT(*) FROM embeddings GROUP BY model").fetchall())
        pairs = db.execute(
            "SELECT a.embedding, b.embedding FROM embeddings a JOIN embeddings b USING (image_sha256) "
            "WHERE a.model = ? AND b.model = ? AND a.failed = 0",
            (models[0], models[0] + "+mirror"),
        ).fetchall()
    assert rows[models[0] + "+mirror"] == n_fit < rows[models[0]]  # the fitting images only
    cos = [np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b) for a, b in
           ((np.frombuffer(x, np.float32), np.frombuffer(y, np.float32)) for x, y in pairs)]  # fmt: skip
    # Another view of the same face: alike, never identical (measured mean 0.96 for SFace).
    assert 0.8 < np.mean(cos) and max(cos) < 0.9999, (np.mean(cos), max(cos))
    with pytest.raises(SystemExit, match="needs the images"):
        train.main(["--mirror", "--embeddings", str(face_zoo / "embeddings" / "lfw-embeddings.npz")])
