"""The diagnosis: from the latest round of a (source, target), and what is known around it,
the likely cause (the suspect), its evidence, and the next manual command (DESIGN.md §1).

The rules follow the checklist's order and are an ordered chain of small functions; the first
that concludes wins (docs/diagnosis.md explains each and why the order is what it is):

1. nothing failed: no suspect;
1b. the NetworkPolicies selecting a pod source deny the failing step's packets
   (policy_rules.py): `network_policy`;
2. a DNS step failed first (dns_rules.py): `name_not_found`, `egress_path` when the path out
   is gone too, a source comparison, `cluster_dns`, `upstream_dns`; 2b. the cluster's answer
   is unreachable where the upstream's works: `cluster_dns`;
3. only path_trace failed: the target works, no suspect;
4. signatures on the network steps: a proxy's refusal (`proxy`), an egress device's
   (`firewall`);
5. source comparison (comparisons.py): a pod fails where a node gets through (`network_policy`,
   or `source_local` when the policies, all evaluated, allow it), or only this source fails
   (`source_local`);
6. every control fails from this source too (`egress_path`, comparisons.py);
7. the failure's shape (failure_shapes.py);
8. anything else: `unknown`, with the evidence gathered.

Pure: no I/O, no clock; the caller gathers the rounds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from egresswatch.controller.diagnosis.comparisons import (
    compare_sources,
    egress_path,
    every_control_fails,
)
from egresswatch.controller.diagnosis.dns_rules import cluster_answer_unreachable, dns
from egresswatch.controller.diagnosis.failure_shapes import shape
from egresswatch.controller.diagnosis.findings import (
    DNS_STEPS,
    NETWORK_STEPS,
    PROXY_REFUSALS,
    SILENT_OR_UNREACHABLE,
    Finding,
    device_of,
    failure_facts,
    reason_text,
    tcp_of,
    trace_of,
    trace_sentence,
    trace_stop,
)
from egresswatch.controller.diagnosis.inputs import Case, Context, Observation, Rule
from egresswatch.controller.diagnosis.policy_rules import policy_denies
from egresswatch.evidence import DnsEvidence, HttpEvidence, TlsEvidence
from egresswatch.model import (
    Endpoint,
    Reason,
    Scheme,
    Status,
    Step,
    StepResult,
    Suspect,
    Verdict,
    evidence_of,
)
from egresswatch.report import next_command

__all__ = ["Context", "Observation", "diagnose"]


def diagnose(
    this: Observation,
    *,
    controls: Sequence[Observation],
    peers: Sequence[Observation],
    context: Context,
) -> Verdict:
    """The verdict on `this.round`: suspect, first failing step, evidence, next command, facts.

    `controls` are the latest rounds of the control targets from the same source (`this`'s own
    target is ignored among them, so a control can be diagnosed too); `peers` are the latest
    rounds of the same target from other sources in the same window (`this`'s source is
    ignored among them). A healthy round gets suspect `unknown` with no first failing step and
    no next command. Never raises, whatever the rounds' evidence says.
    """
    case = Case(
        this,
        tuple(c for c in controls if c.target != this.target),
        tuple(p for p in peers if p.source != this.source),
        context,
    )
    for rule in _RULES:
        finding = rule(case)
        if finding is not None:
            return _verdict(case, finding)
    return _verdict(case, _unknown(case))


# --- 1. nothing failed -----------------------------------------------------------------------


def _healthy(case: Case) -> Finding | None:
    if case.first is not None:
        return None
    broken = [r for r in case.this.round.steps if r.status is Status.ERROR]
    evidence = tuple(
        f"no step failed, but the {r.step.value} probe broke"
        + (f": {r.detail}" if r.detail else "")
        for r in broken
    )
    facts = {"probe_errors": [r.step.value for r in broken]}
    return Finding(Suspect.UNKNOWN, "healthy", evidence or ("no step failed",), facts)


# --- 3. only the trace -----------------------------------------------------------------------


def _trace_only(case: Case) -> Finding | None:
    """Everything the target needs worked; a trace that stops short is no fault by itself."""
    if case.first is not Step.PATH_TRACE:
        return None
    evidence = (
        case.says(Step.PATH_TRACE),
        "every other step worked: routers and filters often do not answer traced probes",
    )
    facts = {Step.PATH_TRACE.value: failure_facts(case.failing)}
    return Finding(
        Suspect.UNKNOWN, "trace_only", evidence, facts, None, frozenset({Step.PATH_TRACE})
    )


# --- 4. proxy and egress device signatures ---------------------------------------------------


def _proxy(case: Case) -> Finding | None:
    """The proxy refused, or could not be reached at all."""
    failing = case.failing
    if failing is None or failing.step not in NETWORK_STEPS:
        return None
    facts = {failing.step.value: failure_facts(failing)}
    told = frozenset({failing.step})
    if failing.reason in PROXY_REFUSALS:
        return Finding(
            Suspect.PROXY, "proxy_refuses", (case.says(failing.step),), facts, None, told
        )
    tcp = tcp_of(failing) if failing.step is Step.TCP_CONNECT else None
    if tcp is not None and tcp.ip_source == "proxy":
        return Finding(
            Suspect.PROXY, "proxy_unreachable", (case.says(failing.step),), facts, None, told
        )
    return None


def _past_the_proxy(case: Case) -> Finding | None:
    """The proxy answered, and reports that it could not reach the destination: the fault is
    past the proxy (the endpoint, or the proxy's own way out when every control fails the same
    way), not the proxy's refusal."""
    failing = case.failing
    if failing is None or failing.reason is not Reason.DESTINATION_UNREACHABLE:
        return None
    endpoint = case.this.endpoint
    evidence = [
        case.says(failing.step),
        f"the proxy answered, and reports that it could not reach {endpoint.host}:"
        f"{endpoint.port}: the fault lies past the proxy",
    ]
    facts = {failing.step.value: failure_facts(failing)}
    told = frozenset({failing.step})
    if every_control_fails(case):
        evidence.append(f"every control fails from {case.this.source} too")
        return Finding(
            Suspect.EGRESS_PATH, "proxy_reports_everything_down", tuple(evidence), facts, None, told
        )
    return Finding(
        Suspect.ENDPOINT_DOWN, "proxy_reports_destination_down", tuple(evidence), facts, None, told
    )


