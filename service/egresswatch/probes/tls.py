"""Step 4, `tls_handshake`: `curl -Iv https://host` up to the certificate, with SNI.

Also the connection both TLS and HTTP steps open: TCP to an IP (or to the proxy, then
CONNECT), then TLS started on the established stream, each phase timed on its own, and one
translation of what went wrong into a reason, by the phase it went wrong in.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import math
import os
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509

from egresswatch.addresses import ProxyRoute
from egresswatch.evidence import NotRun, TlsEvidence
from egresswatch.model import Reason, Status, Step, StepResult
from egresswatch.probes.base import describe, fail, ms, ok, reason_for_exception, skipped
from egresswatch.probes.proxy import HttpProtocolError, TunnelAnswer, open_tunnel

_CLOSE_GRACE_S = 0.5  # a peer that does not finish the TLS close in time is cut off
_PHASE_NAMES = {
    "tcp": "TCP connect",
    "proxy": "CONNECT through the proxy",
    "tls": "TLS handshake",
    "http": "HTTP exchange",
}


class TlsContexts:
    """Client contexts built once per trust configuration and reused by every round.

    Building one is the dearest part of an HTTPS round: with the system trust store it costs
    about 70 ms of CPU on our test machine (every certificate in the bundle is parsed), more
    than the rest of the round. A context is rebuilt only when its CA file changes on disk
    (size or modification time: a rotated Secret), so a new CA is used without a restart.
    The keys are the configured CA files, so the cache is bounded by the config.
    """

    def __init__(self) -> None:
        self._held: dict[tuple[Path | None, bool], tuple[object, ssl.SSLContext]] = {}
        self.built = 0  # contexts made since start (the tests' and the benchmark's window)

    def get(self, ca_file: Path | None, verify: bool) -> ssl.SSLContext:
        """The context for `ca_file` (None: the system store); OSError/SSLError when the CA
        file cannot be read or loaded (nothing is cached then)."""
        stamp = _trust_stamp(ca_file)
        held = self._held.get((ca_file, verify))
        if held is not None and held[0] == stamp:
            return held[1]
        context = _new_context(ca_file, verify)
        self._held[(ca_file, verify)] = (stamp, context)
        self.built += 1
        return context


@dataclass(frozen=True)
class TlsOptions:
    """How to verify the endpoint: `ca_file` None means the system trust store. `contexts`:
    the owner's cache (a long-lived runner has one); None builds a context per use."""

    ca_file: Path | None = None
    verify: bool = True
    contexts: TlsContexts | None = field(default=None, compare=False, repr=False)


def tls_context(options: TlsOptions, *, verify: bool | None = None) -> ssl.SSLContext:
    """A client context; `verify` overrides `options.verify` (False: read any certificate)."""
    checked = options.verify if verify is None else verify
    if options.contexts is not None:
        return options.contexts.get(options.ca_file, checked)
    return _new_context(options.ca_file, checked)


def _new_context(ca_file: Path | None, verify: bool) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca_file) if ca_file is not None else None)
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _trust_stamp(ca_file: Path | None) -> object:
    """What identifies the trust a context was built from: the file's size and mtime, or the
    system bundle's (None when it has no single file)."""
    path = ca_file if ca_file is not None else ssl.get_default_verify_paths().cafile
    if path is None:
        return None
    try:
        info = os.stat(path)
    except OSError:
        if ca_file is not None:
            raise
        return None
    return (str(path), info.st_mtime_ns, info.st_size)


def context_error(step: Step, options: TlsOptions, exc: Exception) -> StepResult:
    """The probe cannot run: the CA file given does not load (a config problem, not a target's)."""
    return StepResult(
        step,
        Status.ERROR,
        Reason.PROBE_ERROR,
        0.0,
        f"cannot load the CA file {options.ca_file}: {describe(exc)}",
        NotRun(ca_file=str(options.ca_file)),
    )


