"""The presented certificate's issuer, subject and expiry, for tls_handshake's evidence.

The text is cryptography's: `Name.rfc4514_string()` (short names for the nine attributes it
knows, a dotted OID for the others, RFC 4514 escaping) and `not_valid_after_utc`. A verified
session has these in `ssl`'s own `getpeercert()`, which OpenSSL already decoded: read there, an
agent never imports cryptography, about 8 MiB of RSS (docs/performance.md, "An agent's
footprint"). An unverified session (the re-fetch after a verification failure) gives only the
DER bytes, and a name with an attribute `ssl` reports by a long name not listed here: both are
read by cryptography, imported then, so that the evidence is the same text either way
(tests/test_tls_probe.py compares the two on the test certificates).
"""

from __future__ import annotations

import functools
import re
import ssl
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

__all__ = ["Leaves", "certificate_fields"]

# OpenSSL's long names (what getpeercert() says) as cryptography writes them: its short names
# first (x509/name.py, _NAMEOID_TO_NAME), then as dotted OIDs the ones it has no short name for
# that real certificates carry (e-mail, serial number, the EV fields).
_RFC4514_NAMES = {
    "commonName": "CN",
    "localityName": "L",
    "stateOrProvinceName": "ST",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "countryName": "C",
    "streetAddress": "STREET",
    "domainComponent": "DC",
    "userId": "UID",
    "emailAddress": "1.2.840.113549.1.9.1",
    "serialNumber": "2.5.4.5",
    "businessCategory": "2.5.4.15",
    "postalCode": "2.5.4.17",
    "jurisdictionLocalityName": "1.3.6.1.4.1.311.60.2.1.1",
    "jurisdictionStateOrProvinceName": "1.3.6.1.4.1.311.60.2.1.2",
    "jurisdictionCountryName": "1.3.6.1.4.1.311.60.2.1.3",
    "organizationIdentifier": "2.5.4.97",
}
_DOTTED = re.compile(r"\d+(\.\d+)+")  # an OID OpenSSL has no name for: written as is

# (name, value) pairs per RDN, as getpeercert() gives a name.
DecodedName = tuple[tuple[tuple[str, str], ...], ...]


def certificate_fields(der: bytes, decoded: Mapping[str, Any] | None) -> tuple[str, str, datetime]:
    """(issuer, subject, not_after) of the certificate `der`; `decoded` is the session's
    `getpeercert()` (empty or None when the session was not verified)."""
    if decoded:
        found = _decoded_fields(decoded["issuer"], decoded["subject"], decoded["notAfter"])
        if found is not None:
            return found
    return _der_fields(der)


class Leaves:
    """The fields of the certificates seen before, by their DER bytes, so that a session's
    `getpeercert()` (OpenSSL's decoding into a dict, a fifth of a good TLS step's interpreter
    time) runs once per certificate, not once a round. At most `limit` are kept, the oldest
    dropped first; a renewed or substituted certificate has other bytes, so is read afresh."""

    def __init__(self, limit: int = 256) -> None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        self._limit = limit
        self._held: dict[bytes, tuple[str, str, datetime]] = {}
        self.decoded = 0  # certificates read (not found here): the tests' window

    def fields(
        self, der: bytes, decoded: Callable[[], Mapping[str, Any] | None]
    ) -> tuple[str, str, datetime]:
        """`certificate_fields(der, decoded())`, calling `decoded` only for a certificate
        not held."""
        found = self._held.get(der)
        if found is None:
            found = certificate_fields(der, decoded())
            self.decoded += 1
            if len(self._held) >= self._limit:
                del self._held[next(iter(self._held))]
            self._held[der] = found
        return found


# A target presents the same certificate round after round: parsing it is a tenth of an HTTPS
# round's Python time, so the parse is kept per certificate (its contents are the key, so a
# renewed or substituted certificate is parsed afresh).
@functools.lru_cache(maxsize=256)
def _decoded_fields(
    issuer: DecodedName, subject: DecodedName, not_after: str
) -> tuple[str, str, datetime] | None:
    issuer_text, subject_text = _rfc4514(issuer), _rfc4514(subject)
    if issuer_text is None or subject_text is None:
        return None
    expiry = datetime.fromtimestamp(ssl.cert_time_to_seconds(not_after), UTC)
    return issuer_text, subject_text, expiry


@functools.lru_cache(maxsize=256)
def _der_fields(der: bytes) -> tuple[str, str, datetime]:
    # Imported at the first unverified certificate read (module docstring).
    from cryptography import x509

    cert = x509.load_der_x509_certificate(der)
    return cert.issuer.rfc4514_string(), cert.subject.rfc4514_string(), cert.not_valid_after_utc


def _rfc4514(name: DecodedName) -> str | None:
    """`name` as cryptography's `rfc4514_string()`; None for an attribute not named above."""
    rdns = []
    for rdn in reversed(name):  # RFC 4514 writes the last RDN first
        parts = []
        for key, value in rdn:
            short = _RFC4514_NAMES.get(key) or (key if _DOTTED.fullmatch(key) else None)
            if short is None:
                return None
            parts.append(f"{short}={_escape(value)}")
        rdns.append("+".join(parts))
    return ",".join(rdns)


def _escape(value: str) -> str:
    """RFC 4514 section 2.4, as cryptography's `_escape_dn_value` does it."""
    if not value:
        return ""
    for special in ("\\", '"', "+", ",", ";", "<", ">"):
        value = value.replace(special, "\\" + special)
    value = value.replace("\0", "\\00")
    if value[0] == "#" or (value[0] == " " and len(value) > 1):
        value = "\\" + value
    if value[-1] == " ":
        value = value[:-1] + "\\ "
    return value