def _egress_device(case: Case) -> Finding | None:
    """A firewall said no: an HTTP 470 or a reset after ClientHello, or a device answered."""
    failing = case.failing
    if failing is None or failing.step not in NETWORK_STEPS or failing.reason is None:
        return None
    facts: dict[str, Any] = {failing.step.value: failure_facts(failing)}
    evidence = [case.says(failing.step)]
    told = {failing.step}
    if failing.step is not Step.TCP_CONNECT and failing.reason is Reason.FIREWALL_DENIED:
        return Finding(
            Suspect.FIREWALL, "firewall_refuses", tuple(evidence), facts, None, frozenset(told)
        )
    device, where = _device_answering(case, failing)
    if device is None:
        return None
    if where is Step.PATH_TRACE and every_control_fails(case):
        # Silence at the device for every target from here: the path out is gone there (a
        # deny-all, or the device's own route out), not a rule for this target. The source
        # comparison, then egress_path (later in _RULES), say so and name the device.
        return None
    if where is Step.PATH_TRACE:
        evidence.append(case.says(Step.PATH_TRACE))
        told.add(Step.PATH_TRACE)
    facts["egress_device"] = device
    return Finding(
        Suspect.FIREWALL, "egress_device_stops_it", tuple(evidence), facts, None, frozenset(told)
    )


def _device_answering(case: Case, failing: StepResult) -> tuple[str | None, Step | None]:
    """The egress device address that ended the failing connect, and which step shows it.

    An ICMP error sent by a device ends it, whatever it says. A trace that stops at a device
    ends it only for a silent or unreachable failure: a reset or a refusal came from further.
    """
    tcp = tcp_of(failing) if failing.step is Step.TCP_CONNECT else None
    if tcp is not None:
        for sender in tcp.icmp_senders:
            if device_of(sender, case.devices) is not None:
                return sender, Step.TCP_CONNECT
    stop = trace_stop(case.result(Step.PATH_TRACE))
    if failing.reason in SILENT_OR_UNREACHABLE and device_of(stop, case.devices) is not None:
        return stop, Step.PATH_TRACE
    return None, None


# --- 7. failure shapes, 8. unknown (5 and 6 are in comparisons.py) -----------------------


def _shape(case: Case) -> Finding | None:
    failing = case.failing
    if failing is None or failing.step not in NETWORK_STEPS:
        return None
    peers = [p.round for p in case.peers]
    return shape(case.this.round, failing, case.devices, peers)


