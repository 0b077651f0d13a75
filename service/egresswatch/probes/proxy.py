"""Proxies: which one applies to an endpoint, the CONNECT tunnel, and what a refusal means.

The refusal rules (407, Azure Firewall's 470, a proxy's 403, a CONNECT's 5xx) live here, in one
place, so `tls_handshake` and `http_response` classify a proxy's answer the same way. The small
HTTP head reader is shared for the same reason.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from egresswatch.addresses import ProxyRoute
from egresswatch.model import Endpoint, Reason, Scheme

HEAD_LIMIT = 64 * 1024  # status line + headers; more is not an HTTP answer we want to read
BODY_PREFIX_LIMIT = 4096  # enough of an error page to recognise who wrote it
BODY_READ_S = 1.0  # an error page that trickles in is read this long at most
_MAX_HEADER_LINES = 200


def proxy_for(
    endpoint: Endpoint,
    *,
    configured: ProxyRoute | None,
    no_proxy: Sequence[str],
    use_environment: bool,
    environ: Mapping[str, str],
) -> ProxyRoute | None:
    """The proxy to reach `endpoint` through, or None to go direct.

    A configured proxy wins, bypassed for hosts matching `no_proxy`. Otherwise, when
    `use_environment`, https targets use HTTPS_PROXY and http targets HTTP_PROXY (lower case
    first, as curl), bypassed by NO_PROXY. Plain TCP targets never use a proxy. A malformed
    environment value raises ValueError naming the variable.
    """
    if endpoint.scheme is Scheme.TCP:
        return None
    if configured is not None:
        return None if bypasses(endpoint, no_proxy) else configured
    if not use_environment:
        return None
    name = "https_proxy" if endpoint.scheme is Scheme.HTTPS else "http_proxy"
    variable, value = _first_set(environ, name, name.upper())
    if value is None:
        return None
    _, env_no_proxy = _first_set(environ, "no_proxy", "NO_PROXY")
    if bypasses(endpoint, (env_no_proxy or "").split(",")):
        return None
    try:
        return ProxyRoute.parse(value, origin="environment")
    except ValueError as exc:
        raise ValueError(f"{variable}: {exc}") from None


def _first_set(environ: Mapping[str, str], *names: str) -> tuple[str, str | None]:
    for name in names:
        value = environ.get(name, "").strip()
        if value:
            return name, value
    return names[0], None


def bypasses(endpoint: Endpoint, patterns: Sequence[str]) -> bool:
    """Whether a NO_PROXY list sends `endpoint` direct (curl's rules).

    Entries: `*` (everything), a host name or domain suffix with or without a leading dot
    (`example.com` and `.example.com` both match example.com and its subdomains), an IP, a CIDR
    range (only for IP targets: a name is never resolved to decide), optionally `:port`.
    """
    host = endpoint.host.lower().rstrip(".")
    for raw in patterns:
        entry = raw.strip().lower()
        if not entry:
            continue
        if entry == "*":
            return True
        entry, port = _split_port(entry)
        if port is not None and port != endpoint.port:
            continue
        if _host_matches(host, entry):
            return True
    return False


def _split_port(entry: str) -> tuple[str, int | None]:
    if entry.startswith("["):  # [v6] or [v6]:port
        inside, _, rest = entry[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
        return inside, int(port) if port.isdigit() else None
    head, sep, tail = entry.rpartition(":")
    if sep and tail.isdigit() and ":" not in head:
        return head, int(tail)
    return entry, None


def _host_matches(host: str, entry: str) -> bool:
    try:
        target = ipaddress.ip_address(host)
    except ValueError:
        target = None
    if target is not None:
        try:
            return target in ipaddress.ip_network(entry, strict=False)
        except ValueError:
            return False
    domain = entry.removeprefix("*.").lstrip(".").rstrip(".")
    return bool(domain) and (host == domain or host.endswith("." + domain))


# --- the answer of an HTTP peer (a proxy or the endpoint) -------------------------------------


class HttpProtocolError(Exception):
    """The peer did not answer with HTTP, or closed before the end of the head."""


class ClosedBeforeAnswer(HttpProtocolError):
    """The peer closed the connection before a byte of its answer."""


@dataclass(frozen=True)
class Head:
    """A status line and its headers (names lower-cased, in order)."""

    version: str
    status: int
    phrase: str
    headers: tuple[tuple[str, str], ...]

    def get(self, name: str) -> str | None:
        wanted = name.lower()
        return next((v for k, v in self.headers if k == wanted), None)


_STATUS_LINE = re.compile(rb"^(HTTP/\d(?:\.\d)?) (\d{3})(?: (.*))?$")


async def read_head(reader: asyncio.StreamReader, limit: int = HEAD_LIMIT) -> Head:
    """Read a status line and headers, at most `limit` bytes; HttpProtocolError otherwise."""
    status_line = await _read_line(reader, first=True)
    match = _STATUS_LINE.match(status_line)
    if match is None:
        shown = status_line[:60].decode("ascii", "replace")
        raise HttpProtocolError(f"not an HTTP answer: {shown!r}")
    used = len(status_line)
    headers: list[tuple[str, str]] = []
    for _ in range(_MAX_HEADER_LINES):
        line = await _read_line(reader)
        used += len(line)
        if used > limit:
            raise HttpProtocolError(f"HTTP head longer than {limit} bytes")
        if not line:
            version, code, phrase = match.groups()
            return Head(
                version.decode(), int(code), (phrase or b"").decode("latin-1"), tuple(headers)
            )
        name, sep, value = line.partition(b":")
        if sep:
            headers.append(
                (name.strip().decode("latin-1").lower(), value.strip().decode("latin-1"))
            )
    raise HttpProtocolError(f"more than {_MAX_HEADER_LINES} header lines")


async def _read_line(reader: asyncio.StreamReader, *, first: bool = False) -> bytes:
    try:
        line = await reader.readuntil(b"\n")
    except asyncio.IncompleteReadError as exc:
        if first and not exc.partial:
            raise ClosedBeforeAnswer("connection closed before answering") from None
        raise HttpProtocolError("connection closed in the middle of the HTTP head") from None
    except asyncio.LimitOverrunError:
        raise HttpProtocolError("HTTP header line too long") from None
    return line.rstrip(b"\r\n")


async def read_body_prefix(
    reader: asyncio.StreamReader,
    head: Head,
    limit: int = BODY_PREFIX_LIMIT,
    timeout_s: float = BODY_READ_S,
) -> bytes:
    """Up to `limit` bytes of the body, for recognising who wrote an error page.

    Best effort and brief: stops at EOF, at Content-Length, after `timeout_s` or on an error,
    and returns what it has; never raises (but can be cancelled).
    """
    length = head.get("content-length")
    wanted = min(int(length), limit) if length and length.isdigit() else limit
    data = bytearray()
    try:
        async with asyncio.timeout(timeout_s):
            while len(data) < wanted:  # bounded: each pass reads at least a byte or stops
                chunk = await reader.read(wanted - len(data))
                if not chunk:
                    break
                data += chunk
    except (TimeoutError, OSError):
        pass  # what arrived is enough to recognise a signature, or there is none
    return bytes(data)


# --- CONNECT ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class TunnelAnswer:
    """The proxy's answer to CONNECT; `refusal` is None when the tunnel is open."""

    head: Head
    body_prefix: bytes
    refusal: Reason | None

    @property
    def status(self) -> int:
        return self.head.status


async def open_tunnel(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    host: str,
    port: int,
    proxy: ProxyRoute,
    timeout_s: float | None,
) -> TunnelAnswer:
    """Ask the proxy on this connection for a tunnel to `host:port`.

    Raises TimeoutError (after `timeout_s`; None: the caller bounds the time), OSError (resets)
    and HttpProtocolError; a refusal is not an exception but an answer with `refusal` set
    (see `proxy_refusal_reason`).
    """
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    lines = [f"CONNECT {authority} HTTP/1.1", f"Host: {authority}"]
    credentials = proxy.authorization()
    if credentials is not None:
        lines.append(f"Proxy-Authorization: {credentials}")
    async with asyncio.timeout(timeout_s):
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        await writer.drain()
        head = await read_head(reader)
    if 200 <= head.status < 300:
        # No body follows a successful CONNECT: the next bytes are the endpoint's.
        return TunnelAnswer(head, b"", None)
    body = await read_body_prefix(reader, head)
    refusal = proxy_refusal_reason(head.status, head.headers, body, via_proxy=True, connect=True)
    return TunnelAnswer(head, body, refusal)


# --- who refused ------------------------------------------------------------------------------

_PROXY_SERVERS = re.compile(r"^(tinyproxy|squid)\b", re.IGNORECASE)
# CDNs put `Via` on every answer; a 403 from behind one is the endpoint's, not a proxy's.
_CDN_VIA = re.compile(r"cloudfront|varnish|akamai|fastly|google|azurefd", re.IGNORECASE)
_PROXY_BODY = re.compile(
    rb"tinyproxy|squid|proxy server|generated by .{0,40}proxy|web proxy", re.IGNORECASE
)
_FIREWALL_BODY = re.compile(rb"action:\s*deny|azure firewall", re.IGNORECASE)
# A proxy's report that the destination failed, not a failure of its own: tinyproxy's
# "500 Unable to connect", squid's ERR_CONNECT_FAIL / ERR_READ_TIMEOUT, Envoy's "upstream
# connect error", nginx's and others' 502 Bad Gateway and 504 Gateway Timeout.
_DESTINATION_BODY = re.compile(
    rb"unable to connect|err_connect_fail|err_read_timeout|err_connect_timeout"
    rb"|upstream connect error|connection refused|connect(ion)? (failed|timed out)",
    re.IGNORECASE,
)
DESTINATION_STATUSES = frozenset({502, 504})
AZURE_FIREWALL_DENY = 470  # Azure Firewall's answer to an HTTP request no rule allows


def proxy_refusal_reason(
    status: int,
    headers: Sequence[tuple[str, str]] | Mapping[str, str],
    body_prefix: bytes,
    via_proxy: bool,
    *,
    connect: bool = False,
) -> Reason | None:
    """Whether an HTTP answer is a proxy's or a firewall's refusal, and which; else None.

    `connect`: the answer is the proxy's own reply to our CONNECT, so any refusal is the
    proxy's (the endpoint never answered). `via_proxy`: the answer was relayed by our proxy as
    plain HTTP; proxies add `Via` to every answer they relay, so there `Via` is no sign that
    the proxy itself wrote it.

    407 -> proxy_auth_required. 470, or a 403 whose body says Azure Firewall `Action: Deny`
    -> firewall_denied. 403 from a CONNECT or with a proxy signature (`Via`, `Proxy-Agent`,
    `X-Squid-Error`, `Server: tinyproxy|squid`, a proxy's error page) -> proxy_denied. 5xx or
    any other refusal of a CONNECT, or a 5xx a relaying proxy wrote itself -> proxy_error,
    unless it reports that the destination failed (502, 504, "Unable to connect",
    ERR_CONNECT_FAIL...) -> destination_unreachable: that points past the proxy.
    """
    if connect and 200 <= status < 300:
        return None
    names = headers.items() if isinstance(headers, Mapping) else headers
    lowered = {k.lower(): v for k, v in names}
    if status == 407:
        return Reason.PROXY_AUTH_REQUIRED
    if status == AZURE_FIREWALL_DENY or (status == 403 and _FIREWALL_BODY.search(body_prefix)):
        return Reason.FIREWALL_DENIED
    if connect:
        if status == 403:
            return Reason.PROXY_DENIED
        return (
            Reason.DESTINATION_UNREACHABLE
            if _destination(status, body_prefix)
            else (Reason.PROXY_ERROR)
        )
    if status == 403 and (_written_by_proxy(lowered, body_prefix) or _via(lowered, via_proxy)):
        return Reason.PROXY_DENIED
    if status >= 500 and via_proxy and _written_by_proxy(lowered, body_prefix):
        if _destination(status, body_prefix):
            return Reason.DESTINATION_UNREACHABLE
        return Reason.PROXY_ERROR
    return None


def _destination(status: int, body: bytes) -> bool:
    """A proxy's 5xx that reports the destination's failure, not its own."""
    return status in DESTINATION_STATUSES or bool(_DESTINATION_BODY.search(body))


def _written_by_proxy(headers: Mapping[str, str], body: bytes) -> bool:
    """Marks only a proxy's own answers carry (relayed answers keep the endpoint's Server)."""
    if "proxy-agent" in headers or "x-squid-error" in headers:
        return True
    if _PROXY_SERVERS.match(headers.get("server", "")):
        return True
    return bool(_PROXY_BODY.search(body))


def _via(headers: Mapping[str, str], relayed: bool) -> bool:
    """A `Via` on an answer our proxy did not relay: something in the path wrote or passed it."""
    via = headers.get("via")
    return via is not None and not relayed and not _CDN_VIA.search(via)
