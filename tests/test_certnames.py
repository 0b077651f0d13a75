"""The certificate's names from a verified session are cryptography's text, without it.

probes/certnames.py writes issuer and subject from `ssl`'s `getpeercert()`; the evidence must
be the very text cryptography's `rfc4514_string()` gives (stored rounds, incidents and the lab's
TLS scenarios compare it). Real handshakes on loopback with certificates made here whose names
hold what RFC 4514 escapes, the EV attributes, a multi-valued RDN and an OID OpenSSL does not
know; the reference is cryptography reading the same DER.
"""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from egresswatch.probes.certnames import certificate_fields
from egresswatch.probes.tls import certificate_evidence

HOST = "127.0.0.1"
NOW = datetime.now(UTC).replace(microsecond=0)

ISSUER = x509.Name(
    [
        x509.NameAttribute(NameOID.COUNTRY_NAME, "DE"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, 'Müller, "Süd" + Co; <GmbH>'),
        x509.NameAttribute(NameOID.COMMON_NAME, "#Root\\CA "),
    ]
)
SUBJECT = x509.Name(
    [
        x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.DOMAIN_COMPONENT, "test")]),
        x509.RelativeDistinguishedName(
            [
                x509.NameAttribute(NameOID.JURISDICTION_COUNTRY_NAME, "US"),
                x509.NameAttribute(NameOID.BUSINESS_CATEGORY, "Private Organization"),
            ]
        ),
        x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.SERIAL_NUMBER, "HRB 1")]),
        x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.EMAIL_ADDRESS, "a@b.test")]),
        x509.RelativeDistinguishedName(
            [x509.NameAttribute(x509.ObjectIdentifier("1.3.6.1.4.1.99999.1"), "private")]
        ),
        x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COMMON_NAME, " lead")]),
    ]
)
# givenName: OpenSSL names it, the table in certnames.py does not: cryptography reads it.
UNLISTED = x509.Name(
    [
        x509.NameAttribute(NameOID.GIVEN_NAME, "Ada"),
        x509.NameAttribute(NameOID.COMMON_NAME, "unlisted.test"),
    ]
)


def _certificate(
    subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePrivateKey, signer: object
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=30, hours=12))  # days_left: 30 for hours
    )
    ca = subject == issuer
    builder = builder.add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(HOST))]),
            critical=False,
        )
    return builder.sign(signer, hashes.SHA256())  # type: ignore[arg-type]


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


async def _handshake(tmp_path: Path, subject: x509.Name, *, verify: bool) -> ssl.SSLObject:
    """A loopback TLS server presenting a leaf named `subject` under ISSUER; the client's
    session (verified against ISSUER, or not verified)."""
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = _certificate(ISSUER, ISSUER, ca_key, ca_key)
    leaf = _certificate(subject, ISSUER, key, ca_key)
    chain, key_file = tmp_path / "leaf.pem", tmp_path / "key.pem"
    chain.write_bytes(_pem(leaf))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(chain, key_file)
    client = ssl.create_default_context(cadata=_pem(ca).decode())
    if not verify:
        client.check_hostname, client.verify_mode = False, ssl.CERT_NONE
    server = await asyncio.start_server(lambda r, w: None, HOST, 0, ssl=server_context)
    port = server.sockets[0].getsockname()[1]
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(HOST, port, ssl=client, server_hostname=HOST), 10
        )
        ssl_object = writer.get_extra_info("ssl_object")
        writer.transport.abort()
        return ssl_object  # type: ignore[no-any-return]
    finally:
        server.close()


def _reference(ssl_object: ssl.SSLObject) -> tuple[str, str, datetime]:
    cert = x509.load_der_x509_certificate(ssl_object.getpeercert(binary_form=True) or b"")
    return cert.issuer.rfc4514_string(), cert.subject.rfc4514_string(), cert.not_valid_after_utc


@pytest.fixture
def no_der_parse(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """cryptography's path refused: what is read must come from getpeercert()."""
    from egresswatch.probes import certnames

    def refused(der: bytes) -> tuple[str, str, datetime]:
        raise AssertionError("the verified session's names were read with cryptography")

    monkeypatch.setattr(certnames, "_der_fields", refused)
    yield None


async def test_a_verified_session_gives_cryptographys_text_without_it(
    tmp_path: Path, no_der_parse: None
) -> None:
    ssl_object = await _handshake(tmp_path, SUBJECT, verify=True)
    assert ssl_object.getpeercert()  # verified: ssl decoded it
    issuer, subject, not_after = certificate_fields(
        ssl_object.getpeercert(binary_form=True) or b"", ssl_object.getpeercert()
    )
    assert (issuer, subject, not_after) == _reference(ssl_object)
    assert subject.startswith("CN=\\ lead,1.3.6.1.4.1.99999.1=private,1.2.840.113549.1.9.1=")
    evidence = certificate_evidence(ssl_object)
    assert evidence["not_after"] == not_after.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert evidence["days_left"] == 30


async def test_an_unlisted_attribute_and_an_unverified_session_are_read_by_cryptography(
    tmp_path: Path,
) -> None:
    verified = await _handshake(tmp_path, UNLISTED, verify=True)
    assert certificate_evidence(verified)["subject"] == "CN=unlisted.test,2.5.4.42=Ada"
    unverified = await _handshake(tmp_path, SUBJECT, verify=False)
    assert unverified.getpeercert() == {}  # what the re-fetch after a failure has
    der = unverified.getpeercert(binary_form=True) or b""
    assert certificate_fields(der, {}) == _reference(unverified)
