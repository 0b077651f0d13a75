"""What a round's steps say, for the diagnosis: evidence read by attribute, and said in words.

Step evidence is typed (evidence.py), checked at ingest and read leniently from storage, so
its shape is known here; its values are still what an agent saw, so a garbled address or an
empty list reads as "not known", never as an exception. Every sentence quotes the concrete
facts (resolver and rcode, IP:port, ICMP sender, hop, status code, issuer) so a person can
check them by hand.

Pure: no I/O, no clock.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from egresswatch.evidence import (
    DnsEvidence,
    HttpEvidence,
    ResetCheck,
    TcpEvidence,
    TlsEvidence,
    TraceEvidence,
)
from egresswatch.model import Reason, Status, Step, StepResult, Suspect, evidence_of
from egresswatch.steps import describe

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

DNS_STEPS = (Step.DNS_CLUSTER, Step.DNS_UPSTREAM)
NETWORK_STEPS = (Step.TCP_CONNECT, Step.TLS_HANDSHAKE, Step.HTTP_RESPONSE)

# A resolver's authoritative word that the name has no address: the name, not the resolver.
NAME_ABSENT = frozenset({Reason.NXDOMAIN, Reason.NO_DATA})
# The query never got an answer: something between the source and the resolver, or the
# resolver is gone. A resolver that answers (SERVFAIL, REFUSED) is not in this set.
DNS_UNANSWERED = frozenset(
    {
        Reason.DNS_TIMEOUT,
        Reason.CONN_REFUSED,
        Reason.CONN_RESET,
        Reason.NET_UNREACHABLE,
        Reason.HOST_UNREACHABLE,
        Reason.FIREWALL_DENIED,
    }
)
PROXY_REFUSALS = frozenset({Reason.PROXY_AUTH_REQUIRED, Reason.PROXY_DENIED, Reason.PROXY_ERROR})
# Packets did not get through: what a packet filter, a route or a dead host causes. Only these
# are compared across sources (a network policy is L3/L4: it cannot fail a TLS handshake that
# it let connect) and only these make this target count towards `egress_path`.
BLOCKED = frozenset(
    {
        Reason.CONN_TIMEOUT,
        Reason.CONN_REFUSED,
        Reason.CONN_RESET,
        Reason.NET_UNREACHABLE,
        Reason.HOST_UNREACHABLE,
        Reason.FIREWALL_DENIED,
    }
)
# A control "fails at a network step" when the far side never answered it: blocked, or stuck
# in the middle (a proxy refusing, a handshake or an exchange that never completed). An HTTP
# status or a certificate verdict means the control was reached, so the path works.
NOT_REACHED = (
    BLOCKED
    | PROXY_REFUSALS
    | {
        Reason.TIMEOUT,
        Reason.TLS_HANDSHAKE_FAILED,
        Reason.HTTP_PROTOCOL,
        Reason.DESTINATION_UNREACHABLE,
    }
)
# Where a trace stopping at an egress device means the device is the one not passing packets.
SILENT_OR_UNREACHABLE = frozenset(
    {
        Reason.CONN_TIMEOUT,
        Reason.NET_UNREACHABLE,
        Reason.HOST_UNREACHABLE,
        Reason.FIREWALL_DENIED,
    }
)

_MAX_LISTED = 3  # addresses or sources named in one sentence; the facts carry them all


@dataclass(frozen=True)
class Finding:
    """What one rule concluded: the suspect, why (evidence sentences), and the facts it used.

    `rule` is a stable id (docs/diagnosis.md lists them); `command_step` is the step whose
    manual command comes next when that is not the first failing step; `steps_told` are the
    steps the evidence already describes, so they are not listed again as "also failing".
    """

    suspect: Suspect
    rule: str
    evidence: tuple[str, ...]
    facts: Mapping[str, Any] = field(default_factory=dict)
    command_step: Step | None = None
    steps_told: frozenset[Step] = frozenset()
    command: str | None = None  # a whole command line, when no one step's command shows it


# --- reading evidence ------------------------------------------------------------------------


def tcp_of(result: StepResult | None) -> TcpEvidence | None:
    return evidence_of(result, TcpEvidence)


def trace_of(result: StepResult | None) -> TraceEvidence | None:
    return evidence_of(result, TraceEvidence)


def tls_of(result: StepResult | None) -> TlsEvidence | None:
    return evidence_of(result, TlsEvidence)


def ran(result: StepResult | None) -> bool:
    """The step ran and judged the target (ok or fail), rather than skipped or broke."""
    return result is not None and result.status in (Status.OK, Status.FAIL)


def is_ok(result: StepResult | None) -> bool:
    return result is not None and result.status is Status.OK


def reason_text(result: StepResult | None) -> str:
    if result is None:
        return "not run"
    return result.reason.value if result.reason is not None else result.status.value


# --- egress devices --------------------------------------------------------------------------


def device_of(address: str | None, devices: Sequence[Network]) -> Network | None:
    """The configured egress device network that holds `address`, if any."""
    if not address or not devices:
        return None
    try:
        ip = ipaddress.ip_address(address.strip("[]"))
    except ValueError:
        return None
    return next((net for net in devices if ip.version == net.version and ip in net), None)


def icmp_senders(tcp: StepResult | None) -> list[str]:
    """Who sent the ICMP errors that ended tcp_connect's attempts, in attempt order."""
    found = tcp_of(tcp)
    return found.icmp_senders if found is not None else []


