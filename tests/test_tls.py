"""TLS: the server speaks TLS on gRPC and the auth endpoint; pyensign connects with insecure=False.

pyensign trusts only the roots gRPC finds (``GRPC_DEFAULT_SSL_ROOTS_FILE_PATH``, read once
per process) and urllib's default context (``SSL_CERT_FILE``), so every pyensign client
here runs in a subprocess whose environment trusts a throwaway CA made for the test.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path
from urllib.request import Request, urlopen

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from local_ensign.launcher import LocalEnsign, ask_status
from tests.test_cli import assert_one_line_error, cli

CLIENT_SCRIPT = """
import asyncio, json, sys, time
from pyensign.ensign import Ensign
from pyensign.events import Event

async def round_trip(kwargs, topic):
    client = Ensign(**kwargs)
    try:
        await client.create_topic(topic)
        event = Event(json.dumps({"greeting": "héllo", "n": 1}).encode(), "application/json")
        await client.publish(topic, event)
        await asyncio.wait_for(event.wait_for_ack(), 30)
        cursor = await client.query(f"SELECT * FROM {topic}")
        rows = [json.loads(row.data) for row in await cursor.fetchall()]
        return {"ok": True, "acked": event.acked(), "rows": rows}
    finally:
        await asyncio.wait_for(client.close(), 10)

async def status(kwargs, topic):
    client = Ensign(**kwargs)
    started = time.monotonic()
    try:
        await asyncio.wait_for(client.status(), 20)
        return {"ok": True}
    except Exception as err:
        return {"ok": False, "error": f"{type(err).__name__}: {err}", "seconds": time.monotonic() - started}