def _unknown(case: Case) -> Finding:
    """No rule concluded: the evidence gathered so far, for a person to read."""
    failing = case.failing
    evidence = [case.says(failing.step)] if failing is not None else ["no step failed"]
    told = {failing.step} if failing is not None else set()
    trace = trace_sentence(case.result(Step.PATH_TRACE), case.devices)
    if trace is not None and Step.PATH_TRACE not in told:
        evidence.append(trace)
        told.add(Step.PATH_TRACE)
    facts = {failing.step.value: failure_facts(failing)} if failing is not None else {}
    return Finding(Suspect.UNKNOWN, "no_rule", tuple(evidence), facts, None, frozenset(told))


_RULES: tuple[Rule, ...] = (
    _healthy,
    policy_denies,
    dns,
    cluster_answer_unreachable,
    _trace_only,
    _proxy,
    _past_the_proxy,
    _egress_device,
    compare_sources,
    egress_path,
    _shape,
)


# --- the verdict -----------------------------------------------------------------------------


def _verdict(case: Case, finding: Finding) -> Verdict:
    """The finding, with the round's first failing step, later failures and the next command."""
    evidence = list(finding.evidence)
    later = [
        f"{r.step.value} ({reason_text(r)})"
        for r in case.this.round.steps
        if r.failed and r.step is not case.first and r.step not in finding.steps_told
    ]
    if later:
        evidence.append(f"also failing: {', '.join(later)}")
    policy = case.policy
    said = "network_policy" in finding.facts
    if policy is not None and not said:
        # the network_policy step was judged and did not decide: say so (ruled out, or the
        # policy kinds nobody evaluated), whatever else concluded
        evidence.extend(policy.sentences)
    facts: dict[str, Any] = {
        "rule": finding.rule,
        "source": case.this.source,
        "source_kind": case.this.source_kind.value,
        "target": case.this.target,
        "first_failing_step": case.first.value if case.first is not None else None,
        "reason": case.failing.reason.value if case.failing and case.failing.reason else None,
        **finding.facts,
    }
    if policy is not None and not said:
        facts["network_policy"] = policy.to_json()
    return Verdict(
        suspect=finding.suspect,
        first_failing_step=case.first,
        evidence=tuple(evidence),
        next_command=finding.command or _command(case, finding.command_step or case.first),
        facts=facts,
    )


def _command(case: Case, step: Step | None) -> str | None:
    """The manual command for `step`, aimed where the round aimed (the proxy's port included)."""
    if step is None:
        return None
    endpoint = case.this.endpoint
    # The command follows the round's own path: through the proxy only if the round went
    # through it (a target with use_proxy: false does not), and then the name it resolves is
    # the proxy's.
    proxy = case.context.proxy if _via_proxy(case) else None
    if proxy is not None and step in DNS_STEPS:
        parsed = urlsplit(proxy)
        if parsed.hostname:
            endpoint = Endpoint(Scheme.TCP, parsed.hostname, parsed.port or 3128)
    if step is Step.DNS_UPSTREAM:
        asked = evidence_of(case.result(step), DnsEvidence)
        upstream = case.context.upstream or (asked.resolver if asked is not None else None)
        return next_command(step, endpoint, upstream=upstream)
    if step in (Step.TCP_CONNECT, Step.PATH_TRACE):
        address, port = _aim(case.result(step))
        if port is not None and port != endpoint.port and 0 < port < 65536:
            # through a proxy the round connected to the proxy's port, not the endpoint's
            endpoint = Endpoint(Scheme.TCP, endpoint.host, port)
        return next_command(step, endpoint, address=address, proxy=proxy)
    return next_command(step, endpoint, upstream=case.context.upstream, proxy=proxy)


def _via_proxy(case: Case) -> bool:
    """Whether the round went through a proxy: its connect aimed at the proxy, or its TLS or
    HTTP step says which proxy carried it."""
    tcp = tcp_of(case.result(Step.TCP_CONNECT))
    tls = evidence_of(case.result(Step.TLS_HANDSHAKE), TlsEvidence)
    http = evidence_of(case.result(Step.HTTP_RESPONSE), HttpEvidence)
    return (
        (tcp is not None and tcp.ip_source == "proxy")
        or (tls is not None and tls.via_proxy is not None)
        or (http is not None and http.via_proxy is not None)
    )


def _aim(result: StepResult | None) -> tuple[str | None, int | None]:
    """The IP tcp_connect reached or first tried, or the trace's destination; and the port."""
    tcp, trace = tcp_of(result), trace_of(result)
    if tcp is not None:
        return tcp.aimed_at or None, tcp.port
    if trace is not None:
        return trace.destination or None, trace.port
    return None, None
