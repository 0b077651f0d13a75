"""The last rules of the diagnosis: what the shape of a network step's failure points at.

By the time these run, the earlier rules (docs/diagnosis.md) have found no proxy or egress
device signature, no other source to compare with that settles it, and no egress-wide outage.
What is left is how the failing step failed: silence, a reset, an ICMP error and its sender, a
certificate, a status code. Each shape names one suspect; a shape not listed here is no shape
(the caller says `unknown`).

Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from egresswatch.controller.diagnosis.findings import (
    Finding,
    Network,
    connect_sentence,
    device_of,
    failure_facts,
    http_sentence,
    icmp_senders,
    is_ok,
    tls_of,
    tls_sentence,
    trace_hops,
    trace_sentence,
)
from egresswatch.model import Reason, RoundResult, Step, StepResult, Suspect


def shape(
    round_: RoundResult,
    failing: StepResult,
    devices: Sequence[Network],
    peers: Sequence[RoundResult],
) -> Finding | None:
    """The suspect the failing step's shape points at, or None when it points nowhere.

    `failing` is the round's first failing step (tcp_connect, tls_handshake or
    http_response); `peers` are the same target's rounds from other sources, read only for the
    certificate they were shown.
    """
    reason = failing.reason
    if reason is None or failing.step not in _SAYS:
        return None
    if failing.step is Step.TLS_HANDSHAKE and reason in _CERTIFICATE:
        return _certificate(failing, peers)
    if failing.step is Step.HTTP_RESPONSE and reason in (Reason.HTTP_STATUS, Reason.TIMEOUT):
        return _answer(failing)
    return _connection(round_, failing, reason, devices)


_SAYS = (Step.TCP_CONNECT, Step.TLS_HANDSHAKE, Step.HTTP_RESPONSE)
_CERTIFICATE = frozenset({Reason.TLS_UNTRUSTED, Reason.TLS_EXPIRED, Reason.TLS_NAME_MISMATCH})


def _says(round_: RoundResult, failing: StepResult, devices: Sequence[Network]) -> list[str]:
    """The failing step in words, then the trace's when it ran."""
    sentences = [_sentence(failing, devices)]
    trace = trace_sentence(round_.step(Step.PATH_TRACE), devices)
    if trace is not None:
        sentences.append(trace)
    return sentences


def _sentence(failing: StepResult, devices: Sequence[Network]) -> str:
    if failing.step is Step.TCP_CONNECT:
        return connect_sentence(failing, devices)
    if failing.step is Step.TLS_HANDSHAKE:
        return tls_sentence(failing)
    return http_sentence(failing)


def _devices_on_path(round_: RoundResult, devices: Sequence[Network]) -> list[str]:
    """Egress device addresses seen on the way: an ICMP sender or any hop of the trace."""
    seen = [*icmp_senders(round_.step(Step.TCP_CONNECT)), *trace_hops(round_.step(Step.PATH_TRACE))]
    return list(dict.fromkeys(a for a in seen if device_of(a, devices) is not None))


def _connection(
    round_: RoundResult, failing: StepResult, reason: Reason, devices: Sequence[Network]
) -> Finding | None:
    """Connection-level failures, at whichever step the connection was being made or used."""
    on_path = _devices_on_path(round_, devices)
    named = _connection_suspect(reason, failing.step, bool(on_path))
    if named is None:
        return None
    suspect, rule = named
    evidence = _says(round_, failing, devices)
    facts: dict[str, Any] = {failing.step.value: failure_facts(failing)}
    if on_path:
        facts["egress_devices_on_path"] = on_path
        if rule == "cut_on_device_path":
            evidence.append(f"egress device {', '.join(on_path)} is on the path")
    if rule == "endpoint_resets" and on_path:
        devices_said = ", ".join(on_path)
        evidence.append(
            f"egress device {devices_said} is on the path, but the reset came with nothing sent: "
            "a device that inspects traffic had nothing to react to"
        )
    if rule == "silent_drop" and not _traced(round_):
        evidence.append("no path_trace this round to say where the packets stop")
    senders = icmp_senders(round_.step(Step.TCP_CONNECT))
    if rule == "refused_by_filter" and devices and senders:
        evidence.append(f"{', '.join(senders)} is not a configured egress device")
    told = frozenset({failing.step, Step.PATH_TRACE})
    return Finding(suspect, rule, tuple(evidence), facts, None, told)


def _connection_suspect(
    reason: Reason, step: Step, device_on_path: bool
) -> tuple[Suspect, str] | None:
    """The suspect and rule id for a connection-level reason (docs/diagnosis.md, shapes)."""
    match reason:
        case Reason.CONN_TIMEOUT:
            return Suspect.NSG_OR_ROUTE, "silent_drop"
        case Reason.NET_UNREACHABLE | Reason.HOST_UNREACHABLE:
            return Suspect.NSG_OR_ROUTE, "no_route"
        case Reason.FIREWALL_DENIED:
            return Suspect.FIREWALL, "refused_by_filter"
        case Reason.CONN_REFUSED:
            return Suspect.ENDPOINT_DOWN, "endpoint_refuses"
        case Reason.CONN_RESET if step is Step.TCP_CONNECT:
            # accepted, then reset with nothing sent (tcp_connect sends nothing; an HTTP(S)
            # round's reset is told apart first: probes/resetcheck.py): a listener with nothing
            # healthy behind it. A device on the path had nothing to inspect and react to.
            return Suspect.ENDPOINT_DOWN, "endpoint_resets"
        case Reason.CONN_RESET | Reason.TLS_HANDSHAKE_FAILED if device_on_path:
            # a device that inspects traffic let the handshake through, then cut it
            return Suspect.FIREWALL, "cut_on_device_path"
        case (
            Reason.CONN_RESET | Reason.TLS_HANDSHAKE_FAILED | Reason.TIMEOUT | Reason.HTTP_PROTOCOL
        ):
            # connected, then the exchange broke: the service answering is at fault
            return Suspect.ENDPOINT_ERROR, "exchange_broken"
        case _:
            return None


def _traced(round_: RoundResult) -> bool:
    """path_trace ran this round (reached or not)."""
    trace = round_.step(Step.PATH_TRACE)
    return trace is not None and (trace.failed or is_ok(trace))


def _certificate(failing: StepResult, peers: Sequence[RoundResult]) -> Finding:
    """tls_untrusted: someone re-signs, unless the leaf signed itself; else the endpoint's cert."""
    evidence = [tls_sentence(failing)]
    facts = {Step.TLS_HANDSHAKE.value: failure_facts(failing)}
    told = frozenset({Step.TLS_HANDSHAKE})
    if failing.reason is not Reason.TLS_UNTRUSTED:
        return Finding(
            Suspect.ENDPOINT_ERROR, "certificate_invalid", tuple(evidence), facts, None, told
        )
    shown = tls_of(failing)
    issuer = shown.issuer if shown is not None else None
    trusted = _trusted_elsewhere(peers, issuer)
    if trusted:
        evidence.extend(trusted)
        return Finding(
            Suspect.TLS_INTERCEPTION, "issuer_differs", tuple(evidence), facts, None, told
        )
    if _self_signed(failing):
        evidence.append("the certificate is self-signed: the endpoint's own, not re-signed")
        return Finding(Suspect.ENDPOINT_ERROR, "self_signed", tuple(evidence), facts, None, told)
    return Finding(Suspect.TLS_INTERCEPTION, "untrusted_issuer", tuple(evidence), facts, None, told)


def _trusted_elsewhere(peers: Sequence[RoundResult], issuer: str | None) -> list[str]:
    """`node-1 is shown a trusted certificate issued by X`, for each peer shown another issuer."""
    found = []
    for peer in peers:
        tls = peer.step(Step.TLS_HANDSHAKE)
        shown = tls_of(tls)
        other = shown.issuer if shown is not None else None
        if is_ok(tls) and other and other != issuer:
            found.append(f"{peer.source} is shown a trusted certificate issued by {other}")
    return found


def _self_signed(tls: StepResult) -> bool:
    """The leaf is its own issuer (OpenSSL: `self-signed certificate`, not `... in chain`)."""
    shown = tls_of(tls)
    if shown is None:
        return False
    if shown.issuer and shown.issuer == shown.subject:
        return True
    error = (shown.verify_error or "").lower().replace("self signed", "self-signed")
    return error == "self-signed certificate"


def _answer(failing: StepResult) -> Finding:
    """The endpoint answered (a status outside the expectation) or accepted and hung."""
    rule = "unexpected_status" if failing.reason is Reason.HTTP_STATUS else "no_answer_in_time"
    return Finding(
        Suspect.ENDPOINT_ERROR,
        rule,
        (http_sentence(failing),),
        {Step.HTTP_RESPONSE.value: failure_facts(failing)},
        None,
        frozenset({Step.HTTP_RESPONSE}),
    )
