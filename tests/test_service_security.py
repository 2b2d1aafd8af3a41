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
from service.client import MapperClient

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
