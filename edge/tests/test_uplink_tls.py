"""TLS to the broker with client certificates: it works against a Mosquitto that demands
them, a certificate from the wrong CA does not get in, and every mistake in the TLS
settings is one line that names the setting and the file."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from hil_tests.testing.fake_outbox import FakeOutbox
from hil_tests.testing.mosquitto import Mosquitto, free_port, running_mosquitto
from hil_tests.testing.mqtt_backend import Backend
from kommune.edge.northbound import Priority
from kommune.edge.uplink import BackoffPolicy, TlsConfig, Uplink, UplinkConfig, UplinkConfigError

DEADLINE_S = 20.0


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    stranger_cert: Path  # a client certificate from another CA
    stranger_key: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


def _write_cert(path: Path, cert: x509.Certificate) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _issue(
    cn: str,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
    *,
    server: bool = False,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(issuer[0].subject if issuer else _name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    if issuer is None:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=0), True)
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), True
        )
        builder = builder.add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False
        )
    else:
        builder = builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), False)
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer[1].public_key()), False
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                False,
            )
    signer = issuer[1] if issuer else key
    return builder.sign(signer, hashes.SHA256()), key


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca = _issue("kommune test CA", None)
    other_ca = _issue("someone else's CA", None)
    server = _issue("broker", ca, server=True)
    client = _issue("edge-1", ca)
    stranger = _issue("edge-1", other_ca)
    return Pki(
        ca=_write_cert(d / "ca.pem", ca[0]),
        server_cert=_write_cert(d / "server.pem", server[0]),
        server_key=_write_key(d / "server.key", server[1]),
        client_cert=_write_cert(d / "client.pem", client[0]),
        client_key=_write_key(d / "client.key", client[1]),
        stranger_cert=_write_cert(d / "stranger.pem", stranger[0]),
        stranger_key=_write_key(d / "stranger.key", stranger[1]),
    )


@pytest.fixture
def tls_broker(pki: Pki, tmp_path: Path) -> Iterator[tuple[Mosquitto, int]]:
    """A broker with its plain listener (for the backend) and a TLS one that demands a
    client certificate from our CA."""
    tls_port = free_port()
    extra = (
        f"listener {tls_port} 127.0.0.1\n"
        f"cafile {pki.ca}\ncertfile {pki.server_cert}\nkeyfile {pki.server_key}\n"
        "require_certificate true\nuse_identity_as_username true\n"
    )
    with running_mosquitto(tmp_path / "broker", extra_config=extra) as broker:
        yield broker, tls_port


def _config(port: int, tls: TlsConfig) -> UplinkConfig:
    return UplinkConfig(
        host="127.0.0.1",
        port=port,
        site="oslo",
        agent="edge-1",
        tls=tls,
        backoff=BackoffPolicy(initial_s=0.02, max_s=0.2),
        connect_timeout_s=5.0,
    )


async def test_client_certificate_gets_rows_to_the_backend(
    pki: Pki, tls_broker: tuple[Mosquitto, int]
) -> None:
    broker, tls_port = tls_broker
    outbox = FakeOutbox()
    row = outbox.add("lock-3/audit", Priority.AUDIT, "entry", "opened")
    tls = TlsConfig(ca=pki.ca, cert=pki.client_cert, key=pki.client_key)
    async with (
        asyncio.timeout(DEADLINE_S),
        Backend(broker.host, broker.port) as backend,
        Uplink(_config(tls_port, tls), outbox) as uplink,
    ):
        await outbox.wait_empty()
        await backend.wait_for_keys({("edge-1", "lock-3/audit", row.seq)})
        assert uplink.state.connected
    assert "as edge-1" in broker.log_text() or "u'edge-1'" in broker.log_text()


async def test_a_certificate_from_another_ca_does_not_get_in(
    pki: Pki, tls_broker: tuple[Mosquitto, int]
) -> None:
    _, tls_port = tls_broker
    outbox = FakeOutbox()
    outbox.add("lock-3/audit", Priority.AUDIT, "entry", "opened")
    tls = TlsConfig(ca=pki.ca, cert=pki.stranger_cert, key=pki.stranger_key)
    async with Uplink(_config(tls_port, tls), outbox) as uplink, asyncio.timeout(DEADLINE_S):
        state = await uplink.wait_state(lambda s: s.connect_failures >= 2)
    assert state.connections == 0 and outbox.acked_row_ids() == set()
    assert "unknown ca" in (state.last_error or "").lower()  # said at once, not a timeout
    assert "\n" not in (state.last_error or "")
    assert outbox.handed_out == set()


async def test_a_broker_certificate_we_do_not_trust_is_refused(
    pki: Pki, tls_broker: tuple[Mosquitto, int]
) -> None:
    _, tls_port = tls_broker
    outbox = FakeOutbox()
    # Our client certificate, but trusting only the stranger's CA: the broker is unknown.
    tls = TlsConfig(ca=pki.stranger_cert, cert=pki.client_cert, key=pki.client_key)
    async with Uplink(_config(tls_port, tls), outbox) as uplink, asyncio.timeout(DEADLINE_S):
        state = await uplink.wait_state(lambda s: s.connect_failures >= 1)
    assert state.connections == 0
    assert "certificate verify failed" in (state.last_error or "")


def test_tls_port_defaults_to_8883(pki: Pki) -> None:
    c = UplinkConfig(host="mqtt.example", site="oslo", agent="edge-1", tls=TlsConfig(ca=pki.ca))
    assert c.resolved_port == 8883


@pytest.mark.parametrize(
    ("make", "says"),
    [
        (lambda p, d: TlsConfig(ca=d / "missing.pem"), "tls.ca: {d}/missing.pem: no such file"),
        (lambda p, d: TlsConfig(ca=d), "tls.ca: {d}: is a directory"),
        (lambda p, d: TlsConfig(ca=d / "garbage.pem"), "tls.ca: {d}/garbage.pem: not a PEM CA"),
        (lambda p, d: TlsConfig(cert=d / "nope.pem", key=p.client_key), "tls.cert: {d}/nope.pem"),
        (lambda p, d: TlsConfig(key=p.client_key), "tls.key is set but tls.cert is not"),
        (
            lambda p, d: TlsConfig(cert=p.client_cert, key=p.stranger_key),
            "tls.key: {key} is not the key of tls.cert",
        ),
        (lambda p, d: TlsConfig(cert=p.client_cert), "tls.cert: "),  # no key anywhere
        (
            lambda p, d: TlsConfig(cert=d / "garbage.pem", key=p.client_key),
            "tls.cert: {d}/garbage.pem / ",
        ),
    ],
)
def test_tls_mistakes_are_one_line_naming_the_setting(
    pki: Pki, tmp_path: Path, make: object, says: str
) -> None:
    (tmp_path / "garbage.pem").write_text("this is not a certificate\n")
    tls = make(pki, tmp_path)  # type: ignore[operator]
    config = UplinkConfig(host="mqtt.example", site="oslo", agent="edge-1", tls=tls)
    with pytest.raises(UplinkConfigError) as err:
        config.check()
    message = str(err.value)
    assert message.startswith(says.format(d=tmp_path, key=pki.stranger_key)), message
    assert "\n" not in message
    # The uplink refuses to be made with it, with the same line.
    with pytest.raises(UplinkConfigError, match=r"^tls"):
        Uplink(config, FakeOutbox())