@dataclass
class Phases:
    """Timings of one connection, and the phase in progress (to name what failed)."""

    current: str = "tcp"  # tcp, proxy, tls, http
    tcp_s: float | None = None
    proxy_s: float | None = None
    tls_s: float | None = None
    http_s: float | None = None

    @contextlib.contextmanager
    def timing(self, phase: str) -> Iterator[None]:
        """Time one phase; on failure its time is the time until it failed.

        The time is taken when the phase ends, before any cleanup, so closing a connection
        never counts in it. `current` stays on a failed phase so the failure can be named.
        """
        self.current = phase
        started = time.perf_counter()
        try:
            yield
        finally:
            setattr(self, f"{phase}_s", time.perf_counter() - started)

    def reason_for(self, exc: BaseException) -> Reason:
        """What an exception means in the phase it happened in."""
        if self.current == "tcp":
            return reason_for_exception(exc, timeout=Reason.CONN_TIMEOUT)
        if isinstance(exc, HttpProtocolError):
            return Reason.PROXY_ERROR if self.current == "proxy" else Reason.HTTP_PROTOCOL
        if self.current == "tls" and _reset_by_peer(exc):
            # Azure Firewall and SNI filters refuse by resetting right after the ClientHello.
            return Reason.FIREWALL_DENIED
        if self.current == "tls" and isinstance(exc, ConnectionResetError):
            # asyncio's "connection lost" (errno None): the peer closed without a ServerHello.
            return Reason.TLS_HANDSHAKE_FAILED
        return reason_for_exception(exc)

    def name(self) -> str:
        """The phase in progress, in words for a `detail` line."""
        return _PHASE_NAMES.get(self.current, self.current)

    def timed(self, evidence: TlsEvidence) -> TlsEvidence:
        """`evidence` with this connection's phase timings, in ms."""
        return replace(
            evidence,
            tcp_ms=_ms(self.tcp_s),
            proxy_connect_ms=_ms(self.proxy_s),
            tls_ms=_ms(self.tls_s),
        )


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else ms(seconds)


def _reset_by_peer(exc: BaseException) -> bool:
    return isinstance(exc, ConnectionResetError) and exc.errno == errno.ECONNRESET


@dataclass
class Dialed:
    """An open stream to the endpoint (tunnelled when `tunnel` is set), or a refused tunnel."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    tunnel: TunnelAnswer | None = None

    @property
    def refusal(self) -> TunnelAnswer | None:
        """The proxy's answer when it refused the CONNECT, else None."""
        return self.tunnel if self.tunnel is not None and self.tunnel.refusal else None


async def dial(
    address: str, port: int, proxy: ProxyRoute | None, phases: Phases, timeout_s: float | None
) -> Dialed:
    """TCP to `address:port`, or to the proxy and CONNECT to `address:port` through it.

    Raises what connecting raises; a refused CONNECT is returned (see `refusal`), not raised.
    """
    host, tcp_port = (proxy.host, proxy.port) if proxy else (address, port)
    with phases.timing("tcp"):
        reader, writer = await asyncio.open_connection(host, tcp_port)
    if proxy is None:
        return Dialed(reader, writer)
    try:
        with phases.timing("proxy"):
            answer = await open_tunnel(reader, writer, address, port, proxy, timeout_s)
    except BaseException:
        writer.transport.abort()
        raise
    return Dialed(reader, writer, answer)


async def start_tls(
    dialed: Dialed, context: ssl.SSLContext, server_name: str, phases: Phases
) -> ssl.SSLObject:
    """TLS on the open stream with SNI `server_name`; returns the session's SSL object."""
    with phases.timing("tls"):
        await dialed.writer.start_tls(context, server_hostname=server_name)
    ssl_object = dialed.writer.get_extra_info("ssl_object")
    if not isinstance(ssl_object, ssl.SSLObject):
        raise ssl.SSLError("no TLS session after the handshake")
    return ssl_object


async def close_quietly(writer: asyncio.StreamWriter) -> None:
    """Close politely, but never wait on the peer for more than a moment."""
    writer.close()
    try:
        async with asyncio.timeout(_CLOSE_GRACE_S):
            await writer.wait_closed()
    except (TimeoutError, OSError, ssl.SSLError):
        writer.transport.abort()


def certificate_evidence(ssl_object: ssl.SSLObject) -> dict[str, Any]:
    """Issuer, subject, not_after (RFC 3339 UTC) and days_left of the presented leaf, as
    TlsEvidence fields (empty without a certificate)."""
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        return {}
    cert = x509.load_der_x509_certificate(der)
    not_after = cert.not_valid_after_utc
    days_left = math.floor((not_after - datetime.now(UTC)).total_seconds() / 86400)
    return {
        "issuer": cert.issuer.rfc4514_string(),
        "subject": cert.subject.rfc4514_string(),
        "not_after": not_after.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "days_left": days_left,
    }


# --- the step ---------------------------------------------------------------------------------


