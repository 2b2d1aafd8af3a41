"""TLS, mutual TLS and graceful shutdown of the real server process."""

from __future__ import annotations

import datetime as dt
import ipaddress
import signal
import threading
import time

import grpc
import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from mapper import RotationMap
from mapper.serving.sqlite import SQLiteMapStore
from mapper_service.client import MapperClient

from .servers import start_server


def _cert(subject: str, issuer_key, issuer_name, key, *, ca: bool = False, server: bool = False):
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(issuer_name or x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return builder.sign(issuer_key or key, hashes.SHA256())


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files."""
    d = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("test-ca", None, None, ca_key, ca=True)
    out = {"ca": ca.public_bytes(serialization.Encoding.PEM)}
    for name, server in (("server", True), ("client", False)):
        key = ec.generate_private_key(ec.SECP256R1())
        out[name] = _cert(name, ca_key, ca.subject, key, server=server).public_bytes(
            serialization.Encoding.PEM
        )
        out[f"{name}_key"] = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    for name, data in out.items():
        (d / f"{name}.pem").write_bytes(data)
    return d, out


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("store") / "maps.sqlite"
    rng = np.random.default_rng(0)
    from mapper.core import mapfile

    m = RotationMap(source_id="a", target_id="b").fit(
        rng.standard_normal((200, 8)), rng.standard_normal((200, 8))
    )
    SQLiteMapStore(path).publish(mapfile.dumps(m))
    return path


def test_tls(tmp_path, pki, store):
    d, pem = pki
    srv = start_server(
        tmp_path, store, "--tls-cert", str(d / "server.pem"), "--tls-key", str(d / "server_key.pem")
    )
    try:
        with MapperClient(srv.address, root_cert=pem["ca"], timeout=5) as c:
            assert c.list_models() == {"a": 8, "b": 8}
        with MapperClient(srv.address, timeout=3) as plain:  # plaintext against TLS fails
            with pytest.raises(grpc.RpcError) as info:
                plain.list_models()
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        assert srv.stop() == 0


def test_mutual_tls(tmp_path, pki, store):
    d, pem = pki
    srv = start_server(
        tmp_path,
        store,
        "--tls-cert",
        str(d / "server.pem"),
        "--tls-key",
        str(d / "server_key.pem"),
        "--tls-client-ca",
        str(d / "ca.pem"),
    )
    try:
        with MapperClient(
            srv.address,
            root_cert=pem["ca"],
            client_cert=pem["client"],
            client_key=pem["client_key"],
            timeout=5,
        ) as c:
            assert c.list_models() == {"a": 8, "b": 8}
        with MapperClient(srv.address, root_cert=pem["ca"], timeout=3) as no_cert:
            with pytest.raises(grpc.RpcError) as info:
                no_cert.list_models()
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        assert srv.stop() == 0


def test_sigterm_drains_in_flight_calls(tmp_path, store):
    srv = start_server(tmp_path, store, "--grace", "20")
    x = np.random.default_rng(1).standard_normal((60000, 8)).astype(np.float32)
    results: list[object] = []
    with srv.client(timeout=30) as c:
        c.wait_ready()

        def call() -> None:
            try:
                for _ in range(3):
                    results.append(c.translate(x, "a", "b")[0].shape)
            except grpc.RpcError as e:
                results.append(e.code())

        threads = [threading.Thread(target=call) for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(0.3)
        srv.proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(60)
    assert srv.proc.wait(30) == 0
    started = [r for r in results if r == (60000, 8)]
    assert started, "calls in flight at SIGTERM must complete"
    assert '"event": "stopped"' in srv.log.read_text()


# -- who may read what (issue 20): a map file is an attack tool, templates are biometric ----
ADMIN = "admin-token-0123456789"
READER, CLIENT = "reader-token-0123456789", "client-token-0123456789"


def _code(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code()


def test_map_files_need_the_admin_or_a_reader_credential(tmp_path, store):
    (tmp_path / "admin.token").write_text(ADMIN)
    (tmp_path / "clients").write_text(f"# name token role\nscanner {READER} reader\n")
    srv = start_server(
        tmp_path,
        store,
        "--admin-token-file",
        str(tmp_path / "admin.token"),
        "--client-tokens-file",
        str(tmp_path / "clients"),
    )
    try:
        with srv.client(token=READER) as c:
            _, m = c.get_mapping("a->b:rotation")
            assert m.n_features_out_ == 8
        with srv.client(admin_token=ADMIN) as c:
            assert c.get_mapping("a->b:rotation")[1].n_features_in_ == 8
        srv.stop()
        # Without client tokens, anyone may list and translate, but a download needs the admin.
        srv = start_server(tmp_path, store, "--admin-token-file", str(tmp_path / "admin.token"))
        with srv.client() as c:
            assert [m.ref.map_id for m in c.list_mappings()] == ["a->b:rotation"]
            assert _code(lambda: c.get_mapping("a->b:rotation")) == grpc.StatusCode.PERMISSION_DENIED
        with srv.client(token="wrong-token-0123456789") as c:
            assert _code(lambda: c.get_mapping("a->b:rotation")) == grpc.StatusCode.PERMISSION_DENIED
    finally:
        srv.stop()


def test_client_tokens_admit_known_clients_only(tmp_path, store):
    (tmp_path / "clients").write_text(f"gate {CLIENT}\nscanner {READER} reader\n")
    srv = start_server(tmp_path, store, "--client-tokens-file", str(tmp_path / "clients"))
    x = np.random.default_rng(2).standard_normal((3, 8)).astype(np.float32)
    try:
        with srv.client(token=CLIENT) as c:
            assert c.translate(x, "a", "b")[0].shape == (3, 8)
            assert c.compare(x, "a", x, "b").scores.shape == (3,)
            assert list(c.translate_stream([x, x], "a", "b"))[1][0].shape == (3, 8)
            # a client token is not a reader's: no map file
            assert _code(lambda: c.get_mapping("a->b:rotation")) == grpc.StatusCode.PERMISSION_DENIED
        for anonymous in (srv.client(), srv.client(token="not-a-known-token-000")):
            with anonymous as c:
                assert _code(lambda: c.translate(x, "a", "b")) == grpc.StatusCode.UNAUTHENTICATED
                assert _code(lambda: c.list_models()) == grpc.StatusCode.UNAUTHENTICATED
                assert (
                    _code(lambda: list(c.translate_stream([x], "a", "b"))) == grpc.StatusCode.UNAUTHENTICATED
                )
        # Load balancers still probe health without a credential.
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        with grpc.insecure_channel(srv.address) as ch:
            reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        srv.stop()


@pytest.mark.parametrize(
    "content, message",
    [
        ("", "no client tokens"),
        ("gate short\n", "token of 16"),
        (f"gate {CLIENT} root\n", "client|reader"),
    ],
)
def test_a_bad_client_tokens_file_refuses_to_start(tmp_path, store, content, message):
    (tmp_path / "clients").write_text(content)
    with pytest.raises(RuntimeError, match=message):
        start_server(tmp_path, store, "--client-tokens-file", str(tmp_path / "clients"), timeout=20)


def test_the_image_and_the_compose_files_admit_known_clients_only():
    """What a deployment runs: the Docker image and both compose files set the client
    tokens from a secret file (the server refuses to start without it: tested above)."""
    import yaml

    from .servers import ROOT

    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "MAPPER_CLIENT_TOKENS_FILE=/run/secrets/client_tokens" in dockerfile
    for name in ("docker-compose.yml", "docker-compose.replicas.yml"):
        compose = yaml.safe_load((ROOT / "deploy" / name).read_text())
        service = next(s for n, s in compose["services"].items() if n.startswith("mapper"))
        assert service["environment"]["MAPPER_CLIENT_TOKENS_FILE"] == "/run/secrets/client_tokens", name
        assert "client_tokens" in service["secrets"] and "client_tokens" in compose["secrets"], name
