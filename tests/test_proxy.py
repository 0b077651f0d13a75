"""Proxy routes: parsing, which proxy applies (config, environment, NO_PROXY), the CONNECT
tunnel against a real tinyproxy, and the one table that says what a refusal means."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

import pytest

from egresswatch.addresses import ProxyRoute
from egresswatch.model import Endpoint, Reason
from egresswatch.probes.proxy import (
    TunnelAnswer,
    bypasses,
    open_tunnel,
    proxy_for,
    proxy_refusal_reason,
)
from tests.support.https import HOST, LocalServers, local_servers, pki
from tests.support.tinyproxy import TinyProxy, tinyproxy

__all__ = ["local_servers", "pki", "tinyproxy"]  # fixtures, imported explicitly

HTTPS = Endpoint.parse("https://api.example.com/")
HTTP = Endpoint.parse("http://api.example.com/")

# --- parsing -----------------------------------------------------------------------------------


def test_parse_full_url() -> None:
    route = ProxyRoute.parse("http://us%40er:p%3Ass@Proxy.Corp:3128/", origin="environment")
    assert route == ProxyRoute("proxy.corp", 3128, "us@er", "p:ss", "environment")


def test_parse_like_curl_without_scheme_or_port() -> None:
    assert ProxyRoute.parse("10.0.0.4:8080") == ProxyRoute("10.0.0.4", 8080)
    assert ProxyRoute.parse("http://proxy.corp").port == 1080


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("https://proxy.corp:443", "https:// proxies"),
        ("socks5://proxy.corp:1080", "unsupported proxy scheme"),
        ("http://:3128", "no proxy host"),
        ("http://proxy.corp:99999", "bad proxy port"),
        ("http://proxy.corp:3128/path", "no path"),
    ],
)
def test_parse_rejects(url: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        ProxyRoute.parse(url)


def test_password_never_shown() -> None:
    route = ProxyRoute.parse("http://user:hunter2@127.0.0.1:8888", origin="environment")
    assert str(route) == "proxy user@127.0.0.1:8888 (environment)"
    assert "hunter2" not in repr(route)
    assert route.authorization() == "Basic dXNlcjpodW50ZXIy"
    assert str(ProxyRoute("::1", 3128)) == "proxy [::1]:3128 (config)"


# --- which proxy applies -----------------------------------------------------------------------

CONFIGURED = ProxyRoute("10.1.0.4", 3128)
ENV = {"HTTPS_PROXY": "http://10.2.0.4:8080", "http_proxy": "http://10.3.0.4:8080"}


def choose(
    endpoint: Endpoint,
    environ: Mapping[str, str],
    *,
    configured: ProxyRoute | None = None,
    no_proxy: tuple[str, ...] = (),
    use_environment: bool = True,
) -> ProxyRoute | None:
    return proxy_for(
        endpoint,
        configured=configured,
        no_proxy=no_proxy,
        use_environment=use_environment,
        environ=environ,
    )


def test_environment_by_scheme() -> None:
    assert choose(HTTPS, ENV) == ProxyRoute("10.2.0.4", 8080, origin="environment")
    assert choose(HTTP, ENV) == ProxyRoute("10.3.0.4", 8080, origin="environment")


def test_lower_case_variable_first_like_curl() -> None:
    environ = {"https_proxy": "http://10.9.0.1:1", "HTTPS_PROXY": "http://10.9.0.2:2"}
    route = choose(HTTPS, environ)
    assert route is not None and route.host == "10.9.0.1"


def test_environment_ignored_when_not_wanted_and_for_tcp() -> None:
    assert choose(HTTPS, ENV, use_environment=False) is None
    assert choose(Endpoint.parse("api.example.com:5432"), ENV) is None
    assert choose(Endpoint.parse("api.example.com:5432"), ENV, configured=CONFIGURED) is None


def test_configured_proxy_wins_over_environment() -> None:
    assert choose(HTTPS, ENV, configured=CONFIGURED) == CONFIGURED
    assert choose(HTTPS, {}, configured=CONFIGURED, use_environment=False) == CONFIGURED


def test_configured_proxy_bypassed_by_its_own_no_proxy_only() -> None:
    assert choose(HTTPS, ENV, configured=CONFIGURED, no_proxy=(".example.com",)) is None
    with_env_no_proxy = {**ENV, "NO_PROXY": "example.com"}
    assert choose(HTTPS, with_env_no_proxy, configured=CONFIGURED) == CONFIGURED


@pytest.mark.parametrize("variable", ["NO_PROXY", "no_proxy"])
def test_environment_no_proxy(variable: str) -> None:
    environ = {**ENV, variable: "localhost, .example.com"}
    assert choose(HTTPS, environ) is None
    assert choose(Endpoint.parse("https://example.org/"), environ) is not None


def test_bad_environment_value_names_the_variable() -> None:
    with pytest.raises(ValueError, match="HTTPS_PROXY"):
        choose(HTTPS, {"HTTPS_PROXY": "https://10.2.0.4:443"})


@pytest.mark.parametrize(
    ("target", "entries", "direct"),
    [
        ("https://api.example.com/", ["*"], True),
        ("https://api.example.com/", ["example.com"], True),
        ("https://api.example.com/", [".example.com"], True),
        ("https://example.com/", [".example.com"], True),
        ("https://api.example.com/", ["*.example.com"], True),
        ("https://API.Example.COM/", ["EXAMPLE.com"], True),
        ("https://notexample.com/", ["example.com"], False),
        ("https://example.com.evil.test/", ["example.com"], False),
        ("https://api.example.com/", ["api.example.com:443"], True),
        ("https://api.example.com/", ["api.example.com:8443"], False),
        ("https://10.0.3.7/", ["10.0.0.0/16"], True),
        ("https://10.1.3.7/", ["10.0.0.0/16"], False),
        ("https://10.0.3.7/", ["10.0.3.7"], True),
        ("https://[fd00::7]/", ["fd00::/64"], True),
        ("https://[fd00::7]/", ["[fd00::7]"], True),
        ("https://api.example.com/", ["10.0.0.0/8"], False),  # a name is never resolved
        ("https://api.example.com/", ["", " "], False),
        ("https://api.example.com/", [], False),
    ],
)
def test_no_proxy_matching(target: str, entries: list[str], direct: bool) -> None:
    assert bypasses(Endpoint.parse(target), entries) is direct


# --- what a refusal means ----------------------------------------------------------------------

TINYPROXY_PAGE = b"<p><em>Generated by tinyproxy version 1.11.1.</em></p>"
AZURE_BODY = b"Action: Deny. Reason: No rule matched. Proceeding with default action."


@pytest.mark.parametrize(
    ("status", "headers", "body", "via_proxy", "connect", "reason"),
    [
        (407, {}, b"", True, True, Reason.PROXY_AUTH_REQUIRED),
        (407, {}, b"", False, False, Reason.PROXY_AUTH_REQUIRED),
        (470, {}, AZURE_BODY, False, False, Reason.FIREWALL_DENIED),
        (470, {}, b"", True, True, Reason.FIREWALL_DENIED),
        (403, {}, AZURE_BODY, False, False, Reason.FIREWALL_DENIED),
        (403, {}, b"", True, True, Reason.PROXY_DENIED),  # any 403 to CONNECT
        (403, {"Server": "tinyproxy/1.11.1"}, b"", False, False, Reason.PROXY_DENIED),
        (403, {"Server": "squid/6.6"}, b"", False, False, Reason.PROXY_DENIED),
        (403, {"X-Squid-Error": "ERR_ACCESS_DENIED 0"}, b"", True, False, Reason.PROXY_DENIED),
        (403, {"Proxy-Agent": "corp"}, b"", False, False, Reason.PROXY_DENIED),
        (403, {"Via": "1.1 proxy.corp"}, b"", False, False, Reason.PROXY_DENIED),
        (403, {}, TINYPROXY_PAGE, False, False, Reason.PROXY_DENIED),
        # Relayed answers all carry the proxy's Via: a relayed 403 is the endpoint's.
        (403, {"Via": "1.1 tinyproxy (tinyproxy/1.11.1)"}, b"", True, False, None),
        # CDNs put Via on every answer too.
        (403, {"Via": "1.1 abc.cloudfront.net (CloudFront)"}, b"", False, False, None),
        (403, {"Server": "nginx"}, b"<h1>Forbidden</h1>", False, False, None),
        # The proxy reports the destination's failure: that points past the proxy.
        (502, {}, b"", True, True, Reason.DESTINATION_UNREACHABLE),
        (504, {"Server": "squid"}, b"", True, True, Reason.DESTINATION_UNREACHABLE),
        (500, {}, b"<h1>Unable to connect</h1>", True, True, Reason.DESTINATION_UNREACHABLE),
        (
            503,
            {"X-Squid-Error": "ERR_CONNECT_FAIL 111"},
            b"ERR_CONNECT_FAIL",
            True,
            True,
            Reason.DESTINATION_UNREACHABLE,
        ),
        (502, {"Server": "tinyproxy/1.11.1"}, b"", True, False, Reason.DESTINATION_UNREACHABLE),
        (503, {}, b"", True, True, Reason.PROXY_ERROR),  # the proxy's own trouble
        (400, {}, b"", True, True, Reason.PROXY_ERROR),  # any other CONNECT refusal
        (500, {"Server": "tinyproxy/1.11.1"}, b"", True, False, Reason.PROXY_ERROR),
        (503, {"Via": "1.1 proxy.corp"}, b"", False, False, None),
        (503, {"Server": "nginx"}, b"", True, False, None),
        (404, {}, b"", False, False, None),
        (200, {}, b"", True, True, None),
        (200, {}, b"", False, False, None),
    ],
)
def test_proxy_refusal_reason(
    status: int,
    headers: dict[str, str],
    body: bytes,
    via_proxy: bool,
    connect: bool,
    reason: Reason | None,
) -> None:
    found = proxy_refusal_reason(status, headers, body, via_proxy, connect=connect)
    assert found is reason


# --- CONNECT through a real tinyproxy ----------------------------------------------------------

StartProxy = Callable[..., TinyProxy]


async def tunnel(proxy: TinyProxy, port: int, *, credentials: bool = True) -> TunnelAnswer:
    reader, writer = await asyncio.open_connection(HOST, proxy.port)
    try:
        route = proxy.route(credentials=credentials)
        return await open_tunnel(reader, writer, HOST, port, route, 5.0)
    finally:
        writer.transport.abort()


async def test_tunnel_open(local_servers: LocalServers, tinyproxy: StartProxy) -> None:
    server = await local_servers.https()
    answer = await tunnel(tinyproxy("allow", [server.port]), server.port)
    assert answer.status == 200 and answer.refusal is None
    assert (answer.head.get("proxy-agent") or "").startswith("tinyproxy")


async def test_tunnel_filtered(local_servers: LocalServers, tinyproxy: StartProxy) -> None:
    server = await local_servers.https()
    answer = await tunnel(tinyproxy("deny", [server.port]), server.port)
    assert (answer.status, answer.refusal) == (403, Reason.PROXY_DENIED)
    assert b"tinyproxy" in answer.body_prefix


async def test_tunnel_needs_credentials(local_servers: LocalServers, tinyproxy: StartProxy) -> None:
    server = await local_servers.https()
    proxy = tinyproxy("auth", [server.port])
    refused = await tunnel(proxy, server.port, credentials=False)
    assert (refused.status, refused.refusal) == (407, Reason.PROXY_AUTH_REQUIRED)
    assert (refused.head.get("proxy-authenticate") or "").startswith("Basic")
    accepted = await tunnel(proxy, server.port)
    assert (accepted.status, accepted.refusal) == (200, None)