kwargs, topic, action = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
print(json.dumps(asyncio.run({"round_trip": round_trip, "status": status}[action](kwargs, topic))))
"""


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def make_ca_and_server_cert(directory: Path) -> dict[str, Path]:
    """A throwaway CA and a server certificate it signed for 127.0.0.1 and localhost, as PEM files."""
    now = datetime.datetime.now(datetime.UTC)
    valid = {
        "not_valid_before": now - datetime.timedelta(minutes=5),
        "not_valid_after": now + datetime.timedelta(days=1),
    }
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder(
            subject_name=_name("local_ensign test CA"), issuer_name=_name("local_ensign test CA")
        )
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid["not_valid_before"])
        .not_valid_after(valid["not_valid_after"])
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = (
        x509.CertificateBuilder(subject_name=_name("localhost"), issuer_name=ca_cert.subject)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid["not_valid_before"])
        .not_valid_after(valid["not_valid_after"])
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    files = {
        "ca": directory / "ca.pem",
        "cert": directory / "server.pem",
        "key": directory / "server-key.pem",
        "other_key": directory / "other-key.pem",
    }
    files["ca"].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files["cert"].write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    files["key"].write_bytes(_pem_key(server_key))
    files["other_key"].write_bytes(_pem_key(ec.generate_private_key(ec.SECP256R1())))
    return files


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_ca_and_server_cert(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def tls_server(tls_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    server = LocalEnsign(
        tmp_path_factory.mktemp("ensign-tls"),
        project="tls",
        tls_cert=tls_files["cert"],
        tls_key=tls_files["key"],
    ).start()
    yield server
    server.stop()


def trusting(ca: Path | None) -> dict[str, str]:
    """The environment of a process that trusts ``ca`` for gRPC and urllib (or no extra CA at all)."""
    env = {
        k: v for k, v in os.environ.items() if k not in ("GRPC_DEFAULT_SSL_ROOTS_FILE_PATH", "SSL_CERT_FILE")
    }
    if ca is not None:
        env.update(GRPC_DEFAULT_SSL_ROOTS_FILE_PATH=str(ca), SSL_CERT_FILE=str(ca))
    return env


def run_client(tmp_path: Path, kwargs: dict, topic: str, action: str, ca: Path | None) -> dict:
    """Run the pyensign client script in a subprocess and return the JSON it prints."""
    script = tmp_path / "client.py"
    script.write_text(CLIENT_SCRIPT)
    result = subprocess.run(
        [sys.executable, str(script), json.dumps(kwargs), topic, action],
        capture_output=True,
        text=True,
        timeout=90,
        env=trusting(ca),
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_server_json_and_client_kwargs_ask_for_tls(tls_server: LocalEnsign):
    state = json.loads((tls_server.data_dir / "server.json").read_text())
    assert state["auth_url"] == f"https://127.0.0.1:{tls_server.auth_port}"
    kwargs = tls_server.client_kwargs()
    assert kwargs["insecure"] is False
    assert kwargs["auth_url"].startswith("https://")


def test_pyensign_round_trip_with_insecure_false(tls_server: LocalEnsign, tls_files, tmp_path: Path):
    summary = run_client(tmp_path, tls_server.client_kwargs(), "greetings", "round_trip", tls_files["ca"])
    assert summary == {"ok": True, "acked": True, "rows": [{"greeting": "héllo", "n": 1}]}

    # The workshop commands reach a TLS server too, trusting the CA given with --ca.
    key_file = tmp_path / "key.json"
    key_file.write_text(json.dumps(tls_server.credentials))
    topics = cli(
        "topics", "--data-dir", str(tls_server.data_dir), "--key", str(key_file), "--ca", str(tls_files["ca"])
    )
    assert topics.returncode == 0, topics.stderr
    assert any(
        line.split()[0] == "greetings" and line.split()[2] == "1" for line in topics.stdout.splitlines()
    )


def test_a_client_that_does_not_trust_the_ca_is_refused(tls_server: LocalEnsign, tmp_path: Path):
    summary = run_client(tmp_path, tls_server.client_kwargs(), "unused", "status", ca=None)
    assert not summary["ok"]
    # pyensign 0.12.1b0 garbles the message of a failed HTTPS call, but keeps the cause's type.
    assert "SSLCertVerificationError" in summary["error"]


def test_a_plaintext_client_fails_fast(tls_server: LocalEnsign, tls_files, tmp_path: Path):
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as refused:
        ask_status(tls_server.endpoint, timeout=10)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert time.monotonic() - started < 5

    kwargs = {**tls_server.client_kwargs(), "insecure": True}  # HTTPS auth works; gRPC is plaintext
    summary = run_client(tmp_path, kwargs, "unused", "status", tls_files["ca"])
    assert not summary["ok"] and "UNAVAILABLE" in summary["error"]
    assert summary["seconds"] < 10

    with pytest.raises(OSError):  # plain HTTP to the auth endpoint: the server drops the connection
        urlopen(f"http://127.0.0.1:{tls_server.auth_port}/v1/status", timeout=10)


def test_auth_endpoint_answers_https_for_ip_and_localhost(tls_server: LocalEnsign, tls_files):
    context = ssl.create_default_context(cafile=str(tls_files["ca"]))
    credentials = tls_server.credentials
    body = json.dumps({"client_id": credentials["ClientID"], "client_secret": credentials["ClientSecret"]})
    request = Request(f"{tls_server.auth_url}/v1/authenticate", data=body.encode(), method="POST")
    with urlopen(request, timeout=10, context=context) as reply:
        assert reply.status == 200
        assert set(json.loads(reply.read())) >= {"access_token", "refresh_token"}
    with urlopen(f"https://localhost:{tls_server.auth_port}/v1/status", timeout=10, context=context) as reply:
        assert json.loads(reply.read()) == {"status": "ok"}


def test_a_silent_connection_does_not_hold_up_other_handshakes(tls_server: LocalEnsign, tls_files):
    context = ssl.create_default_context(cafile=str(tls_files["ca"]))
    with socket.create_connection(("127.0.0.1", tls_server.auth_port)):  # connects, never says hello
        started = time.monotonic()
        with urlopen(f"{tls_server.auth_url}/v1/status", timeout=10, context=context) as reply:
            assert reply.status == 200
        assert time.monotonic() - started < 2


def test_status_over_tls(tls_server: LocalEnsign, tls_files):
    data_dir = str(tls_server.data_dir)
    assert cli("status", "--data-dir", data_dir, "--ca", str(tls_files["ca"])).stdout.startswith("HEALTHY")
    trusted = subprocess.run(
        [sys.executable, "-m", "local_ensign", "status", "--data-dir", data_dir],
        capture_output=True,
        text=True,
        timeout=30,
        env=trusting(tls_files["ca"]),
    )
    assert trusted.stdout.startswith("HEALTHY"), trusted.stderr
    untrusted = subprocess.run(
        [sys.executable, "-m", "local_ensign", "status", "--data-dir", data_dir, "--timeout", "3"],
        capture_output=True,
        text=True,
        timeout=30,
        env=trusting(None),
    )
    assert_one_line_error(untrusted, "no Ensign server answering", "--ca FILE")


def test_unusable_tls_files_are_one_line_errors(tls_files, tmp_path: Path):
    serve = ["serve", "--data-dir", str(tmp_path / "data"), "--port", "0", "--auth-port", "0"]
    missing = tmp_path / "missing-key.pem"
    assert_one_line_error(
        cli(*serve, "--tls-cert", str(tls_files["cert"]), "--tls-key", str(missing)),
        f"cannot read TLS key {missing}",
    )
    assert_one_line_error(
        cli(*serve, "--tls-cert", str(tls_files["cert"]), "--tls-key", str(tls_files["other_key"])),
        f"TLS key {tls_files['other_key']} does not match certificate {tls_files['cert']}",
    )
    assert_one_line_error(
        cli(*serve, "--tls-cert", str(tls_files["key"]), "--tls-key", str(tls_files["key"])),
        f"TLS certificate {tls_files['key']} holds no PEM certificate",
    )
    assert_one_line_error(cli(*serve, "--tls-cert", str(tls_files["cert"])), "--tls-key")
