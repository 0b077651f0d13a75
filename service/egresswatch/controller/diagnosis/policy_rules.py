"""The `network_policy` rule: the NetworkPolicies that select a pod source deny the packets its
failing step sent (docs/diagnosis.md, rule 1b).

It needs no node to compare with: the policies themselves say it. It comes before the DNS
rules (a default deny that forgets DNS makes `dns_cluster` time out, which is no resolver's
fault) and before the proxy and egress device signatures (a policy that forbids the proxy's
address is why the proxy cannot be reached), but it steps aside when a configured egress device
answered the failing connect with an ICMP error: the packets left the pod, so whatever the
policies say, something further on refused them.

Pure: no I/O, no clock.
"""

from __future__ import annotations

from egresswatch.controller.diagnosis.findings import (
    DNS_STEPS,
    Finding,
    device_of,
    failure_facts,
    icmp_senders,
    is_ok,
    listing,
)
from egresswatch.controller.diagnosis.inputs import Case
from egresswatch.model import SourceKind, Step, Suspect


def policy_denies(case: Case) -> Finding | None:
    """Rule: the policies selecting this pod allow none of the failing step's packets."""
    policy, failing = case.policy, case.failing
    if policy is None or failing is None or policy.allowed:
        return None
    if any(device_of(sender, case.devices) for sender in icmp_senders(failing)):
        return None
    steps = DNS_STEPS if failing.step in DNS_STEPS else (failing.step,)
    evidence = [case.says(step) for step in steps]
    evidence.extend(policy.sentences)
    nodes = [
        p.source
        for p in case.peers
        if p.source_kind is SourceKind.NODE and is_ok(p.round.step(failing.step))
    ]
    if nodes:
        evidence.append(f"{failing.step.value} works from node {listing(nodes)}")
    facts = {
        failing.step.value: failure_facts(failing),
        "network_policy": policy.to_json(),
        "working_sources": nodes,
    }
    told = frozenset(steps) | {Step.NETWORK_POLICY}
    return Finding(
        Suspect.NETWORK_POLICY,
        "policy_denies",
        tuple(evidence),
        facts,
        None,
        told,
        policy.command,
    )
