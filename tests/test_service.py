"""The translation service as users run it: a real server process, real gRPC over loopback,
a real SQLite store, maps fitted on real LFW embeddings."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
import warnings

import grpc
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sklearn.metrics import roc_auc_score

from mapper import CanonicalSpace, LinearMap, RotationMap
from mapper.core import mapfile
from mapper.datasets.face_zoo import identity_of
from mapper.eval.metrics import tar_at_far_strict
from mapper.serving.sqlite import SQLiteMapStore
from mapper_service.gen import mapper_pb2 as pb

from .servers import ROOT, grpcurl, start_server

DLIB, SFACE, REID, ARC = (
    "dlib-resnet-v1",
    "sface-2021dec-int8bq",
    "face-reid-retail-0095",
    "mobilefacenet-arcface",
)
TOKEN = "s3cret-admin"


@pytest.fixture(scope="module")
def lfw(lfw_embeddings):
    names = lfw_embeddings["names"]
    ids = np.array([identity_of(str(n)) for n in names])
    fit = np.isin(ids, np.unique(ids)[::2])
    return {"emb": lfw_embeddings, "ids": ids, "fit": fit, "eval": np.flatnonzero(~fit)[:400]}


@pytest.fixture(scope="module")
def fitted(lfw):
    emb, fit, ids = lfw["emb"], lfw["fit"], lfw["ids"]
    linear = LinearMap(source_id=SFACE, target_id=DLIB).fit(emb[SFACE][fit], emb[DLIB][fit])
    # Calibration: the strict threshold at FAR 1e-2 on cross-model pairs of the fitting part.
    sub = np.flatnonzero(fit)[:1500]
    scores = linear.transform(emb[SFACE][sub]) @ _unit(emb[DLIB][sub]).T
    iu = np.triu_indices(sub.size, 1)
    same = (ids[sub][:, None] == ids[sub][None, :])[iu]
    threshold = tar_at_far_strict(scores[iu][same], scores[iu][~same], 1e-2)[2]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # 1,500 fitting images: here the hub must be served and answer as in-process; how
        # well it maps is tested in test_hub.py.
        hub = CanonicalSpace(name="lfw").fit({m: emb[m][sub] for m in (DLIB, SFACE, REID, ARC)})
    return {
        "linear": linear,
        "linear_file": mapfile.dumps(linear, {"dataset": "LFW", "calibration": {"0.01": threshold}}),
        "rotation": RotationMap(source_id=SFACE, target_id=DLIB).fit(emb[SFACE][fit], emb[DLIB][fit]),
        "hub": hub,
        "threshold": threshold,
    }


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def server(tmp_path_factory, fitted):
    work = tmp_path_factory.mktemp("service")
    srv = start_server(
        work, work / "maps.sqlite", "--admin-token", TOKEN, "--max-batch", "5000", "--max-message-mb", "8"
    )
    with srv.client(admin_token=TOKEN) as c:
        c.wait_ready()
        c.put_mapping(fitted["linear_file"])
        c.put_mapping(fitted["rotation"], dataset="LFW")
        c.put_mapping(fitted["hub"], dataset="LFW")
    yield srv
    assert srv.stop() == 0


@pytest.fixture()
def client(server):
    with server.client() as c:
        yield c


def code_of(call, *args, **kw) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call(*args, **kw)
    return info.value.code()


def test_translate_equals_in_process_and_names_the_map(client, lfw, fitted):
    x = lfw["emb"][SFACE][lfw["eval"]]
    y, ref = client.translate(x, SFACE, DLIB)
    np.testing.assert_allclose(y, fitted["linear"].transform(x), atol=1e-6)
    assert ref.map_id == f"{SFACE}->{DLIB}:linear" and ref.version == 1 and len(ref.sha256) == 64
    y_rot, ref_rot = client.translate(x, SFACE, DLIB, kind="rotation")
    np.testing.assert_allclose(y_rot, fitted["rotation"].transform(x), atol=1e-6)
    assert ref_rot.kind == "rotation"


def test_hub_fallback_and_not_found(client, lfw, fitted):
    x = lfw["emb"][ARC][lfw["eval"]]
    y, ref = client.translate(x, ARC, REID)
    assert ref.map_id == "hub:lfw" and ref.kind == "hub"
    np.testing.assert_allclose(y, fitted["hub"].translate(x, ARC, REID), atol=1e-6)
    with pytest.raises(grpc.RpcError) as info:
        client.translate(x, ARC, REID, kind="linear")
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert f"{SFACE}->{DLIB}:linear" in info.value.details()  # lists what exists


def test_translate_stream_a_gallery(client, lfw, fitted):
    x = lfw["emb"][SFACE][lfw["eval"]]
    batches = np.array_split(x, 17)
    out = list(client.translate_stream(iter(batches), SFACE, DLIB))
    assert len(out) == 17
    np.testing.assert_allclose(np.vstack([y for y, _ in out]), fitted["linear"].transform(x), atol=1e-6)


def test_compare_cross_model_with_calibrated_decision(client, lfw, fitted):
    emb, ev, ids = lfw["emb"], lfw["eval"], lfw["ids"]
    left, right = ev[:-1], ev[1:]
    res = client.compare(emb[SFACE][left], SFACE, emb[DLIB][right], DLIB, far=0.01)
    expected = np.einsum("ij,ij->i", fitted["linear"].transform(emb[SFACE][left]), _unit(emb[DLIB][right]))
    np.testing.assert_allclose(res.scores, expected, atol=1e-5)
    assert res.space == DLIB and res.map.map_id.endswith(":linear")
    assert res.threshold == pytest.approx(fitted["threshold"])
    assert np.array_equal(res.same, res.scores >= res.threshold)
    same_person = ids[left] == ids[right]
    assert roc_auc_score(same_person, res.scores) > 0.95  # dlib's space: high scores, still separable
    native = client.compare(emb[DLIB][left], DLIB, emb[DLIB][right], DLIB)
    assert native.map is None
    np.testing.assert_allclose(
        native.scores, np.einsum("ij,ij->i", _unit(emb[DLIB][left]), _unit(emb[DLIB][right])), atol=1e-5
    )
    assert (
        code_of(client.compare, emb[SFACE][left], SFACE, emb[DLIB][right], DLIB, kind="hub", far=0.01)
        == grpc.StatusCode.INVALID_ARGUMENT
    )  # the hub has no calibration


def test_list_get_models(server, client, fitted):
    assert client.list_models() == {DLIB: 128, SFACE: 128, REID: 256, ARC: 128}
    ids = {m.ref.map_id for m in client.list_mappings()}
    assert ids == {f"{SFACE}->{DLIB}:linear", f"{SFACE}->{DLIB}:rotation", "hub:lfw"}
    assert {m.ref.map_id for m in client.list_mappings(source=REID)} == {"hub:lfw"}
    # A map file is an attack tool: only the admin (or a reader) downloads it.
    assert code_of(client.get_mapping, f"{SFACE}->{DLIB}:linear") == grpc.StatusCode.PERMISSION_DENIED
    with server.client(admin_token=TOKEN) as admin:
        info, obj = admin.get_mapping(f"{SFACE}->{DLIB}:linear")
        assert code_of(admin.get_mapping, "nope") == grpc.StatusCode.NOT_FOUND
    assert np.array_equal(obj.weight_, fitted["linear"].weight_)
    meta = json.loads(info.metadata_json)
    assert meta["provenance"]["dataset"] == "LFW" and meta["maps"][0]["fit_info"]["n_pairs"] > 3000


def test_admin_calls_need_the_token(server, fitted):
    with server.client() as anonymous, server.client(admin_token="wrong") as wrong:
        for c in (anonymous, wrong):
            assert code_of(c.put_mapping, fitted["rotation"]) == grpc.StatusCode.UNAUTHENTICATED
            assert code_of(c.delete_mapping, "hub:lfw") == grpc.StatusCode.UNAUTHENTICATED
            assert code_of(c.rollback_mapping, "hub:lfw", 1) == grpc.StatusCode.UNAUTHENTICATED
        assert len(anonymous.list_mappings()) == 3


def test_publish_rollback_delete(server, lfw, fitted):
    emb, ev = lfw["emb"], lfw["eval"]
    with server.client(admin_token=TOKEN) as c:
        m2 = RotationMap(source_id=DLIB, target_id=SFACE).fit(emb[DLIB][lfw["fit"]], emb[SFACE][lfw["fit"]])
        assert c.put_mapping(m2).ref.version == 1
        info = c.put_mapping(m2.set_params(scale=False).fit(emb[DLIB][:500], emb[SFACE][:500]))
        assert info.ref.version == 2 and info.active
        _, ref = c.translate(emb[DLIB][ev], DLIB, SFACE)
        assert ref.version == 2
        c.rollback_mapping(f"{DLIB}->{SFACE}:rotation", 1)
        _, ref = c.translate(emb[DLIB][ev], DLIB, SFACE)
        assert ref.version == 1
        versions = [
            (m.ref.version, m.active)
            for m in c.list_mappings(source=DLIB, all_versions=True)
            if m.ref.map_id == f"{DLIB}->{SFACE}:rotation"
        ]
        assert versions == [(1, True), (2, False)]
        assert c.delete_mapping(f"{DLIB}->{SFACE}:rotation") == 2
        assert code_of(c.translate, emb[DLIB][ev], DLIB, SFACE, kind="rotation") == grpc.StatusCode.NOT_FOUND
        assert code_of(c.rollback_mapping, "hub:lfw", 9) == grpc.StatusCode.NOT_FOUND


def test_bad_input_gets_the_right_status_and_loses_nothing(server, client, lfw):
    x = lfw["emb"][SFACE][lfw["eval"]].copy()
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(client.translate, x[:, :100], SFACE, DLIB) == invalid  # wrong dims
    x_nan = x.copy()
    x_nan[3, 5] = np.nan
    assert code_of(client.translate, x_nan, SFACE, DLIB) == invalid
    x_inf = x.copy()
    x_inf[0, 0] = np.inf
    assert code_of(client.translate, x_inf, SFACE, DLIB) == invalid
    bad_bytes = pb.TranslateRequest(
        source_model=SFACE, target_model=DLIB, embeddings=pb.Embeddings(rows=2, dim=128, data=b"\0" * 12)
    )
    assert code_of(client.stub.Translate, bad_bytes) == invalid
    empty = pb.TranslateRequest(source_model=SFACE, target_model=DLIB, embeddings=pb.Embeddings())
    assert code_of(client.stub.Translate, empty) == invalid
    assert code_of(client.translate, x, "no-such-model", DLIB) == grpc.StatusCode.NOT_FOUND
    big = np.ones((5001, 128), np.float32)
    assert code_of(client.translate, big, SFACE, DLIB) == grpc.StatusCode.RESOURCE_EXHAUSTED  # batch limit
    huge = np.ones((4000, 1024), np.float32)  # 16 MiB > --max-message-mb 8
    assert code_of(client.translate, huge, SFACE, DLIB) == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert code_of(client.compare, x[:5], SFACE, x[:4], DLIB) == invalid
    assert (
        code_of(client.stub.Embed, pb.EmbedRequest(model=DLIB, images=[b"x"])) == grpc.StatusCode.UNAVAILABLE
    )
    before = [(m.ref.map_id, m.ref.version) for m in client.list_mappings(all_versions=True)]
    with server.client(admin_token=TOKEN) as admin:
        good = mapfile.dumps(RotationMap(source_id="a", target_id="b").fit(x[:200], x[:200]))
        corrupt = bytearray(good)
        corrupt[-10] ^= 0xFF
        for data in (bytes(corrupt), good[: len(good) // 2], b"", b"not a map"):
            assert code_of(admin.put_mapping, data) == invalid
    assert [(m.ref.map_id, m.ref.version) for m in client.list_mappings(all_versions=True)] == before
    y, _ = client.translate(x, SFACE, DLIB)  # still serving
    assert y.shape == (x.shape[0], 128)


def test_metrics_over_http(server, client, lfw):
    x = lfw["emb"][SFACE][lfw["eval"][:10]]
    client.translate(x, SFACE, DLIB)
    code_of(client.translate, x[:, :5], SFACE, DLIB)
    text = (
        urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5).read().decode()
    )
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }
    assert samples[("mapper_requests_total", (("code", "OK"), ("method", "Translate")))] >= 1
    assert samples[("mapper_requests_total", (("code", "INVALID_ARGUMENT"), ("method", "Translate")))] >= 1
    assert samples[("mapper_request_seconds_count", (("method", "Translate"),))] >= 2
    assert samples[("mapper_embeddings_translated_total", (("source", SFACE), ("target", DLIB)))] >= 10
    assert samples[("mapper_map_version", (("map_id", "hub:lfw"),))] == 1
    assert samples[("mapper_maps_loaded", ())] >= 3


def test_health_and_reflection_with_grpcurl(server):
    binary = grpcurl()

    def run(*args: str) -> str:
        return subprocess.run(
            [binary, "-plaintext", server.address, *args],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout

    listed = run("list")
    assert "facemapper.v1.MapperService" in listed and "grpc.health.v1.Health" in listed
    assert json.loads(run("grpc.health.v1.Health/Check"))["status"] == "SERVING"
    models = json.loads(run("facemapper.v1.MapperService/ListModels"))["models"]
    assert {m["name"] for m in models} >= {DLIB, SFACE}


def test_persistence_restart_and_live_pickup(tmp_path, fitted, lfw):
    store_path = tmp_path / "maps.sqlite"
    SQLiteMapStore(store_path).publish(fitted["linear_file"])
    srv = start_server(tmp_path, store_path)
    try:
        with srv.client() as c:
            c.wait_ready()
            assert [m.ref.map_id for m in c.list_mappings()] == [f"{SFACE}->{DLIB}:linear"]
            # Another process publishes into the same store: served without a restart.
            subprocess.run(
                [
                    sys.executable,
                    "-c",
                    (
                        "import sys; from mapper.serving.sqlite import SQLiteMapStore; "
                        f"SQLiteMapStore({str(store_path)!r}).publish(open(sys.argv[1], 'rb').read())"
                    ),
                    str(_write(tmp_path / "rot.safetensors", mapfile.dumps(fitted["rotation"]))),
                ],
                check=True,
                cwd=ROOT,
            )
            deadline = time.monotonic() + 10
            while True:
                try:
                    _, ref = c.translate(lfw["emb"][SFACE][:3], SFACE, DLIB, kind="rotation")
                    break
                except grpc.RpcError as e:
                    assert e.code() == grpc.StatusCode.NOT_FOUND and time.monotonic() < deadline
                    time.sleep(0.1)
            assert ref.kind == "rotation" and ref.version == 1
    finally:
        assert srv.stop() == 0
    srv = start_server(tmp_path, store_path)  # restart: everything is still there
    try:
        with srv.client() as c:
            c.wait_ready()
            assert len(c.list_mappings()) == 2
    finally:
        srv.stop()


def _write(path, data):
    path.write_bytes(data)
    return path


def test_kill_during_publish_leaves_a_readable_store(tmp_path, fitted):
    store_path = tmp_path / "maps.sqlite"
    store = SQLiteMapStore(store_path)
    store.publish(fitted["linear_file"])
    big = RotationMap(source_id="big-a", target_id="big-b")
    rng = np.random.default_rng(0)
    big.fit(rng.standard_normal((3000, 1024)), rng.standard_normal((3000, 1024)))  # 8 MiB per version
    blob = _write(tmp_path / "big.safetensors", mapfile.dumps(big))
    # Each publish a new file (identical bytes would not make a new version).
    script = (
        "import sys, itertools\nfrom mapper.core import mapfile\n"
        "from mapper.serving.sqlite import SQLiteMapStore\n"
        "s = SQLiteMapStore(sys.argv[1], keep_versions=1000)\n"
        "m = mapfile.loads(open(sys.argv[2], 'rb').read())\n"
        "print('go', flush=True)\nfor i in itertools.count(): s.publish(mapfile.dumps(m, {'n': i}))"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(store_path), str(blob)], cwd=ROOT, stdout=subprocess.PIPE
    )
    assert proc.stdout.readline().strip() == b"go"
    time.sleep(1.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with sqlite3.connect(store_path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    store = SQLiteMapStore(store_path)
    stored = store.list(all_versions=True)
    rotations = [m for m in stored if m.ref.kind == "rotation"]
    assert rotations, "the publisher should have committed at least one version"
    active = store.get("big-a->big-b:rotation")
    assert active.ref.version == max(m.ref.version for m in rotations)
    assert mapfile.loads(active.data).n_features_in_ == 1024  # every committed version is whole
    assert store.get(f"{SFACE}->{DLIB}:linear").ref.version == 1
