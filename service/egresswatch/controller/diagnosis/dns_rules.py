"""The DNS rules of the diagnosis (rules 2 and 2b of docs/diagnosis.md): whose answer was
wrong, the name's, the source's or a resolver's; and when a DNS failure is one face of a wider
blockage.

Pure: no I/O, no clock.
"""

from __future__ import annotations

import dataclasses

from egresswatch.controller.diagnosis.comparisons import (
    compare,
    egress_path_at,
    every_control_fails,
)
from egresswatch.controller.diagnosis.findings import (
    DNS_STEPS,
    DNS_UNANSWERED,
    NAME_ABSENT,
    SILENT_OR_UNREACHABLE,
    Finding,
    failure_facts,
    is_ok,
    listing,
    ran,
    tcp_of,
)
from egresswatch.controller.diagnosis.inputs import Case
from egresswatch.evidence import DnsEvidence
from egresswatch.model import Reason, Step, StepResult, Suspect, evidence_of
from egresswatch.report import next_command

# --- 2. DNS ----------------------------------------------------------------------------------


def dns(case: Case) -> Finding | None:
    """A DNS step failed first: whose answer was wrong, the name's, the source's or a resolver's.

    A pod whose NetworkPolicies forbid asking the upstream directly (the common "DNS to kube-dns
    only") learns nothing of the upstream from its silence: dns_upstream is then judged as not
    run, and the evidence says why.
    """
    if case.first not in DNS_STEPS:
        return None
    upstream = case.result(Step.DNS_UPSTREAM)
    denied = case.policy_on(Step.DNS_UPSTREAM) if case.first is Step.DNS_CLUSTER else None
    if denied is None or denied.allowed:
        return _dns(case, upstream)
    finding = _dns(case, None)
    if finding is None:
        return None
    note = f"dns_upstream says nothing of the upstream here: {denied.sentences[0]}"
    facts = {**finding.facts, "network_policy_dns_upstream": denied.to_json()}
    told = finding.steps_told | {Step.DNS_UPSTREAM}
    return dataclasses.replace(
        finding, evidence=(*finding.evidence, note), facts=facts, steps_told=told
    )


def _dns(case: Case, upstream: StepResult | None) -> Finding | None:
    """`dns`, with `upstream` the dns_upstream result to weigh (None: none to weigh)."""
    cluster = case.result(Step.DNS_CLUSTER)
    both = (case.says(Step.DNS_CLUSTER), case.says(Step.DNS_UPSTREAM))
    facts = {
        Step.DNS_CLUSTER.value: failure_facts(cluster),
        Step.DNS_UPSTREAM.value: failure_facts(case.result(Step.DNS_UPSTREAM)),
    }
    told = frozenset(DNS_STEPS)

    def found(suspect: Suspect, rule: str, command: Step, *more: str) -> Finding:
        return Finding(suspect, rule, (*both, *more), facts, command, told)

    cluster_failed = cluster is not None and cluster.failed
    upstream_failed = upstream is not None and upstream.failed
    if upstream_failed and _reason_in(upstream, NAME_ABSENT) and not is_ok(cluster):
        return found(Suspect.NAME_NOT_FOUND, "name_absent_upstream", Step.DNS_UPSTREAM)
    if cluster_failed and _reason_in(cluster, NAME_ABSENT) and not ran(upstream):
        why = "no upstream answer to compare with"
        if not ran(case.result(Step.DNS_UPSTREAM)):
            why += ": configure dns.upstream to tell them apart"
        return found(Suspect.NAME_NOT_FOUND, "name_absent_only_resolver", Step.DNS_CLUSTER, why)
    blocked = _blocked_beyond_dns(case)
    if blocked is not None:
        return blocked
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


def _blocked_beyond_dns(case: Case) -> Finding | None:
    """The DNS failure is one face of a wider blockage: the connect to a known address went
    silent too, and so did every control from this source.

    When the egress device drops everything, the cluster resolver's own queries to the
    upstream die with the rest, so DNS fails first; but the same round's connect to the last
    good (or pinned) address and the controls say the path out is gone, not a resolver. Where
    only the upstream resolver is down, that connect works, and the DNS rules below speak.
    A pod blocked where a node gets through is a network policy (a default deny, DNS too).
    """
    tcp = case.result(Step.TCP_CONNECT)
    if tcp is None or not tcp.failed or tcp.reason not in SILENT_OR_UNREACHABLE:
        return None
    if not every_control_fails(case):
        return None
    dns = tuple(case.says(step) for step in DNS_STEPS if ran(case.result(step)))
    compared = compare(case, Step.TCP_CONNECT, case.peers)
    if compared is not None:
        steps = compared.steps_told | set(DNS_STEPS)
        return dataclasses.replace(
            compared, evidence=(*dns, *compared.evidence), steps_told=frozenset(steps)
        )
    found = egress_path_at(case, tcp, *dns)
    if found is None:
        return None
    return dataclasses.replace(
        found,
        rule="egress_blocked_dns_too",
        steps_told=found.steps_told | set(DNS_STEPS),
        command_step=Step.TCP_CONNECT,  # nc to the known address shows the path, not nslookup
    )


def cluster_answer_unreachable(case: Case) -> Finding | None:
    """The cluster resolver answers other addresses than the upstream, and only the upstream's
    work: a stale record, a wrong stub domain or split-horizon entry, a hijacked name.

    No DNS step failed, so this cannot wait for one: the disagreeing answers are the evidence,
    with tcp_connect's word on both (checklist.py tries the other answer when the cluster's
    all fail). Different answers alone are normal (CDNs answer by resolver); only the cluster's
    being unreachable while the upstream's connects makes them the cause.
    """
    tcp = tcp_of(case.result(Step.TCP_CONNECT))
    if case.first is not Step.TCP_CONNECT or tcp is None or tcp.ip_source != "dns_cluster":
        return None
    working = [a for a in tcp.other_answers if a.outcome == "ok"]
    cluster = evidence_of(case.result(Step.DNS_CLUSTER), DnsEvidence)
    upstream = evidence_of(case.result(Step.DNS_UPSTREAM), DnsEvidence)
    if not working or cluster is None or upstream is None:
        return None
    if set(cluster.addresses) & set(upstream.addresses):
        return None
    failed = ", ".join(f"{a.address} ({a.outcome})" for a in tcp.attempts)
    resolver = f"the upstream resolver {upstream.resolver}" if upstream.resolver else "upstream"
    evidence = (
        f"the cluster resolver answers {case.host} with {listing(list(cluster.addresses))}, "
        f"{resolver} with {listing(list(upstream.addresses))}",
        f"tcp_connect to the cluster's answer fails: {failed}",
        f"tcp_connect to the upstream's answer {working[0].address} works",
    )
    facts = {
        "cluster_addresses": list(cluster.addresses),
        "upstream_addresses": list(upstream.addresses),
        "connect_used": tcp.ip_source,
        "other_answer_works": working[0].address,
        Step.TCP_CONNECT.value: failure_facts(case.result(Step.TCP_CONNECT)),
    }
    show = [next_command(Step.DNS_CLUSTER, case.this.endpoint)]
    asked = case.context.upstream or upstream.resolver
    show.append(next_command(Step.DNS_UPSTREAM, case.this.endpoint, upstream=asked))
    command = "; ".join(c for c in show if c)
    told = frozenset({Step.TCP_CONNECT, *DNS_STEPS})
    return Finding(
        Suspect.CLUSTER_DNS, "cluster_answer_unreachable", evidence, facts, None, told, command
    )


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