def trace_stop(trace: StepResult | None) -> str | None:
    """The last hop that answered a trace that did not reach the target, else None."""
    found = trace_of(trace)
    if trace is None or not trace.failed or found is None:
        return None
    return found.last_hop or None


def trace_hops(trace: StepResult | None) -> list[str]:
    """The addresses of every hop of the trace that answered, in TTL order."""
    found = trace_of(trace)
    return found.addresses if found is not None else []


def device_note(address: str, devices: Sequence[Network]) -> str:
    """`10.1.0.4, in egress device 10.1.0.0/26` or just the address."""
    device = device_of(address, devices)
    return f"{address}, in egress device {device}" if device is not None else address


# --- sentences -------------------------------------------------------------------------------


def hostport(address: str | None, port: int | None) -> str:
    if address is None:
        return "?" if port is None else f"?:{port}"
    host = f"[{address}]" if ":" in address and not address.startswith("[") else address
    return host if port is None else f"{host}:{port}"


def listing(items: Sequence[str]) -> str:
    """`a, b, c and 2 more`: a few names a person can read in one line."""
    shown = ", ".join(items[:_MAX_LISTED])
    rest = len(items) - _MAX_LISTED
    return f"{shown} and {rest} more" if rest > 0 else shown


def _duration(value: float) -> str:
    if value >= 1000:
        return f"{value / 1000:.1f} s"
    return f"{value:.0f} ms" if value >= 10 else f"{value:.1f} ms"


_RCODES = {
    Reason.NXDOMAIN: "NXDOMAIN",
    Reason.SERVFAIL: "SERVFAIL",
    Reason.REFUSED: "REFUSED",
    Reason.NO_DATA: "NOERROR",
    Reason.DNS_TIMEOUT: "TIMEOUT",
}


def dns_sentence(result: StepResult | None, label: str, host: str) -> str:
    """E.g. `cluster DNS 10.0.0.10 answered SERVFAIL for microsoft.com.`."""
    dns = evidence_of(result, DnsEvidence)
    resolver = dns.resolver if dns is not None else None
    who = f"{label} {resolver}" if resolver else label
    if result is None:
        return f"{label} was not asked"
    if result.status is Status.OK:
        addresses = [a for a in dns.addresses if a] if dns is not None else []
        return f"{who} answered {listing(addresses)}" if addresses else f"{who} answered"
    if result.status is not Status.FAIL:
        return f"{who} was not asked ({_why(result)})"
    name = _dns_name(dns, result.reason, host)
    match result.reason:
        case Reason.NXDOMAIN | Reason.SERVFAIL | Reason.REFUSED:
            return f"{who} answered {_RCODES[result.reason]} for {name}"
        case Reason.NO_DATA:
            return f"{who} answered no address record (NODATA) for {name}"
        case Reason.DNS_TIMEOUT:
            return f"{who} did not answer for {name} (dns_timeout)"
        case Reason.DNS_ERROR:
            return f"{who} gave an unusable answer for {name} (dns_error)"
        case None:
            return f"{who} failed for {name}"
        case reason:
            return f"{who} could not be asked for {name} ({reason.value})"


def _dns_name(dns: DnsEvidence | None, reason: Reason | None, host: str) -> str:
    """The name the failure is about: the absolute name when it was asked, else the last."""
    absolute = host if host.endswith(".") else f"{host}."
    if dns is None:
        return absolute
    rcode = _RCODES.get(reason) if reason is not None else None
    tried = [t.name for t in dns.tried if t.name and (rcode is None or t.rcode == rcode)]
    names = tried or [name for name in dns.candidates if name]
    if absolute in names or not names:
        return absolute
    return names[-1]


def _why(result: StepResult) -> str:
    why = reason_text(result)
    return f"{why}: {result.detail}" if result.detail else why


def connect_sentence(tcp: StepResult, devices: Sequence[Network]) -> str:
    """E.g. `tcp_connect to 20.70.246.20:443 (from dns_cluster): conn_timeout after 5.0 s`."""
    evidence = tcp_of(tcp) or TcpEvidence()
    port, origin = evidence.port, evidence.ip_source
    attempts = []
    for attempt in evidence.attempts[:4]:
        part = f"{hostport(attempt.address or None, port)} {attempt.outcome or '?'}"
        part += f" after {_duration(attempt.ms)}"
        if attempt.icmp_from:
            part += f" (ICMP from {device_note(attempt.icmp_from, devices)})"
        attempts.append(part)
    where = "the proxy" if origin == "proxy" else f"from {origin}" if origin else None
    suffix = f" ({where})" if where else ""
    if attempts:
        said = f"tcp_connect{suffix}: " + "; ".join(attempts)
        return said + reset_check_words(evidence.reset_check)
    address = evidence.address
    target = f" to {hostport(address, port)}" if address else ""
    return f"tcp_connect{target}{suffix}: {_why(tcp)}"


