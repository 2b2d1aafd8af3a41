"""What an adversarial probe of mapper-serve found (issue 14), each against a real server
process on loopback with a real SQLite store."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import warnings

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from mapper import LinearMap
from mapper.core import mapfile
from mapper.core.ensemble import EnsembleMap
from mapper.eval.selection import attach_scoring
from mapper.serving.sqlite import SQLiteMapStore
from mapper_service.client import MapperClient
from mapper_service.gen import mapper_pb2 as pb

from .servers import ROOT, grpcurl, start_server

TOKEN = "t0ken-for-tests"
rng = np.random.default_rng(7)
X, Y = rng.standard_normal((300, 16)), rng.standard_normal((300, 12))


def linear(source: str = "a", target: str = "b", d_source: int = 16, **provenance) -> bytes:
    x = X if d_source == 16 else rng.standard_normal((300, d_source))
    return mapfile.dumps(LinearMap(source_id=source, target_id=target).fit(x, Y), provenance)


def forge(data: bytes, edit_meta=None, edit_tensors=None) -> bytes:
    """A map file edited and re-signed: anyone can recompute the checksum."""
    meta = mapfile.read_metadata(data)
    tensors = dict(st_load(data))
    meta.pop("checksum")
    if edit_meta:
        edit_meta(meta)
    if edit_tensors:
        edit_tensors(tensors)
    meta["checksum"] = mapfile._checksum(meta, tensors)
    return st_save(tensors, metadata={"mapper": json.dumps(meta, sort_keys=True)})


def code_of(call, *args, **kwargs) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call(*args, **kwargs)
    return info.value.code()


def metric(port: int, name: str, **labels: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith(f"{name}{{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {name}{{{want}}} in /metrics")


@pytest.fixture
def store(tmp_path):
    path = tmp_path / "maps.sqlite"
    SQLiteMapStore(path).publish(linear())
    return path


@pytest.fixture
def server(tmp_path, store):
    srv = start_server(tmp_path, store, "--admin-token", TOKEN)
    yield srv
    srv.stop()


def test_rollback_to_version_0_is_refused_and_changes_nothing(server):
    with server.client(admin_token=TOKEN) as c:
        assert (
            code_of(
                c.stub.RollbackMapping,
                pb.RollbackMappingRequest(map_id="a->b:linear", version=0),
                metadata=c._admin,
            )
            == grpc.StatusCode.INVALID_ARGUMENT
        )
        time.sleep(0.5)  # past a reload interval
        _, ref = c.translate(X[:2].astype(np.float32), "a", "b")
        assert ref.version == 1


def test_a_second_server_on_the_same_port_fails_to_start(server, tmp_path, store):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mapper_service",
            "--store",
            str(store),
            "--port",
            str(server.port),
            "--metrics-port",
            "-1",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )
    assert proc.returncode != 0
    assert "cannot listen" in proc.stderr


@pytest.mark.parametrize("how", ["none", "open", "file", "env"])
def test_admin_calls_need_a_configured_credential(tmp_path, store, how):
    args, env, token = [], {}, None
    if how == "open":
        args = ["--open-admin"]
    elif how == "file":
        (tmp_path / "token").write_text(TOKEN + "\n")
        args, token = ["--admin-token-file", str(tmp_path / "token")], TOKEN
    elif how == "env":
        env, token = {"MAPPER_ADMIN_TOKEN": TOKEN}, TOKEN
    os.environ.update(env)
    try:
        srv = start_server(tmp_path, store, *args)
    finally:
        for k in env:
            os.environ.pop(k)
    try:
        with srv.client(admin_token=token) as c:
            blob = linear(source="c")
            if how == "none":
                assert code_of(c.put_mapping, blob) == grpc.StatusCode.PERMISSION_DENIED
                assert [m.ref.map_id for m in c.list_mappings()] == ["a->b:linear"]
            else:
                assert c.put_mapping(blob).ref.map_id == "c->b:linear"
        if how != "none":
            with srv.client(admin_token="wrong" if token else None) as c:
                status = code_of(c.delete_mapping, "c->b:linear") if token else None
                assert status in (None, grpc.StatusCode.UNAUTHENTICATED)
    finally:
        srv.stop()
    log = srv.log.read_text()
    assert ("ANYONE" in log) == (how == "open")
    assert TOKEN not in log


def test_training_report_never_holds_the_token(tmp_path, face_zoo):
    from mapper.cli import train

    out = tmp_path / "out"
    secret = "SECRET-token-123"
    assert train.main([
        "--embeddings", str(face_zoo / "embeddings" / "lfw-embeddings.npz"), "--images", "200",
        "--models", "sface-2021dec-int8bq", "mobilefacenet-arcface", "--kinds", "linear",
        "--no-fewshot", "--no-security", "--no-progress", "--out", str(out),
        "--admin-token", secret, "--store", str(tmp_path / "maps.sqlite"),
    ]) == 0  # fmt: skip
    for f in out.rglob("*"):
        if f.is_file():
            assert secret.encode() not in f.read_bytes(), f
    assert "--admin-token ***" in (out / "report.md").read_text()


def test_oversized_requests_are_refused_within_a_memory_bound(server):
    """Four concurrent 250 MiB requests against the 64 MiB default: refused, and the
    server's peak resident memory stays under 400 MiB (documented in docs/guides/service.md)."""
    x = np.zeros((250 * 2**20 // (4 * 16), 16), np.float32)
    codes = []

    def call() -> None:
        with MapperClient(server.address, max_message_mb=300, timeout=60) as c:
            codes.append(code_of(c.translate, x, "a", "b"))

    threads = [threading.Thread(target=call) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert codes == [grpc.StatusCode.RESOURCE_EXHAUSTED] * 4
    status = open(f"/proc/{server.proc.pid}/status").read()
    peak_kib = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM")))
    assert peak_kib < 400 * 1024, f"peak RSS {peak_kib / 1024:.0f} MiB"
    with server.client() as c:  # still serving
        assert c.translate(X[:1].astype(np.float32), "a", "b")[0].shape == (1, 12)


def test_published_files_are_validated_and_bad_ones_change_nothing(server):
    good = linear(source="a", target="b")
    m = LinearMap(source_id="a", target_id="b").fit(X, Y)
    scored = mapfile.dumps(attach_scoring(m, "snorm", X, Y))
    assert mapfile.loads(scored).scoring_.method == "snorm"  # the unforged file is fine
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ensemble = mapfile.dumps(
            EnsembleMap(source_id="a", target_id="b").fit(X, Y, groups=np.arange(300) // 3)
        )
    assert isinstance(mapfile.loads(ensemble), EnsembleMap)

    def entry(key, value):  # edit the map entry's metadata
        return forge(good, edit_meta=lambda m: m["maps"][0].__setitem__(key, value))

    bad = {
        "NaN weights": forge(good, edit_tensors=lambda t: t["weight"].__setitem__((0, 0), np.nan)),
        "a model's dimension unlike the stored maps'": linear(source="a", target="c", d_source=8),
        "object not map or hub": forge(good, edit_meta=lambda m: m.__setitem__("object", "banana")),
        "a map entry without kind": forge(good, edit_meta=lambda m: m["maps"][0].pop("kind")),
        "a dimension that is a string": entry("d_source", "16"),
        "a tensor name that does not exist": entry("tensors", ["nope"]),
        "parameters the class does not take": entry("params", {"x": 1}),
        "a kind that is neither its class nor a label": entry("kind", "banana"),
        "an ensemble member of an unknown kind": forge(
            ensemble, edit_meta=lambda m: m["maps"][0]["fit_info"]["members"][2].__setitem__("kind", "mlp")
        ),
        "an ensemble member's tensor of the wrong shape": forge(
            ensemble, edit_tensors=lambda t: t.__setitem__("member1.weight", np.zeros((16, 5)))
        ),
        "scoring tensors that do not fit the target": forge(
            scored, edit_tensors=lambda t: t.__setitem__("score.cov_native", np.zeros((3, 5)))
        ),
    }
    with server.client(admin_token=TOKEN) as c:
        before = [(m.ref.map_id, m.ref.version) for m in c.list_mappings(all_versions=True)]
        for what, blob in bad.items():
            with pytest.raises(grpc.RpcError) as info:
                c.put_mapping(blob)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, what
            assert len(info.value.details()) <= 512, what
        assert [(m.ref.map_id, m.ref.version) for m in c.list_mappings(all_versions=True)] == before
        assert c.list_models() == {"a": 16, "b": 12}


def test_malformed_protobuf_is_invalid_argument_and_counted(tmp_path, store):
    srv = start_server(tmp_path, store, "--admin-token", TOKEN)
    try:
        with grpc.insecure_channel(srv.address) as channel:
            raw = channel.unary_unary("/facemapper.v1.MapperService/Translate")
            with pytest.raises(grpc.RpcError) as info:
                raw(b"\xff\xff\xff\xff garbage", timeout=5)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (
            metric(srv.metrics_port, "mapper_requests_total", method="Translate", code="INVALID_ARGUMENT")
            == 1
        )
    finally:
        srv.stop()
    assert "Traceback" not in srv.log.read_text()


def test_long_names_get_a_short_error_that_matches_the_metrics(server):
    with server.client() as c:
        with pytest.raises(grpc.RpcError) as info:
            c.translate(X[:1].astype(np.float32), "a" * 10_000, "b")
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert len(info.value.details()) <= 512
        with pytest.raises(grpc.RpcError) as info:
            c.translate(X[:1].astype(np.float32), "x" * 200, "b")  # under the name limit
        assert info.value.code() == grpc.StatusCode.NOT_FOUND and len(info.value.details()) <= 512
    assert metric(server.metrics_port, "mapper_requests_total", method="Translate", code="NOT_FOUND") == 1


def test_compare_refuses_bad_far_and_kind(server):
    e = pb.Embeddings(rows=1, dim=16, data=X[:1].astype(np.float32).tobytes())
    f = pb.Embeddings(rows=1, dim=12, data=Y[:1].astype(np.float32).tobytes())
    with server.client() as c:
        for far, kind in ((-0.1, 0), (float("nan"), 0), (1.0, 0), (0.0, 99)):
            request = pb.CompareRequest(model_a="a", model_b="b", a=e, b=f, far=far, kind=kind)
            assert code_of(c.stub.Compare, request) == grpc.StatusCode.INVALID_ARGUMENT, (far, kind)


def test_huge_values_score_their_direction(server):
    t = X[:2].astype(np.float32)
    with server.client() as c:
        y_big, _ = c.translate(t * np.float32(1e20), "a", "b")
        y, _ = c.translate(t, "a", "b")
        np.testing.assert_allclose(y_big, y, rtol=0, atol=1e-5)
        big = Y[:2].astype(np.float32) * np.float32(1e20)
        scores = c.compare(big, "b", Y[:2].astype(np.float32), "b").scores
        np.testing.assert_allclose(scores, 1, atol=1e-5)


def test_sigterm_shows_not_serving_before_the_port_closes(tmp_path, store):
    srv = start_server(tmp_path, store, "--drain", "3")
    with grpc.insecure_channel(srv.address) as channel:
        check = health_pb2_grpc.HealthStub(channel).Check
        assert (
            check(health_pb2.HealthCheckRequest(), timeout=5).status == health_pb2.HealthCheckResponse.SERVING
        )
        srv.proc.send_signal(signal.SIGTERM)
        time.sleep(1)
        assert (
            check(health_pb2.HealthCheckRequest(), timeout=5).status
            == health_pb2.HealthCheckResponse.NOT_SERVING
        )
    assert srv.proc.wait(30) == 0


def test_latency_buckets_resolve_sub_millisecond_calls(server):
    with server.client() as c:
        c.translate(X[:1].astype(np.float32), "a", "b")
    bucket = {
        le: metric(server.metrics_port, "mapper_request_seconds_bucket", method="Translate", le=le)
        for le in ("0.0001", "+Inf")
    }  # a sub-millisecond bucket exists (else this raises)
    assert bucket["+Inf"] >= 1 and bucket["0.0001"] <= bucket["+Inf"]


def test_proto_comments_reach_users_through_the_shipped_proto(server):
    """Reflection serves descriptors without comments (grpcio builds them without source
    info); the documented alternative is grpcurl with the shipped .proto file."""
    binary = grpcurl()
    out = subprocess.run(
        [binary, "-import-path", ROOT / "proto", "-proto", "facemapper/v1/mapper.proto", "describe",
         "facemapper.v1.Embeddings"],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout  # fmt: skip
    assert "row-major, little-endian" in out


def test_hub_files_written_with_the_old_parameter_name_still_load():
    """CanonicalSpace's ``kind`` became ``legs`` (kind named four things); files that say
    ``kind`` load as before, and the same legs come back."""
    from mapper.core.hub import CanonicalSpace

    rng = np.random.default_rng(5)
    hub = CanonicalSpace(legs="linear").fit(
        {"a": rng.standard_normal((60, 6)), "b": rng.standard_normal((60, 5))}
    )

    def old_name(meta) -> None:
        meta["hub"]["params"]["kind"] = meta["hub"]["params"].pop("legs")

    again = mapfile.loads(forge(mapfile.dumps(hub), edit_meta=old_name))
    assert again.legs == "linear"
    x = rng.standard_normal((3, 6))
    np.testing.assert_allclose(again.translate(x, "a", "b"), hub.translate(x, "a", "b"), atol=1e-6)
