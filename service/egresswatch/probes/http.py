"""Step 5, `http_response`: `curl -Iv https://host`, the status code against the expectation.

One request (asyncio streams, so every phase is timed and every failure named), on the round's
connection when the earlier steps left one (probes/handover.py), else on its own: TCP to the IP
the caller chose, or to the proxy; CONNECT for https through a proxy, an
absolute-URI request for http through one; TLS with SNI and Host from the target's name. Only
the head is read, plus a few KiB of an unexpected answer's body to recognise who wrote it.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from dataclasses import dataclass, replace
from typing import Any

from egresswatch.addresses import ProxyRoute
from egresswatch.evidence import HttpEvidence
from egresswatch.model import Endpoint, Reason, Scheme, StatusRanges, Step, StepResult
from egresswatch.probes.base import describe, fail, ms, ok, skipped
from egresswatch.probes.connection import (
    Dialed,
    Phases,
    close_quietly,
    dial,
    dial_or_adopt,
    start_tls,
)
from egresswatch.probes.handover import Handover
from egresswatch.probes.proxy import (
    Head,
    HttpProtocolError,
    proxy_refusal_reason,
    read_body_prefix,
    read_head,
)
from egresswatch.probes.tls import TlsOptions, context_error
from egresswatch.probes.tls import tls_context as make_tls_context

_MAX_INTERIM = 5  # interim 1xx answers skipped before the final one


@dataclass(frozen=True)
class _Request:
    endpoint: Endpoint
    address: str | None
    proxy: ProxyRoute | None
    tls: ssl.SSLContext | None  # None for http
    method: str
    user_agent: str
    handover: Handover | None = None  # the round's connection (direct targets only)

    @property
    def tunnelled(self) -> bool:
        return self.proxy is not None and self.endpoint.scheme is Scheme.HTTPS

    @property
    def relayed(self) -> bool:
        """Plain HTTP through the proxy: the proxy reads and relays the request."""
        return self.proxy is not None and self.endpoint.scheme is Scheme.HTTP


@dataclass(frozen=True)
class _Answer:
    """Who answered what: the proxy refusing a CONNECT, or the endpoint (or a relaying proxy)."""

    head: Head
    body_prefix: bytes
    from_connect: bool
    tunnel_status: int | None  # the proxy's answer to CONNECT, when tunnelled
    ended: float  # perf_counter when the answer was read, before closing


async def http_response(
    endpoint: Endpoint,
    address: str | None,
    *,
    proxy: ProxyRoute | None,
    tls: TlsOptions,
    expect: StatusRanges,
    method: str = "GET",
    timeout_s: float,
    user_agent: str = "egresswatch/0.1",
    handover: Handover | None = None,
) -> StepResult:
    """Request `endpoint` and judge the status code; never raises.

    `address` is the IP to connect to directly; it is ignored through a proxy, and without
    either the step is skipped (`no_address`). A status in `expect` is ok; a proxy's or a
    firewall's refusal gets its reason (see `proxy_refusal_reason`), another status
    `http_status`; failures to connect, to handshake or to get an HTTP answer get the reason
    of the phase they happened in. duration_s is the whole exchange.

    Evidence: HttpEvidence; connect_ms is TCP to the proxy when there is one, ttfb_ms from
    the request sent until the answer's head is in; a phase not reached is null.

    With `handover` and no proxy, the request goes on the round's connection: the TLS session
    tls_handshake left, else the socket tcp_connect left, else a new connection. The phases
    done by the earlier steps keep their times in the evidence and count in duration_s, so the
    exchange measures the same as on a connection of its own. A reset or close met on
    tcp_connect's socket is noted there (`Handover.cut`, probes/resetcheck.py).
    """
    if endpoint.scheme is Scheme.TCP:
        return skipped(Step.HTTP_RESPONSE, Reason.NOT_APPLICABLE, "not an HTTP target")
    if proxy is None and address is None:
        return skipped(Step.HTTP_RESPONSE, Reason.NO_ADDRESS, "no IP to connect to")
    try:
        context = make_tls_context(tls) if endpoint.scheme is Scheme.HTTPS else None
    except (OSError, ssl.SSLError) as exc:
        return context_error(Step.HTTP_RESPONSE, tls, exc)
    request = _Request(endpoint, address, proxy, context, method.upper(), user_agent, handover)
    evidence = HttpEvidence(
        url=endpoint.url,
        address=None if proxy else address,
        via_proxy=str(proxy) if proxy else None,
        expected=str(expect),
    )
    phases = Phases()
    begun = time.perf_counter()
    deadline = asyncio.get_running_loop().time() + timeout_s
    try:
        async with asyncio.timeout_at(deadline):
            answer, dialed = await _exchange(request, phases)
    except Exception as exc:
        if handover is not None:
            handover.note_cut(Step.HTTP_RESPONSE, phases.cut(exc))
        reason = phases.reason_for(exc)
        total = time.perf_counter() - begun + phases.earlier_s
        evidence = _timed(evidence, phases, total)
        detail = _failure_detail(request, exc, reason, phases)
        return fail(Step.HTTP_RESPONSE, reason, total, detail, evidence)
    total = answer.ended - begun + phases.earlier_s
    if answer.head.status not in expect and _has_body(answer, request.method):
        # Only to recognise who wrote an unexpected answer; not part of the timings.
        remaining = deadline - asyncio.get_running_loop().time()
        body = await read_body_prefix(dialed.reader, answer.head, timeout_s=max(remaining, 0.0))
        answer = replace(answer, body_prefix=body)
    await close_quietly(dialed.writer)  # outside the timings: the answer is already in
    return _judge(request, answer, expect, total, evidence, _timings(phases, total))


async def _exchange(request: _Request, phases: Phases) -> tuple[_Answer, Dialed]:
    """Connect, tunnel, handshake, ask, read the head; the caller closes the connection."""
    session = _session(request, phases)
    dialed = session or await _dial(request, phases)
    try:
        if (refusal := dialed.refusal) is not None:
            ended = time.perf_counter()
            answer = _Answer(refusal.head, refusal.body_prefix, True, refusal.status, ended)
            return answer, dialed
        if request.tls is not None and session is None:
            await start_tls(dialed, request.tls, request.endpoint.host, phases)
        with phases.timing("http"):
            dialed.writer.write(_request_bytes(request))
            await dialed.writer.drain()
            head = await _final_head(dialed.reader)
        tunnel_status = dialed.tunnel.status if dialed.tunnel is not None else None
        return _Answer(head, b"", False, tunnel_status, time.perf_counter()), dialed
    except BaseException:
        dialed.writer.transport.abort()
        raise


async def _final_head(reader: asyncio.StreamReader) -> Head:
    """The final answer's head, past interim 1xx answers (e.g. 100 Continue, 103 Early Hints)."""
    for _ in range(_MAX_INTERIM):
        head = await read_head(reader)
        if not (100 <= head.status < 200) or head.status == 101:
            return head
    raise HttpProtocolError(f"more than {_MAX_INTERIM} interim 1xx answers")


