"""Step 4, `tls_handshake`: `curl -Iv https://host` up to the certificate, with SNI.

Also the trust: client contexts built once per trust configuration (`TlsContexts`). The
connection it runs on is probes/connection.py's.
"""

from __future__ import annotations

import asyncio
import math
import os
import ssl
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from egresswatch.addresses import ProxyRoute
from egresswatch.evidence import NotRun, TlsEvidence
from egresswatch.model import Reason, Status, Step, StepResult
from egresswatch.probes.base import describe, fail, ok, skipped
from egresswatch.probes.certnames import Leaves, certificate_fields
from egresswatch.probes.connection import (
    Dialed,
    Phases,
    close_quietly,
    dial,
    dial_or_adopt,
    start_tls,
)
from egresswatch.probes.handover import Handover
from egresswatch.probes.proxy import HttpProtocolError, TunnelAnswer


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
        self.leaves = Leaves()  # the presented certificates' fields, across rounds

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


def certificate_evidence(ssl_object: ssl.SSLObject, leaves: Leaves | None = None) -> dict[str, Any]:
    """Issuer, subject, not_after (RFC 3339 UTC) and days_left of the presented leaf, as
    TlsEvidence fields (empty without a certificate). With `leaves`, a certificate seen
    before is not decoded again (days_left is still computed now)."""
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        return {}
    if leaves is not None:
        issuer, subject, not_after = leaves.fields(der, ssl_object.getpeercert)
    else:
        issuer, subject, not_after = certificate_fields(der, ssl_object.getpeercert())
    days_left = math.floor((not_after - datetime.now(UTC)).total_seconds() / 86400)
    return {
        "issuer": issuer,
        "subject": subject,
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
    handover: Handover | None = None,
) -> StepResult:
    """Handshake with `address:port` (through `proxy`'s CONNECT when given) using SNI.

    With `handover` and no proxy, the handshake runs on the round's connection when
    tcp_connect left one (else on a new one), and a good session is left there for
    http_response instead of being closed. A reset or close met on that connection is noted
    there (`Handover.cut`) for the round to tell apart (probes/resetcheck.py).

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
            dialed = await dial_or_adopt(address, port, proxy, phases, handover)
            if (refusal := dialed.refusal) is not None:
                dialed.writer.transport.abort()
                return _tunnel_refused(refusal, phases, evidence)
            ssl_object = await _start_tls(dialed, context, server_name, phases)
    except Exception as exc:
        if handover is not None:
            handover.note_cut(Step.TLS_HANDSHAKE, phases.cut(exc))
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
    leaves = tls.contexts.leaves if tls.contexts is not None else None
    # One copy of the evidence, not one for the timings and another for the session.
    evidence = replace(evidence, **phases.timings(), **_session_evidence(ssl_object, leaves))
    if handover is not None and proxy is None:
        handover.keep_stream(dialed.reader, dialed.writer, phases.tls_s)
    else:
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


def _session_evidence(ssl_object: ssl.SSLObject, leaves: Leaves | None) -> dict[str, Any]:
    cipher = ssl_object.cipher()
    return {
        "version": ssl_object.version(),
        "cipher": cipher[0] if cipher else None,
        **certificate_evidence(ssl_object, leaves),
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