async def tls_handshake(
    address: str,
    port: int,
    server_name: str,
    *,
    tls: TlsOptions,
    timeout_s: float,
    proxy: ProxyRoute | None = None,
) -> StepResult:
    """Handshake with `address:port` (through `proxy`'s CONNECT when given) using SNI.

    With a proxy, `address` is what the proxy is asked to reach (the host name, as curl does,
    or an IP). On a verification failure the certificate is fetched once more without
    verification, so the evidence still shows who issued it. A refused CONNECT makes this
    step `skipped` with the proxy's reason: `http_response` reports the refusal. Never raises.
    duration_s is the TLS handshake alone (until the failure, when it failed).

    Evidence: TlsEvidence; tcp_ms is to the proxy when there is one, proxy_status is set
    when the proxy refused the CONNECT.
    """
    evidence = TlsEvidence(address, port, server_name, str(proxy) if proxy else None)
    try:
        context = tls_context(tls)
    except (OSError, ssl.SSLError) as exc:
        return context_error(Step.TLS_HANDSHAKE, tls, exc)
    phases = Phases()
    begun = time.perf_counter()
    deadline = asyncio.get_running_loop().time() + timeout_s
    try:
        async with asyncio.timeout_at(deadline):
            dialed = await dial(address, port, proxy, phases, None)
            if (refusal := dialed.refusal) is not None:
                dialed.writer.transport.abort()
                return _tunnel_refused(refusal, phases, evidence)
            ssl_object = await _start_tls(dialed, context, server_name, phases)
    except Exception as exc:
        reason = phases.reason_for(exc)
        evidence = phases.timed(evidence)
        if isinstance(exc, ssl.SSLCertVerificationError):
            presented = await _presented_certificate(
                address, port, server_name, tls, proxy, deadline
            )
            evidence = replace(evidence, verify_error=exc.verify_message, **presented)
        took = phases.tls_s if phases.tls_s is not None else time.perf_counter() - begun
        detail = _failure_detail(exc, reason, phases, evidence)
        return fail(Step.TLS_HANDSHAKE, reason, took, detail, evidence)
    evidence = replace(phases.timed(evidence), **_session_evidence(ssl_object))
    await close_quietly(dialed.writer)  # outside the budget: the handshake is done
    return ok(Step.TLS_HANDSHAKE, phases.tls_s or 0.0, _ok_detail(evidence), evidence)


async def _start_tls(
    dialed: Dialed, context: ssl.SSLContext, server_name: str, phases: Phases
) -> ssl.SSLObject:
    """`start_tls`, aborting the connection when it fails."""
    try:
        return await start_tls(dialed, context, server_name, phases)
    except BaseException:
        dialed.writer.transport.abort()
        raise


def _session_evidence(ssl_object: ssl.SSLObject) -> dict[str, Any]:
    cipher = ssl_object.cipher()
    return {
        "version": ssl_object.version(),
        "cipher": cipher[0] if cipher else None,
        **certificate_evidence(ssl_object),
    }


def _tunnel_refused(answer: TunnelAnswer, phases: Phases, evidence: TlsEvidence) -> StepResult:
    assert answer.refusal is not None
    evidence = replace(phases.timed(evidence), proxy_status=answer.status)
    detail = (
        f"{evidence.via_proxy} refused CONNECT to {evidence.address}:{evidence.port} "
        f"with {answer.status} {answer.head.phrase}; http_response reports it"
    )
    return skipped(Step.TLS_HANDSHAKE, answer.refusal, detail, evidence)


async def _presented_certificate(
    address: str,
    port: int,
    server_name: str,
    tls: TlsOptions,
    proxy: ProxyRoute | None,
    deadline: float,
) -> dict[str, Any]:
    """The certificate that failed verification (TlsEvidence fields, `certificate_evidence`),
    read again within what is left of the budget; empty when it cannot be read."""
    phases = Phases()
    try:
        async with asyncio.timeout_at(deadline):
            dialed = await dial(address, port, proxy, phases, None)
            if dialed.refusal is not None:
                dialed.writer.transport.abort()
                return {}
            context = tls_context(tls, verify=False)
            ssl_object = await _start_tls(dialed, context, server_name, phases)
            # Only the certificate: version and cipher stay those of the failed handshake.
            presented = certificate_evidence(ssl_object)
    except (OSError, TimeoutError, ssl.SSLError, HttpProtocolError, ValueError):
        return {}  # the evidence stays without the certificate; the verdict is already made
    dialed.writer.transport.abort()  # nothing more to say to a peer we did not verify
    return presented


def _expiry(evidence: TlsEvidence) -> str:
    date = str(evidence.not_after)[:10]
    days = evidence.days_left
    if days is None:
        return f"expires {date}"
    return f"expired {date}" if days < 0 else f"expires {date} ({days} days)"


def _ok_detail(evidence: TlsEvidence) -> str:
    text = f"{evidence.version} with {evidence.server_name}"
    if evidence.issuer is not None:
        text += f", issuer {evidence.issuer}, {_expiry(evidence)}"
    return text


def _failure_detail(
    exc: BaseException, reason: Reason, phases: Phases, evidence: TlsEvidence
) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        text = describe(exc)
    elif reason is Reason.FIREWALL_DENIED and phases.current == "tls":
        text = "connection reset right after the ClientHello (a firewall or SNI filter refusing)"
    elif isinstance(exc, ConnectionResetError) and phases.current == "tls":
        text = "peer closed the connection during the TLS handshake, without a ServerHello"
    elif isinstance(exc, TimeoutError):
        text = f"timed out during the {phases.name()}"
    else:
        text = f"{phases.name()} failed: {describe(exc)}"
    if evidence.issuer is not None:
        text += f" (issuer {evidence.issuer}, {_expiry(evidence)})"
    return text
