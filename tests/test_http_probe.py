"""http_response against real HTTP(S) servers on loopback, directly and through tinyproxy."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from egresswatch.addresses import ProxyRoute
from egresswatch.evidence import HttpEvidence
from egresswatch.model import Endpoint, Reason, Scheme, Status, StatusRanges, Step, StepResult
from egresswatch.probes.http import http_response
from egresswatch.probes.tls import TlsOptions
from tests.support.evidence import written
from tests.support.https import (
    HOST,
    NAME,
    LocalServer,
    LocalServers,
    Pki,
    Reply,
    closed_port,
    local_servers,
    pki,
    unanswered_port,
)
from tests.support.tinyproxy import TinyProxy, tinyproxy

__all__ = ["local_servers", "pki", "tinyproxy"]  # fixtures, imported explicitly

StartProxy = Callable[..., TinyProxy]
DEFAULT = StatusRanges()  # 200-399
AZURE_DENY = Reply(470, body=b"Action: Deny. Reason: No rule matched. Proceeding with default.")
EVIDENCE_KEYS = {
    "url",
    "address",
    "via_proxy",
    "expected",
    "status",
    "proxy_status",
    "server",
    "location",
    "connect_ms",
    "proxy_connect_ms",
    "tls_ms",
    "ttfb_ms",
    "total_ms",
}


async def request(
    pki: Pki,
    endpoint: Endpoint,
    *,
    address: str | None = HOST,
    proxy: ProxyRoute | None = None,
    expect: StatusRanges = DEFAULT,
    method: str = "GET",
    timeout_s: float = 5.0,
) -> StepResult:
    return await http_response(
        endpoint,
        address,
        proxy=proxy,
        tls=TlsOptions(ca_file=pki.ca_file),
        expect=expect,
        method=method,
        timeout_s=timeout_s,
    )


def named(server: LocalServer, scheme: Scheme = Scheme.HTTPS, path: str = "/") -> Endpoint:
    """The server by a name that is never resolved (we connect to 127.0.0.1)."""
    return Endpoint(scheme, NAME, server.port, path)


def by_ip(server: LocalServer, scheme: Scheme = Scheme.HTTPS) -> Endpoint:
    """The server by IP: what a proxy is asked for, so that tinyproxy resolves nothing."""
    return Endpoint(scheme, HOST, server.port)


# --- direct ------------------------------------------------------------------------------------


async def test_https_ok(pki: Pki, local_servers: LocalServers) -> None:
    server = await local_servers.https(Reply(200, [("Server", "test/1")]))
    result = await request(pki, named(server, path="/health?x=1"))
    assert (result.step, result.status, result.reason) == (Step.HTTP_RESPONSE, Status.OK, None)
    ev = written(result, HttpEvidence)
    assert set(ev) == EVIDENCE_KEYS
    assert (ev["status"], ev["expected"], ev["server"], ev["address"]) == (
        200,
        "200-399",
        "test/1",
        HOST,
    )
    assert ev["via_proxy"] is None and ev["proxy_connect_ms"] is None
    assert all(ev[key] > 0 for key in ("connect_ms", "tls_ms", "ttfb_ms", "total_ms"))
    assert result.duration_s == pytest.approx(ev["total_ms"] / 1000, abs=1e-3)
    url = f"https://{NAME}:{server.port}/health?x=1"
    assert result.detail.startswith(f"HTTP 200 from {url} in ")
    assert result.detail.endswith(" ms (expected 200-399)")
    head = server.requests[0].decode()
    assert head.startswith("GET /health?x=1 HTTP/1.1\r\n")
    for line in (f"Host: {NAME}:{server.port}", "User-Agent: egresswatch/0.1", "Accept: */*"):
        assert f"\r\n{line}\r\n" in head
    assert "Connection: close" in head


async def test_http_ok_with_redirect_and_head(pki: Pki, local_servers: LocalServers) -> None:
    server = await local_servers.http(Reply(301, [("Location", "https://endpoint.test/")]))
    result = await request(pki, named(server, Scheme.HTTP), method="HEAD")
    assert result.status is Status.OK
    assert written(result, HttpEvidence)["location"] == "https://endpoint.test/"
    assert written(result, HttpEvidence)["tls_ms"] is None
    assert server.requests[0].startswith(b"HEAD / HTTP/1.1\r\n")


async def test_unexpected_status(pki: Pki, local_servers: LocalServers) -> None:
    server = await local_servers.https(Reply(503))
    result = await request(pki, named(server))
    assert (result.status, result.reason) == (Status.FAIL, Reason.HTTP_STATUS)
    assert written(result, HttpEvidence)["status"] == 503
    assert result.detail.endswith(", expected 200-399")


async def test_expected_set_is_respected(pki: Pki, local_servers: LocalServers) -> None:
    server = await local_servers.https(Reply(404))
    assert (await request(pki, named(server))).reason is Reason.HTTP_STATUS
    custom = StatusRanges.parse("200-299,404")
    result = await request(pki, named(server), expect=custom)
    assert result.status is Status.OK and written(result, HttpEvidence)["expected"] == "200-299,404"


@pytest.mark.parametrize("scheme", [Scheme.HTTP, Scheme.HTTPS])
async def test_azure_firewall_470(pki: Pki, local_servers: LocalServers, scheme: Scheme) -> None:
    start = local_servers.http if scheme is Scheme.HTTP else local_servers.https
    server = await start(AZURE_DENY)
    result = await request(pki, named(server, scheme))
    assert (result.status, result.reason) == (Status.FAIL, Reason.FIREWALL_DENIED)
    assert written(result, HttpEvidence)["status"] == 470
    assert "answered 470" in result.detail


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ([("Via", "1.1 egress-proxy.corp")], Reason.PROXY_DENIED),
        ([("Server", "squid/6.6"), ("X-Squid-Error", "ERR_ACCESS_DENIED 0")], Reason.PROXY_DENIED),
        ([("Server", "nginx")], Reason.HTTP_STATUS),
        ([], Reason.HTTP_STATUS),
    ],
)
async def test_403_proxy_signature_or_not(
    pki: Pki, local_servers: LocalServers, headers: list[tuple[str, str]], reason: Reason
) -> None:
    server = await local_servers.http(Reply(403, headers, b"<h1>Forbidden</h1>"))
    result = await request(pki, named(server, Scheme.HTTP))
    assert (result.status, result.reason) == (Status.FAIL, reason)


async def test_interim_answers_are_skipped(pki: Pki, local_servers: LocalServers) -> None:
    early_hints = b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
    server = await local_servers.raw(early_hints + Reply(204).encode())
    result = await request(pki, named(server, Scheme.HTTP))
    assert result.status is Status.OK and written(result, HttpEvidence)["status"] == 204


async def test_not_http(pki: Pki, local_servers: LocalServers) -> None:
    server = await local_servers.raw(b"SSH-2.0-OpenSSH_9.6\r\n")
    result = await request(pki, named(server, Scheme.HTTP))
    assert (result.status, result.reason) == (Status.FAIL, Reason.HTTP_PROTOCOL)
    assert "not an HTTP answer: 'SSH-2.0" in result.detail


async def test_closed_before_answering(pki: Pki, local_servers: LocalServers) -> None:
    server = await local_servers.raw(b"", tls=True)
    result = await request(pki, named(server))
    assert (result.status, result.reason) == (Status.FAIL, Reason.HTTP_PROTOCOL)
    assert "connection closed before answering" in result.detail


async def test_silent_server_times_out_within_budget(pki: Pki, local_servers: LocalServers) -> None:
    server = await local_servers.silent()
    started = time.monotonic()
    result = await request(pki, named(server, Scheme.HTTP), timeout_s=0.3)
    assert time.monotonic() - started < 1.5
    assert (result.status, result.reason) == (Status.FAIL, Reason.TIMEOUT)
    assert result.detail.endswith("timed out during the HTTP exchange")
    assert written(result, HttpEvidence)["ttfb_ms"] >= 250


async def test_reset_after_client_hello(pki: Pki, local_servers: LocalServers) -> None:
    server = await local_servers.reset_after_hello()
    result = await request(pki, named(server))
    assert (result.status, result.reason) == (Status.FAIL, Reason.FIREWALL_DENIED)


async def test_reset_after_the_request(pki: Pki, local_servers: LocalServers) -> None:
    server = await local_servers.reset_after_hello()
    result = await request(pki, named(server, Scheme.HTTP))
    assert (result.status, result.reason) == (Status.FAIL, Reason.CONN_RESET)


@pytest.mark.parametrize(
    ("cert", "reason"),
    [
        ("expired", Reason.TLS_EXPIRED),
        ("wrong_name", Reason.TLS_NAME_MISMATCH),
        ("foreign", Reason.TLS_UNTRUSTED),
    ],
)
async def test_tls_failures_keep_their_reason(
    pki: Pki, local_servers: LocalServers, cert: str, reason: Reason
) -> None:
    server = await local_servers.https(cert=cert)
    result = await request(pki, named(server))
    assert (result.status, result.reason) == (Status.FAIL, reason)
    assert "certificate verify failed" in result.detail


async def test_connection_refused(pki: Pki) -> None:
    result = await request(pki, Endpoint(Scheme.HTTPS, NAME, closed_port()))
    assert (result.status, result.reason) == (Status.FAIL, Reason.CONN_REFUSED)


async def test_connect_timeout(pki: Pki) -> None:
    with unanswered_port() as port:
        result = await request(pki, Endpoint(Scheme.HTTPS, NAME, port), timeout_s=0.3)
    assert (result.status, result.reason) == (Status.FAIL, Reason.CONN_TIMEOUT)
    ev = written(result, HttpEvidence)
    assert ev["tls_ms"] is None and ev["connect_ms"] >= 250


async def test_skips(pki: Pki) -> None:
    no_ip = await request(pki, Endpoint.parse("https://endpoint.test/"), address=None)
    assert (no_ip.status, no_ip.reason) == (Status.SKIPPED, Reason.NO_ADDRESS)
    tcp = await request(pki, Endpoint.parse("endpoint.test:5432"))
    assert (tcp.status, tcp.reason) == (Status.SKIPPED, Reason.NOT_APPLICABLE)


# --- through tinyproxy -------------------------------------------------------------------------


async def test_https_through_allowing_proxy(
    pki: Pki, local_servers: LocalServers, tinyproxy: StartProxy
) -> None:
    server = await local_servers.https()
    proxy = tinyproxy("allow", [server.port]).route(origin="environment")
    result = await request(pki, by_ip(server), address=None, proxy=proxy)
    assert result.status is Status.OK
    ev = written(result, HttpEvidence)
    assert ev["via_proxy"] == f"proxy {HOST}:{proxy.port} (environment)"
    assert (ev["status"], ev["proxy_status"], ev["address"]) == (200, 200, None)
    assert ev["proxy_connect_ms"] > 0 and ev["tls_ms"] > 0


async def test_http_through_allowing_proxy(
    pki: Pki, local_servers: LocalServers, tinyproxy: StartProxy
) -> None:
    server = await local_servers.http()
    proxy = tinyproxy("allow").route()
    result = await request(pki, by_ip(server, Scheme.HTTP), address=None, proxy=proxy)
    assert result.status is Status.OK and written(result, HttpEvidence)["proxy_connect_ms"] is None
    assert server.requests[0].startswith(b"GET / HTTP/1.")  # tinyproxy relayed it


async def test_endpoint_403_relayed_by_proxy_is_the_endpoints(
    pki: Pki, local_servers: LocalServers, tinyproxy: StartProxy
) -> None:
    server = await local_servers.http(Reply(403, [("Server", "nginx")]))
    proxy = tinyproxy("allow").route()
    result = await request(pki, by_ip(server, Scheme.HTTP), address=None, proxy=proxy)
    assert result.reason is Reason.HTTP_STATUS


@pytest.mark.parametrize("scheme", [Scheme.HTTPS, Scheme.HTTP])
async def test_denying_proxy(
    pki: Pki, local_servers: LocalServers, tinyproxy: StartProxy, scheme: Scheme
) -> None:
    server = await (local_servers.https() if scheme is Scheme.HTTPS else local_servers.http())
    proxy = tinyproxy("deny", [server.port]).route()
    result = await request(pki, by_ip(server, scheme), address=None, proxy=proxy)
    assert (result.status, result.reason) == (Status.FAIL, Reason.PROXY_DENIED)
    ev = written(result, HttpEvidence)
    assert ev["status"] == 403 and ev["server"].startswith("tinyproxy")
    assert result.detail.startswith(f"{proxy} answered 403 Filtered")
    assert server.requests == []


@pytest.mark.parametrize("scheme", [Scheme.HTTPS, Scheme.HTTP])
async def test_proxy_credentials(
    pki: Pki, local_servers: LocalServers, tinyproxy: StartProxy, scheme: Scheme
) -> None:
    server = await (local_servers.https() if scheme is Scheme.HTTPS else local_servers.http())
    proxy = tinyproxy("auth", [server.port])
    endpoint = by_ip(server, scheme)
    refused = await request(pki, endpoint, address=None, proxy=proxy.route(credentials=False))
    assert (refused.status, refused.reason) == (Status.FAIL, Reason.PROXY_AUTH_REQUIRED)
    assert refused.detail.startswith(f"proxy {HOST}:{proxy.port} (config) answered 407 ")
    accepted = await request(pki, endpoint, address=None, proxy=proxy.route())
    assert accepted.status is Status.OK
    assert all(b"Proxy-Authorization" not in head for head in server.requests)


@pytest.mark.parametrize("scheme", [Scheme.HTTPS, Scheme.HTTP])
async def test_proxy_cannot_reach_the_endpoint(
    pki: Pki, tinyproxy: StartProxy, scheme: Scheme
) -> None:
    port = closed_port()
    proxy = tinyproxy("allow", [port]).route()
    endpoint = Endpoint(scheme, HOST, port)
    result = await request(pki, endpoint, address=None, proxy=proxy)
    # The proxy works and says the endpoint refused it: past the proxy, not the proxy's fault.
    assert (result.status, result.reason) == (Status.FAIL, Reason.DESTINATION_UNREACHABLE)
    assert written(result, HttpEvidence)["status"] == 500


async def test_proxy_that_does_not_speak_http(pki: Pki, local_servers: LocalServers) -> None:
    not_a_proxy = await local_servers.raw(b"SSH-2.0-OpenSSH_9.6\r\n")
    endpoint = Endpoint(Scheme.HTTPS, HOST, 443)  # never reached: the CONNECT fails first
    proxy = ProxyRoute(HOST, not_a_proxy.port)
    result = await request(pki, endpoint, address=None, proxy=proxy)
    assert (result.status, result.reason) == (Status.FAIL, Reason.PROXY_ERROR)
    assert "CONNECT through the proxy failed" in result.detail


async def test_missing_ca_file_is_a_probe_error(tmp_path: Path) -> None:
    result = await http_response(
        Endpoint(Scheme.HTTPS, NAME, closed_port()),
        HOST,
        proxy=None,
        tls=TlsOptions(ca_file=tmp_path / "nope.pem"),
        expect=DEFAULT,
        timeout_s=1.0,
    )
    assert (result.status, result.reason) == (Status.ERROR, Reason.PROBE_ERROR)