def _session(request: _Request, phases: Phases) -> Dialed | None:
    """The TLS session tls_handshake left on the round's connection, with its phase times."""
    handover = request.handover
    if handover is None or request.proxy is not None or request.tls is None:
        return None
    stream = handover.take_stream()
    if stream is None:
        return None
    phases.tcp_s, phases.tls_s = handover.connect_s, handover.tls_s
    phases.earlier_s = (handover.connect_s or 0.0) + (handover.tls_s or 0.0)
    return Dialed(*stream)


async def _dial(request: _Request, phases: Phases) -> Dialed:
    endpoint, proxy = request.endpoint, request.proxy
    if proxy is None:
        assert request.address is not None  # checked by http_response
        return await dial_or_adopt(request.address, endpoint.port, None, phases, request.handover)
    if request.tunnelled:
        return await dial(endpoint.host, endpoint.port, proxy, phases, None)
    return await dial(proxy.host, proxy.port, None, phases, None)


def _request_bytes(request: _Request) -> bytes:
    endpoint = request.endpoint
    host = f"[{endpoint.host}]" if ":" in endpoint.host else endpoint.host
    authority = host if endpoint.port == _default_port(endpoint) else f"{host}:{endpoint.port}"
    target = endpoint.url if request.relayed else endpoint.path
    lines = [
        f"{request.method} {target} HTTP/1.1",
        f"Host: {authority}",
        f"User-Agent: {request.user_agent}",
        "Accept: */*",
        "Connection: close",
    ]
    credentials = request.proxy.authorization() if request.proxy else None
    if request.relayed and credentials is not None:
        lines.append(f"Proxy-Authorization: {credentials}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _default_port(endpoint: Endpoint) -> int:
    return 443 if endpoint.scheme is Scheme.HTTPS else 80


def _has_body(answer: _Answer, method: str) -> bool:
    status = answer.head.status
    return (
        not answer.from_connect and method != "HEAD" and status >= 200 and status not in (204, 304)
    )


def _judge(
    request: _Request,
    answer: _Answer,
    expect: StatusRanges,
    total: float,
    evidence: HttpEvidence,
    timings: dict[str, Any],
) -> StepResult:
    """The verdict on an answer: expected, a refusal by a proxy or firewall, or unexpected.
    `evidence` gets the `timings` (`_timings`) and the answer's fields, in one copy."""
    head = answer.head
    evidence = replace(
        evidence,
        **timings,
        status=head.status,
        proxy_status=answer.tunnel_status,
        server=head.get("server"),
        location=head.get("location"),
    )
    if answer.from_connect:
        assert request.proxy is not None
        reason = proxy_refusal_reason(
            head.status, head.headers, answer.body_prefix, via_proxy=True, connect=True
        )
        detail = f"{request.proxy} answered {head.status} {head.phrase} to CONNECT"
        return fail(Step.HTTP_RESPONSE, reason or Reason.PROXY_ERROR, total, detail, evidence)
    text = f"HTTP {head.status} from {request.endpoint.url} in {round(total * 1000)} ms"
    if request.proxy is not None:
        text += f" via {request.proxy}"
    if head.status in expect:
        return ok(Step.HTTP_RESPONSE, total, f"{text} (expected {expect})", evidence)
    refusal = proxy_refusal_reason(
        head.status, head.headers, answer.body_prefix, via_proxy=request.relayed
    )
    if refusal is not None:
        who = str(request.proxy) if request.relayed else "a proxy or firewall in the path"
        detail = f"{who} answered {head.status} {head.phrase} ({refusal.value})"
        return fail(Step.HTTP_RESPONSE, refusal, total, detail, evidence)
    return fail(
        Step.HTTP_RESPONSE, Reason.HTTP_STATUS, total, f"{text}, expected {expect}", evidence
    )


def _timed(evidence: HttpEvidence, phases: Phases, total: float) -> HttpEvidence:
    return replace(evidence, **_timings(phases, total))


def _timings(phases: Phases, total: float) -> dict[str, Any]:
    """The exchange's phase timings, in ms, as HttpEvidence fields."""
    return {
        "connect_ms": None if phases.tcp_s is None else ms(phases.tcp_s),
        "proxy_connect_ms": None if phases.proxy_s is None else ms(phases.proxy_s),
        "tls_ms": None if phases.tls_s is None else ms(phases.tls_s),
        "ttfb_ms": None if phases.http_s is None else ms(phases.http_s),
        "total_ms": ms(total),
    }


def _failure_detail(request: _Request, exc: BaseException, reason: Reason, phases: Phases) -> str:
    url = request.endpoint.url
    if isinstance(exc, TimeoutError):
        return f"{url}: timed out during the {phases.name()}"
    if reason is Reason.FIREWALL_DENIED and phases.current == "tls":
        return f"{url}: connection reset right after the ClientHello (firewall or SNI filter)"
    return f"{url}: {phases.name()} failed: {describe(exc)}"