def reset_check_words(check: ResetCheck | None) -> str:
    """How a reset right after the accept was told apart (probes/resetcheck.py), as a clause
    to append; empty when there was none."""
    if check is None:
        return ""
    met = f"{check.seen_at} met the {check.seen or 'reset'} on the round's connection"
    match check.idle:
        case "conn_reset":
            return (
                f"; {met}, and a second connection that sent nothing was reset too: "
                "the endpoint resets whatever is sent"
            )
        case "ok":
            return (
                f"; a second connection that sent nothing stayed up for {check.grace_ms:.0f} ms: "
                "the peer reacted to what was sent"
            )
        case "closed":
            return (
                "; a second connection that sent nothing was closed too: "
                "the endpoint closes every connection"
            )
        case _:
            return f"; a second connection to tell it apart failed ({check.idle})"


def trace_sentence(trace: StepResult | None, devices: Sequence[Network]) -> str | None:
    """E.g. `path_trace to 20.70.246.20:443 stopped at hop 4 (10.1.0.4): conn_timeout`."""
    if trace is None or not ran(trace):
        return None
    evidence = trace_of(trace) or TraceEvidence()
    where = hostport(evidence.destination or None, evidence.port)
    last = evidence.last_hop or None
    ttl = next((h.ttl for h in reversed(evidence.hops) if h.address == last), None)
    if trace.status is Status.OK:
        return f"path_trace reached {where}" + (f" in {ttl} hops" if ttl is not None else "")
    if last is None:
        return f"path_trace to {where}: no hop answered ({reason_text(trace)})"
    at = f"hop {ttl} " if ttl is not None else ""
    note = device_note(last, devices)
    return f"path_trace to {where} stopped at {at}({note}): {reason_text(trace)}"


def tls_sentence(tls: StepResult) -> str:
    """E.g. `tls_handshake with example.com at 20.1.2.3:443: tls_untrusted (...), issuer CN=X`."""
    evidence = tls_of(tls) or TlsEvidence()
    name = evidence.server_name
    where = hostport(evidence.address or None, evidence.port)
    head = f"tls_handshake with {name} at {where}" if name else f"tls_handshake at {where}"
    sentence = f"{head}: {reason_text(tls)}"
    if evidence.verify_error:
        sentence += f" ({evidence.verify_error})"
    if evidence.issuer:
        sentence += f", certificate issued by {evidence.issuer}"
    if evidence.via_proxy:
        sentence += f", via {evidence.via_proxy}"
    return sentence + reset_check_words(evidence.reset_check)


def http_sentence(http: StepResult) -> str:
    """E.g. `https://x/ answered 503 (expected 200-399), server nginx` or a proxy's refusal."""
    evidence = evidence_of(http, HttpEvidence) or HttpEvidence()
    url = evidence.url or "the endpoint"
    proxy = evidence.via_proxy or None
    status, proxy_status = evidence.status, evidence.proxy_status
    reason = reason_text(http)
    if proxy_status is not None and not 200 <= proxy_status < 300:
        who = proxy or "the proxy"
        return f"{who} answered {proxy_status} to CONNECT for {url} ({reason})"
    if status is None:
        sentence = f"http_response for {url}: {reason}"
        sentence = f"{sentence} via {proxy}" if proxy else sentence
        return sentence + reset_check_words(evidence.reset_check)
    sentence = f"{url} answered {status}"
    if evidence.expected:
        sentence += f" (expected {evidence.expected})"
    if evidence.server:
        sentence += f", server {evidence.server}"
    if proxy is not None:
        sentence += f", via {proxy}"
    if http.reason is not Reason.HTTP_STATUS:
        sentence += f" ({reason})"
    return sentence


def step_sentence(result: StepResult, host: str, devices: Sequence[Network]) -> str:
    """The one sentence that says what a step found, whatever the step."""
    match result.step:
        case Step.DNS_CLUSTER:
            return dns_sentence(result, "cluster DNS", host)
        case Step.DNS_UPSTREAM:
            return dns_sentence(result, "upstream", host)
        case Step.TCP_CONNECT:
            return connect_sentence(result, devices)
        case Step.TLS_HANDSHAKE:
            return tls_sentence(result)
        case Step.HTTP_RESPONSE:
            return http_sentence(result)
        case Step.PATH_TRACE:
            return trace_sentence(result, devices) or f"path_trace: {_why(result)}"
        case _:
            return f"{result.step.value}: {_why(result)}"


def failure_facts(result: StepResult | None) -> dict[str, Any]:
    """The JSON-able gist of a step: status, reason, and the evidence fields its description
    says the rules look at (steps.py)."""
    if result is None:
        return {"status": None, "reason": None}
    facts: dict[str, Any] = {
        "status": result.status.value,
        "reason": result.reason.value if result.reason is not None else None,
    }
    described = describe(result.step)
    if isinstance(result.evidence, described.evidence or ()):
        found = result.evidence.to_json()
        facts.update((name, found[name]) for name in described.facts if name in found)
    if result.step is Step.TCP_CONNECT:
        facts["icmp_from"] = icmp_senders(result)
    return facts
