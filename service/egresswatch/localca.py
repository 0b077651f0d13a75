"""A throwaway certificate authority made on the spot, for servers on loopback.

`egresswatch demo` and `egresswatch bench` serve HTTPS on 127.0.0.1 with certificates nobody
else trusts: the CA lives for one run, its certificate is written out for the prober to trust,
and each leaf names the DNS names and IP addresses it serves. Keys are P-256 (cheap to make and
to handshake with); validity is two days, one either side of now, to absorb clock skew.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_VALID = timedelta(days=2)  # a run lasts minutes; a day either side absorbs clock skew
_SKEW = timedelta(days=1)


@dataclass(frozen=True)
class Leaf:
    """A server certificate (PEM) and its private key (PEM, PKCS#8, unencrypted)."""

    cert_pem: bytes
    key_pem: bytes


class LocalCa:
    """A CA whose key lives in this object only; :meth:`issue` signs server certificates."""

    def __init__(self, name: str) -> None:
        self._now = datetime.now(UTC)
        self._key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, name),
                x509.NameAttribute(NameOID.COMMON_NAME, name),
            ]
        )
        self._ski = x509.SubjectKeyIdentifier.from_public_key(self._key.public_key())
        self._cert = (
            self._builder(subject, subject, self._key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(ca=True), critical=True)
            .add_extension(self._ski, critical=False)
            .sign(self._key, hashes.SHA256())
        )

    @property
    def cert_pem(self) -> bytes:
        """The CA's certificate: what a client trusts (a `ca_file`)."""
        return self._cert.public_bytes(serialization.Encoding.PEM)

    def issue(self, *names: str) -> Leaf:
        """A server certificate for `names` (the first is the common name); a name that parses
        as an IP address goes in the subjectAltName as one, the others as DNS names."""
        if not names:
            raise ValueError("issue: at least one name")
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
        cert = (
            self._builder(subject, self._cert.subject, key.public_key())
            .add_extension(x509.SubjectAlternativeName([_alt_name(n) for n in names]), False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(ca=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(self._ski),
                critical=False,
            )
            .sign(self._key, hashes.SHA256())
        )
        secret = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return Leaf(cert.public_bytes(serialization.Encoding.PEM), secret)

    def _builder(
        self, subject: x509.Name, issuer: x509.Name, public: ec.EllipticCurvePublicKey
    ) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(self._now - _SKEW)
            .not_valid_after(self._now + _VALID)
        )


def _alt_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )
