"""tls_handshake against real TLS servers on loopback, directly and through a real tinyproxy."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from egresswatch.addresses import ProxyRoute
from egresswatch.evidence import TlsEvidence
from egresswatch.model import Reason, Status, Step, StepResult
from egresswatch.probes.certnames import Leaves
from egresswatch.probes.tls import TlsContexts, TlsOptions, tls_handshake
from tests.support.evidence import written
from tests.support.https import (
    CA_ORG,
    FOREIGN_ORG,
    HOST,
    NAME,
    LocalServers,
    Pki,
    closed_port,
    local_servers,
    make_pki,
    pki,
    unanswered_port,
)
from tests.support.tinyproxy import TinyProxy, tinyproxy

__all__ = ["local_servers", "pki", "tinyproxy"]  # fixtures, imported explicitly

StartProxy = Callable[..., TinyProxy]
EVIDENCE_KEYS = {
    "address",
    "port",
    "server_name",
    "via_proxy",
    "version",
    "cipher",
    "issuer",
    "subject",
    "not_after",
    "days_left",
    "verify_error",
    "tcp_ms",
    "proxy_connect_ms",
    "tls_ms",
}


async def handshake(
    pki: Pki,
    port: int,
    *,
    server_name: str = NAME,
    proxy: ProxyRoute | None = None,
    timeout_s: float = 5.0,
    tls: TlsOptions | None = None,
) -> StepResult:
    options = tls if tls is not None else TlsOptions(ca_file=pki.ca_file)
    return await tls_handshake(
        HOST, port, server_name, tls=options, timeout_s=timeout_s, proxy=proxy
    )


async def test_trusted(pki: Pki, local_servers: LocalServers) -> None:
    server = await local_servers.https()
    result = await handshake(pki, server.port)
    assert (result.step, result.status, result.reason) == (Step.TLS_HANDSHAKE, Status.OK, None)
    ev = written(result, TlsEvidence)
    assert set(ev) == EVIDENCE_KEYS
    assert ev["version"] in ("TLSv1.3", "TLSv1.2") and ev["cipher"]
    assert CA_ORG in ev["issuer"] and ev["subject"].startswith(f"CN={NAME},")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", ev["not_after"])
    assert ev["days_left"] > 0 and ev["verify_error"] is None and ev["via_proxy"] is None
    assert ev["tcp_ms"] > 0 and ev["proxy_connect_ms"] is None
    assert result.duration_s == pytest.approx(ev["tls_ms"] / 1000, abs=1e-3)
    assert result.detail.startswith(f"{ev['version']} with {NAME}, issuer {ev['issuer']}, ")
    assert re.search(r"expires \d{4}-\d\d-\d\d \(\d+ days\)$", result.detail)


async def test_expired(pki: Pki, local_servers: LocalServers) -> None:
    server = await local_servers.https(cert="expired")
    result = await handshake(pki, server.port)
    assert (result.status, result.reason) == (Status.FAIL, Reason.TLS_EXPIRED)
    assert "expired" in written(result, TlsEvidence)["verify_error"]
    # Read again without verification: the evidence shows the certificate anyway.
    assert (
        written(result, TlsEvidence)["days_left"] < 0
        and CA_ORG in written(result, TlsEvidence)["issuer"]
    )
    assert result.detail.startswith("certificate verify failed: certificate has expired")
    assert "expired 20" in result.detail


async def test_wrong_name(pki: Pki, local_servers: LocalServers) -> None:
    server = await local_servers.https(cert="wrong_name")
    result = await handshake(pki, server.port)
    assert (result.status, result.reason) == (Status.FAIL, Reason.TLS_NAME_MISMATCH)
    assert written(result, TlsEvidence)["subject"].startswith("CN=other.test,")


async def test_unknown_ca_shows_the_foreign_issuer(pki: Pki, local_servers: LocalServers) -> None:
    server = await local_servers.https(cert="foreign")
    result = await handshake(pki, server.port)
    assert (result.status, result.reason) == (Status.FAIL, Reason.TLS_UNTRUSTED)
    assert FOREIGN_ORG in written(result, TlsEvidence)["issuer"]
    assert FOREIGN_ORG in result.detail


async def test_system_store_does_not_know_the_test_ca(
    pki: Pki, local_servers: LocalServers
) -> None:
    server = await local_servers.https()
    result = await handshake(pki, server.port, tls=TlsOptions())
    assert result.reason is Reason.TLS_UNTRUSTED


async def test_verification_off_accepts_any(pki: Pki, local_servers: LocalServers) -> None:
    server = await local_servers.https(cert="foreign")
    result = await handshake(pki, server.port, tls=TlsOptions(verify=False))
    assert result.status is Status.OK
    assert FOREIGN_ORG in written(result, TlsEvidence)["issuer"]


async def test_reset_after_client_hello_is_a_firewall(
    pki: Pki, local_servers: LocalServers
) -> None:
    server = await local_servers.reset_after_hello()
    result = await handshake(pki, server.port)
    assert (result.status, result.reason) == (Status.FAIL, Reason.FIREWALL_DENIED)
    assert "ClientHello" in result.detail and written(result, TlsEvidence)["issuer"] is None


async def test_close_after_client_hello(pki: Pki, local_servers: LocalServers) -> None:
    server = await local_servers.close_after_hello()
    result = await handshake(pki, server.port)
    assert (result.status, result.reason) == (Status.FAIL, Reason.TLS_HANDSHAKE_FAILED)
    assert "without a ServerHello" in result.detail


async def test_not_tls(pki: Pki, local_servers: LocalServers) -> None:
    server = await local_servers.raw(b"HTTP/1.1 400 Bad Request\r\n\r\n")
    result = await handshake(pki, server.port)
    assert (result.status, result.reason) == (Status.FAIL, Reason.TLS_HANDSHAKE_FAILED)
    assert result.detail.startswith("TLS handshake failed:")


async def test_silent_server_times_out_within_budget(pki: Pki, local_servers: LocalServers) -> None:
    server = await local_servers.silent()
    started = time.monotonic()
    result = await handshake(pki, server.port, timeout_s=0.3)
    assert time.monotonic() - started < 1.5
    assert (result.status, result.reason) == (Status.FAIL, Reason.TIMEOUT)
    assert result.detail == "timed out during the TLS handshake"


async def test_tcp_failure_keeps_the_tcp_reason(pki: Pki) -> None:
    result = await handshake(pki, closed_port())
    assert (result.status, result.reason) == (Status.FAIL, Reason.CONN_REFUSED)
    assert result.detail.startswith("TCP connect failed:")
    assert written(result, TlsEvidence)["tls_ms"] is None


async def test_tcp_timeout_keeps_the_tcp_reason(pki: Pki) -> None:
    with unanswered_port() as port:
        result = await handshake(pki, port, timeout_s=0.3)
    assert (result.status, result.reason) == (Status.FAIL, Reason.CONN_TIMEOUT)
    assert result.detail == "timed out during the TCP connect"


# --- through tinyproxy -------------------------------------------------------------------------


async def test_through_allowing_proxy(
    pki: Pki, local_servers: LocalServers, tinyproxy: StartProxy
) -> None:
    server = await local_servers.https()
    proxy = tinyproxy("allow", [server.port]).route()
    result = await handshake(pki, server.port, proxy=proxy)
    assert result.status is Status.OK
    assert written(result, TlsEvidence)["via_proxy"] == str(proxy)
    ev = written(result, TlsEvidence)
    assert ev["proxy_connect_ms"] > 0 and ev["subject"].startswith(f"CN={NAME},")


async def test_expired_through_proxy_still_shows_the_certificate(
    pki: Pki, local_servers: LocalServers, tinyproxy: StartProxy
) -> None:
    server = await local_servers.https(cert="expired")
    proxy = tinyproxy("allow", [server.port]).route()
    result = await handshake(pki, server.port, proxy=proxy)
    assert result.reason is Reason.TLS_EXPIRED and written(result, TlsEvidence)["days_left"] < 0


@pytest.mark.parametrize(
    ("mode", "status", "reason"),
    [("deny", 403, Reason.PROXY_DENIED), ("auth", 407, Reason.PROXY_AUTH_REQUIRED)],
)
async def test_skipped_when_the_proxy_refuses(
    pki: Pki,
    local_servers: LocalServers,
    tinyproxy: StartProxy,
    mode: str,
    status: int,
    reason: Reason,
) -> None:
    server = await local_servers.https()
    proxy = tinyproxy(mode, [server.port]).route(credentials=False)
    result = await handshake(pki, server.port, proxy=proxy)
    assert (result.status, result.reason) == (Status.SKIPPED, reason)
    assert written(result, TlsEvidence)["proxy_status"] == status
    assert "http_response reports it" in result.detail


async def test_credentials_open_the_tunnel(
    pki: Pki, local_servers: LocalServers, tinyproxy: StartProxy
) -> None:
    server = await local_servers.https()
    result = await handshake(pki, server.port, proxy=tinyproxy("auth", [server.port]).route())
    assert result.status is Status.OK


async def test_proxy_cannot_reach_the_endpoint(pki: Pki, tinyproxy: StartProxy) -> None:
    port = closed_port()
    result = await handshake(pki, port, proxy=tinyproxy("allow", [port]).route())
    assert (result.status, result.reason) == (Status.SKIPPED, Reason.DESTINATION_UNREACHABLE)
    assert written(result, TlsEvidence)["proxy_status"] == 500


async def test_missing_ca_file_is_a_probe_error(pki: Pki, tmp_path: Path) -> None:
    missing = TlsOptions(ca_file=tmp_path / "nope.pem")
    result = await handshake(pki, closed_port(), tls=missing)
    assert (result.status, result.reason) == (Status.ERROR, Reason.PROBE_ERROR)
    assert "nope.pem" in result.detail


# --- contexts built once per trust ------------------------------------------------------------


async def test_rounds_share_one_context_per_trust(pki: Pki, local_servers: LocalServers) -> None:
    """Building a context is the dearest part of a round (the system store: ~70 ms of CPU);
    a runner's rounds reuse one per CA file and verification mode."""
    contexts = TlsContexts()
    options = TlsOptions(ca_file=pki.ca_file, contexts=contexts)
    trusted, foreign = await local_servers.https(), await local_servers.https(cert="foreign")
    for _ in range(3):
        assert (await handshake(pki, trusted.port, tls=options)).status is Status.OK
    assert contexts.built == 1
    # A verification failure reads the certificate again without verifying: a second
    # context, made once too, and the verdict and evidence are what they were without a cache.
    for _ in range(2):
        result = await handshake(pki, foreign.port, tls=options)
        assert result.reason is Reason.TLS_UNTRUSTED
        assert FOREIGN_ORG in written(result, TlsEvidence)["issuer"]
    assert contexts.built == 2


async def test_a_rotated_ca_file_is_read_again(tmp_path: Path, pki: Pki) -> None:
    """A CA file replaced on disk (a rotated Secret) gives a new context with the new CA."""
    contexts = TlsContexts()
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(pki.ca_file.read_bytes())
    first = contexts.get(ca_file, True)
    assert contexts.get(ca_file, True) is first
    (tmp_path / "other").mkdir()
    other = make_pki(tmp_path / "other")
    ca_file.write_bytes(other.ca_file.read_bytes() + b"\n")  # another CA, another size
    rotated = contexts.get(ca_file, True)
    assert rotated is not first and contexts.built == 2
    assert rotated.get_ca_certs() != first.get_ca_certs()


async def test_an_unreadable_ca_file_is_not_cached(tmp_path: Path, pki: Pki) -> None:
    contexts = TlsContexts()
    missing = tmp_path / "later.pem"
    with pytest.raises(OSError):
        contexts.get(missing, True)
    missing.write_bytes(pki.ca_file.read_bytes())
    assert contexts.get(missing, True).get_ca_certs() and contexts.built == 1


async def test_a_certificate_seen_before_is_not_decoded_again(
    pki: Pki, local_servers: LocalServers
) -> None:
    """A target presents the same certificate every round: its fields are read once per
    certificate (`TlsContexts.leaves`), and the evidence is the same as without the cache."""
    contexts = TlsContexts()
    cached = TlsOptions(ca_file=pki.ca_file, contexts=contexts)
    trusted, expired = await local_servers.https(), await local_servers.https(cert="expired")
    plain = written(await handshake(pki, trusted.port), TlsEvidence)
    for _ in range(3):
        result = await handshake(pki, trusted.port, tls=cached)
        assert result.status is Status.OK
        again = written(result, TlsEvidence)
        for key in ("issuer", "subject", "not_after", "days_left", "version", "cipher"):
            assert again[key] == plain[key], key
    assert contexts.leaves.decoded == 1
    # Another certificate is another entry, read once too (unverified: a session all the same).
    unverified = TlsOptions(ca_file=pki.ca_file, verify=False, contexts=contexts)
    for _ in range(2):
        assert (await handshake(pki, expired.port, tls=unverified)).status is Status.OK
    assert contexts.leaves.decoded == 2


def test_leaves_keep_at_most_their_limit() -> None:
    """The oldest certificate goes first once `limit` are held; it is read again if seen."""
    leaves = Leaves(limit=2)
    read: list[bytes] = []

    def reader(der: bytes) -> Callable[[], dict[str, object]]:
        def decoded() -> dict[str, object]:
            read.append(der)
            issuer = ((("commonName", der.decode()),),)
            return {"issuer": issuer, "subject": issuer, "notAfter": "Jan  1 00:00:00 2030 GMT"}

        return decoded

    for der in (b"a", b"b", b"a", b"c", b"b", b"a"):
        assert leaves.fields(der, reader(der))[0] == f"CN={der.decode()}"
    assert read == [b"a", b"b", b"c", b"a"]  # the first in goes first: a for c, then b for a
    with pytest.raises(ValueError, match="limit"):
        Leaves(limit=0)
