"""The diagnosis: from the latest round of a (source, target), and what is known around it,
the likely cause (the suspect), its evidence, and the next manual command (DESIGN.md §1).

The rules follow the checklist's order and are an ordered chain of small functions; the first
that concludes wins (docs/diagnosis.md explains each and why the order is what it is):

1. nothing failed: no suspect;
2. a DNS step failed first: `name_not_found`, a source comparison, `cluster_dns`, `upstream_dns`;
3. only path_trace failed: the target works, no suspect;
4. signatures on the network steps: a proxy's refusal (`proxy`), an egress device's
   (`firewall`);
5. source comparison (comparisons.py): a pod fails where a node gets through (`network_policy`),
   or only this source fails (`source_local`);
6. every control fails from this source too (`egress_path`, comparisons.py);
7. the failure's shape (failure_shapes.py);
8. anything else: `unknown`, with the evidence gathered.

Pure: no I/O, no clock; the caller gathers the rounds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from egresswatch.controller.diagnosis.comparisons import (
    compare,
    compare_sources,
    egress_path,
    every_control_fails,
)
from egresswatch.controller.diagnosis.failure_shapes import shape
from egresswatch.controller.diagnosis.findings import (
    DNS_STEPS,
    DNS_UNANSWERED,
    NAME_ABSENT,
    NETWORK_STEPS,
    PROXY_REFUSALS,
    SILENT_OR_UNREACHABLE,
    Finding,
    device_of,
    failure_facts,
    is_ok,
    listing,
    ran,
    reason_text,
    tcp_of,
    trace_of,
    trace_sentence,
    trace_stop,
)
from egresswatch.controller.diagnosis.inputs import Case, Context, Observation, Rule
from egresswatch.evidence import DnsEvidence
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


# --- 2. DNS ----------------------------------------------------------------------------------


def _dns(case: Case) -> Finding | None:
    """A DNS step failed first: whose answer was wrong, the name's, the source's or a resolver's."""
    if case.first not in DNS_STEPS:
        return None
    cluster, upstream = case.result(Step.DNS_CLUSTER), case.result(Step.DNS_UPSTREAM)
    both = (case.says(Step.DNS_CLUSTER), case.says(Step.DNS_UPSTREAM))
    facts = {
        Step.DNS_CLUSTER.value: failure_facts(cluster),
        Step.DNS_UPSTREAM.value: failure_facts(upstream),
    }
    told = frozenset(DNS_STEPS)

    def found(suspect: Suspect, rule: str, command: Step, *more: str) -> Finding:
        return Finding(suspect, rule, (*both, *more), facts, command, told)

    cluster_failed = cluster is not None and cluster.failed
    upstream_failed = upstream is not None and upstream.failed
    if upstream_failed and _reason_in(upstream, NAME_ABSENT) and not is_ok(cluster):
        return found(Suspect.NAME_NOT_FOUND, "name_absent_upstream", Step.DNS_UPSTREAM)
    if cluster_failed and _reason_in(cluster, NAME_ABSENT) and not ran(upstream):
        why = "no upstream answer to compare with: configure dns.upstream to tell them apart"
        return found(Suspect.NAME_NOT_FOUND, "name_absent_only_resolver", Step.DNS_CLUSTER, why)
    compared = _compare_dns(case, cluster, upstream)
    if compared is not None:
        return compared
    if cluster_failed and is_ok(upstream):
        rule = "cluster_name_absent" if _reason_in(cluster, NAME_ABSENT) else "cluster_fails"
        return found(Suspect.CLUSTER_DNS, rule, Step.DNS_CLUSTER)
    elsewhere = _upstream_answers_elsewhere(case, upstream)
    if cluster_failed and elsewhere:
        # this source cannot reach the upstream, yet it is up: the cluster resolver's own
        # failure (it answered, else the comparison above would have spoken) is the cause
        more = f"dns_upstream works from {listing(elsewhere)}"
        return found(Suspect.CLUSTER_DNS, "cluster_fails", Step.DNS_CLUSTER, more)
    if cluster_failed and not ran(upstream):
        return found(Suspect.CLUSTER_DNS, "cluster_fails_no_upstream", Step.DNS_CLUSTER)
    if upstream_failed:
        rule = "upstream_name_absent" if _reason_in(upstream, NAME_ABSENT) else "upstream_fails"
        return found(Suspect.UPSTREAM_DNS, rule, Step.DNS_UPSTREAM)
    return None


def _upstream_answers_elsewhere(case: Case, upstream: StepResult | None) -> list[str]:
    """Other sources the upstream answered, when it did not answer this one at all."""
    if not (upstream is not None and upstream.failed and _reason_in(upstream, DNS_UNANSWERED)):
        return []
    return [p.source for p in case.peers if is_ok(p.round.step(Step.DNS_UPSTREAM))]


def _reason_in(result: StepResult | None, reasons: frozenset[Reason]) -> bool:
    return result is not None and result.reason in reasons


def _compare_dns(
    case: Case, cluster: StepResult | None, upstream: StepResult | None
) -> Finding | None:
    """Queries that got no answer at all, while other sources get answers from the same server.

    dns_upstream asks the same server from every source, so every peer compares. dns_cluster
    asks the source's own resolver (CoreDNS in pods, the VNet's on nodes), so only peers of
    the same kind compare.
    """
    upstream_unanswered = upstream is not None and upstream.failed
    upstream_unanswered = upstream_unanswered and _reason_in(upstream, DNS_UNANSWERED)
    cluster_unanswered = cluster is not None and cluster.failed
    cluster_unanswered = cluster_unanswered and _reason_in(cluster, DNS_UNANSWERED)
    # A cluster resolver that answered (SERVFAIL, say) is broken whatever this source's path
    # to the upstream is: that is not for a comparison to explain away.
    cluster_quiet = cluster_unanswered or not (cluster is not None and cluster.failed)
    if upstream_unanswered and cluster_quiet:
        return compare(case, Step.DNS_UPSTREAM, case.peers)
    if cluster_unanswered:
        alike = tuple(p for p in case.peers if p.source_kind is case.this.source_kind)
        return compare(case, Step.DNS_CLUSTER, alike)
    return None


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


# --- 7. failure shapes, 8. unknown (5 and 6 are in comparisons.py) ---------------------------


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
    _dns,
    _trace_only,
    _proxy,
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
    facts: dict[str, Any] = {
        "rule": finding.rule,
        "source": case.this.source,
        "source_kind": case.this.source_kind.value,
        "target": case.this.target,
        "first_failing_step": case.first.value if case.first is not None else None,
        "reason": case.failing.reason.value if case.failing and case.failing.reason else None,
        **finding.facts,
    }
    return Verdict(
        suspect=finding.suspect,
        first_failing_step=case.first,
        evidence=tuple(evidence),
        next_command=_command(case, finding.command_step or case.first),
        facts=facts,
    )


def _command(case: Case, step: Step | None) -> str | None:
    """The manual command for `step`, aimed where the round aimed (the proxy's port included)."""
    if step is None:
        return None
    endpoint = case.this.endpoint
    proxy = case.context.proxy
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


def _aim(result: StepResult | None) -> tuple[str | None, int | None]:
    """The IP tcp_connect reached or first tried, or the trace's destination; and the port."""
    tcp, trace = tcp_of(result), trace_of(result)
    if tcp is not None:
        return tcp.aimed_at or None, tcp.port
    if trace is not None:
        return trace.destination or None, trace.port
    return None, None
