"""The `network_policy` step in the diagnosis: the real `diagnose`, given a policy view built
from tests/fixtures/kube/networkpolicies/ (objects as an AKS API server serves them).

The view is a seam we own (`kube.netpol.PolicyView`): here a frozen snapshot, in the
controller the Kubernetes watch cache. Rounds are built with tests/test_diagnosis.py's builders.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from egresswatch.controller.detection.pipeline import Pipeline
from egresswatch.controller.diagnosis.rules import Context, Observation, diagnose
from egresswatch.evidence import DnsEvidence, DnsTry
from egresswatch.kube.netpol import PodRef, PolicySnapshot
from egresswatch.metrics import Metrics
from egresswatch.model import Reason, SourceKind, Step, StepResult, Suspect, Verdict
from egresswatch.settings import settings_from_dict
from egresswatch.storage import History, make_engine
from tests.support.kube_fixtures import pod, snapshot
from tests.test_diagnosis import (
    CONTEXT,
    DEVICES,
    FIREWALL,
    IP,
    NC,
    PROXY_URL,
    T0,
    UPSTREAM,
    _check_shape,
    _random_observation,
    dns,
    fail,
    obs,
    rnd,
    tcp,
)

AGENT_POD = pod(snapshot(), "egresswatch-agent")
SOURCE = "pod-a"  # the agent's source name, as its rounds carry it
DESCRIBE = "kubectl describe networkpolicy -n shop"


@dataclass(frozen=True)
class View:
    """A PolicyView over a fixed snapshot: the source `pod-a` is the agent's pod."""

    policies: PolicySnapshot
    pods: dict[str, PodRef] = field(default_factory=lambda: {SOURCE: AGENT_POD})

    def snapshot(self) -> PolicySnapshot:
        return self.policies

    def pod(self, source: str) -> PodRef | None:
        return self.pods.get(source)


def context(*files: str) -> Context:
    return replace(CONTEXT, policies=View(snapshot(*files)))


DENY = context("default-deny-egress")
DENY_BUT_DNS = context("default-deny-egress", "allow-dns")
HTTPS_OUT = context("default-deny-egress", "allow-dns", "allow-https-out")
HTTPS_OUT_AND_CILIUM = context("default-deny-egress", "allow-dns", "allow-https-out", "cilium-deny")
NO_POLICY = context()

DNS_SILENT = rnd(
    dns(Step.DNS_CLUSTER, Reason.DNS_TIMEOUT), dns(Step.DNS_UPSTREAM, Reason.DNS_TIMEOUT)
)
TIMED_OUT = rnd(tcp(Reason.CONN_TIMEOUT), blocked=True)
NODE_OK = obs(rnd(), source="aks-nodepool1-12345678-vmss000000", kind=SourceKind.NODE)


@dataclass(frozen=True)
class Case:
    name: str
    round_steps: tuple[StepResult, ...]
    context: Context
    suspect: Suspect
    rule: str
    command: str | None
    says: tuple[str, ...] = ()
    peers: tuple[Observation, ...] = ()
    kind: SourceKind = SourceKind.POD


TCP_STEPS = (tcp(Reason.CONN_TIMEOUT),)
CASES = [
    Case(
        "trap: a default deny that forgets DNS: dns_cluster times out, no node to compare with",
        DNS_SILENT.steps,
        DENY,
        Suspect.NETWORK_POLICY,
        "policy_denies",
        f"{DESCRIBE} default-deny-egress",
        (
            "network_policy: shop/default-deny-egress denies all egress from "
            "shop/egresswatch-agent-6c9f7d8b5d-x2lkq",
            "cluster DNS 10.0.0.10 did not answer",
        ),
    ),
    Case(
        "DNS allowed to kube-dns, the endpoint not: tcp_connect denied, both policies named",
        TCP_STEPS,
        DENY_BUT_DNS,
        Suspect.NETWORK_POLICY,
        "policy_denies",
        f"{DESCRIBE} default-deny-egress allow-dns",
        (
            "network_policy: shop/default-deny-egress, shop/allow-dns select "
            f"shop/egresswatch-agent-6c9f7d8b5d-x2lkq and no egress rule allows {IP}:443/TCP",
        ),
    ),
    Case(
        "the upstream asked directly where only kube-dns is allowed: dns_upstream denied",
        (dns(Step.DNS_UPSTREAM, Reason.DNS_TIMEOUT),),
        DENY_BUT_DNS,
        Suspect.NETWORK_POLICY,
        "policy_denies",
        f"{DESCRIBE} default-deny-egress allow-dns",
        (f"no egress rule allows {UPSTREAM}:53/UDP",),
    ),
    Case(
        "policies that deny win over a node that works, and say so",
        TCP_STEPS,
        DENY_BUT_DNS,
        Suspect.NETWORK_POLICY,
        "policy_denies",
        f"{DESCRIBE} default-deny-egress allow-dns",
        ("tcp_connect works from node aks-nodepool1-12345678-vmss000000",),
        peers=(NODE_OK,),
    ),
    Case(
        "a policy that forbids the proxy's address: network_policy, not the proxy",
        (tcp(Reason.CONN_TIMEOUT, address="10.1.1.1", port=3128, ip_source="proxy"),),
        replace(HTTPS_OUT, proxy=PROXY_URL),
        Suspect.NETWORK_POLICY,
        "policy_denies",
        f"{DESCRIBE} default-deny-egress allow-dns allow-https-out",
        ("no egress rule allows 10.1.1.1:3128/TCP",),
    ),
    Case(
        "denied, with a policy kind not evaluated: listed",
        DNS_SILENT.steps,
        context("default-deny-egress", "cilium-deny"),
        Suspect.NETWORK_POLICY,
        "policy_denies",
        f"{DESCRIBE} default-deny-egress",
        ("present and not evaluated: CiliumNetworkPolicy shop/deny-egress",),
    ),
    Case(
        "policies allow it: the step is ruled out and the shape decides",
        TCP_STEPS,
        HTTPS_OUT,
        Suspect.NSG_OR_ROUTE,
        "silent_drop",
        NC,
        (
            f"network_policy ruled out: shop/allow-https-out allows shop/egresswatch-agent-"
            f"6c9f7d8b5d-x2lkq to reach {IP}:443/TCP",
        ),
    ),
    Case(
        "no policy selects the pod: ruled out, the implicit allow said",
        TCP_STEPS,
        NO_POLICY,
        Suspect.NSG_OR_ROUTE,
        "silent_drop",
        NC,
        ("network_policy ruled out: no NetworkPolicy selects shop/egresswatch-agent-",),
    ),
    Case(
        "pod fails, node works, the policies allow it: look at the CNI",
        TCP_STEPS,
        HTTPS_OUT,
        Suspect.SOURCE_LOCAL,
        "pod_fails_policies_allow",
        NC,
        ("the policies allow it (shop/allow-https-out allows", "look at the CNI or something else"),
        peers=(NODE_OK,),
    ),
    Case(
        "pod fails, node works, allowed but a Cilium policy not evaluated: still network_policy",
        TCP_STEPS,
        HTTPS_OUT_AND_CILIUM,
        Suspect.NETWORK_POLICY,
        "pod_fails_node_works",
        NC,
        (
            "the NetworkPolicies allow it: shop/allow-https-out allows",
            "present and not evaluated: CiliumNetworkPolicy shop/deny-egress: look at them too",
        ),
        peers=(NODE_OK,),
    ),
    Case(
        "an egress device answered the connect: the packets left the pod, the device speaks",
        (tcp(Reason.FIREWALL_DENIED, icmp_from=FIREWALL),),
        DENY_BUT_DNS,
        Suspect.FIREWALL,
        "egress_device_stops_it",
        NC,
        ("network_policy: shop/default-deny-egress, shop/allow-dns select",),
    ),
    Case(
        "a resolver's answer is no policy's doing: not judged",
        (dns(Step.DNS_CLUSTER, Reason.NXDOMAIN),),
        DENY,
        Suspect.CLUSTER_DNS,
        "cluster_name_absent",
        "nslookup microsoft.com",
    ),
    Case(
        "a node source: policies select pods, not judged",
        TCP_STEPS,
        DENY,
        Suspect.NSG_OR_ROUTE,
        "silent_drop",
        NC,
        kind=SourceKind.NODE,
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_network_policy_step(case: Case) -> None:
    this = obs(rnd(*case.round_steps, blocked=True), source=SOURCE, kind=case.kind)
    verdict = diagnose(this, controls=(), peers=case.peers, context=case.context)
    assert (verdict.suspect, verdict.facts["rule"]) == (case.suspect, case.rule), verdict.evidence
    assert verdict.next_command == case.command
    text = " | ".join(verdict.evidence)
    for expected in case.says:
        assert expected in text, text
    judged = "network_policy" in verdict.facts
    assert judged == (case.kind is SourceKind.POD and case.rule != "cluster_name_absent")
    if judged:
        facts = verdict.facts["network_policy"]
        assert facts["pod"] == AGENT_POD.key
        assert facts["not_evaluated"] == list(case.context.policies.snapshot().not_evaluated)  # type: ignore[union-attr]
    json.dumps(verdict.facts)


def test_the_facts_name_the_policies_the_destination_and_the_verdict() -> None:
    this = obs(rnd(*DNS_SILENT.steps, blocked=True), source=SOURCE)
    verdict = diagnose(this, controls=(), peers=(), context=DENY_BUT_DNS)
    # DNS to kube-dns is allowed: dns_cluster's silence is not the policies' doing
    assert verdict.facts["network_policy"] == {
        "step": "dns_cluster",
        "pod": AGENT_POD.key,
        "destination": "kube-dns (10.0.0.10:53/UDP)",
        "allowed": True,
        "selecting": ["shop/default-deny-egress", "shop/allow-dns"],
        "allowing": ["shop/allow-dns"],
        "why": f"shop/allow-dns allows {AGENT_POD.key} to reach 10.244.0.5:53/UDP "
        "(pod kube-system/coredns-789789675-2xk9p)",
        "not_evaluated": [],
    }
    assert verdict.facts["network_policy_dns_upstream"]["allowed"] is False


@pytest.mark.parametrize(
    ("cluster", "suspect", "rule"),
    [
        (Reason.DNS_TIMEOUT, Suspect.CLUSTER_DNS, "cluster_fails_no_upstream"),
        (Reason.NXDOMAIN, Suspect.NAME_NOT_FOUND, "name_absent_only_resolver"),
    ],
    ids=["cluster silent: cluster DNS", "cluster NXDOMAIN: the only answer"],
)
def test_dns_to_kube_dns_only_the_upstreams_silence_says_nothing(
    cluster: Reason, suspect: Suspect, rule: str
) -> None:
    """The common "DNS to kube-dns only" policy: the pod may not ask the upstream directly, so
    dns_upstream's silence is the policy's, not the upstream's (without the view: upstream_dns)."""
    steps = (dns(Step.DNS_CLUSTER, cluster), dns(Step.DNS_UPSTREAM, Reason.DNS_TIMEOUT))
    this = obs(rnd(*steps, blocked=True), source=SOURCE)
    verdict = diagnose(this, controls=(), peers=(), context=DENY_BUT_DNS)
    assert (verdict.suspect, verdict.facts["rule"]) == (suspect, rule), verdict.evidence
    assert (
        "dns_upstream says nothing of the upstream here: network_policy: "
        "shop/default-deny-egress, shop/allow-dns select shop/egresswatch-agent-6c9f7d8b5d-x2lkq "
        f"and no egress rule allows {UPSTREAM}:53/UDP"
    ) in verdict.evidence
    without = diagnose(this, controls=(), peers=(), context=CONTEXT)
    assert without.suspect is Suspect.UPSTREAM_DNS


def test_dns_over_tcp_judged_when_the_probe_asked_over_tcp() -> None:
    # a truncated answer retried over TCP: a policy that allows 53/UDP only denies the retry
    dns_udp_only = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "allow-dns-udp", "namespace": "shop"},
        "spec": {
            "podSelector": {},
            "policyTypes": ["Egress"],
            "egress": [{"ports": [{"port": 53, "protocol": "UDP"}]}],
        },
    }
    udp_only = View(snapshot("default-deny-egress", extra=[dns_udp_only]))
    tried = (
        DnsTry("microsoft.com.", "A", "10.0.0.10", "NOERROR", 1.0, "udp", truncated=True),
        DnsTry("microsoft.com.", "A", "10.0.0.10", "TIMEOUT", 5000.0, "tcp"),
    )
    evidence = DnsEvidence(resolver="10.0.0.10", candidates=("microsoft.com.",), tried=tried)
    this = obs(rnd(fail(Step.DNS_CLUSTER, Reason.DNS_TIMEOUT, evidence)), source=SOURCE)
    verdict = diagnose(this, controls=(), peers=(), context=replace(CONTEXT, policies=udp_only))
    assert (verdict.suspect, verdict.facts["rule"]) == (Suspect.NETWORK_POLICY, "policy_denies")
    assert verdict.facts["network_policy"]["destination"] == "kube-dns (10.0.0.10:53/TCP)"


def test_a_pod_the_view_does_not_know_is_not_judged() -> None:
    unknown = replace(CONTEXT, policies=View(snapshot("default-deny-egress"), pods={}))
    this = obs(rnd(*TCP_STEPS, blocked=True), source=SOURCE)
    verdict = diagnose(this, controls=(), peers=(), context=unknown)
    assert verdict.suspect is Suspect.NSG_OR_ROUTE and "network_policy" not in verdict.facts


def test_without_a_view_nothing_changes() -> None:
    this = obs(DNS_SILENT, source=SOURCE)
    with_view = diagnose(this, controls=(), peers=(), context=NO_POLICY)
    without = diagnose(this, controls=(), peers=(), context=CONTEXT)
    assert without.suspect is with_view.suspect is Suspect.UPSTREAM_DNS
    assert "network_policy" not in without.facts
    assert with_view.evidence[: len(without.evidence)] == without.evidence


def test_never_raises_with_a_view() -> None:
    rng = random.Random(20260305)
    contexts = [DENY, HTTPS_OUT_AND_CILIUM, NO_POLICY, replace(DENY, egress_devices=DEVICES)]
    for _ in range(1500):
        this = _random_observation(rng, SOURCE)
        peers = [_random_observation(rng, f"peer-{i}") for i in range(rng.randint(0, 2))]
        verdict: Verdict = diagnose(this, controls=(), peers=peers, context=rng.choice(contexts))
        _check_shape(verdict, this)


def test_the_pipeline_hands_its_policy_view_to_the_diagnosis() -> None:
    """The controller's seam: `Pipeline(policies=view)`; the watch cache will be the view."""
    settings = settings_from_dict(
        {"targets": [{"name": "microsoft", "url": "https://microsoft.com/"}]}
    )
    judge = Pipeline(
        settings=lambda: settings,
        history=History(make_engine("sqlite+aiosqlite:///:memory:")),  # never reached
        metrics=Metrics(CollectorRegistry(), version="test"),
        clock=lambda: T0 + timedelta(hours=1),
        policies=View(snapshot("default-deny-egress")),
    )
    judge.set_source_kind(SOURCE, SourceKind.POD)
    judge.observe(
        [
            replace(DNS_SILENT, source=SOURCE, started_at=T0 + timedelta(seconds=30 * i))
            for i in range(3)
        ]
    )
    verdict = judge.verdict_for("microsoft", (SOURCE,))
    assert (verdict.suspect, verdict.facts["rule"]) == (Suspect.NETWORK_POLICY, "policy_denies")


def test_the_rules_are_documented() -> None:
    doc = (Path(__file__).parent.parent / "docs" / "diagnosis.md").read_text()
    for rule in {case.rule for case in CASES} | {"policy_denies", "pod_fails_policies_allow"}:
        assert f"`{rule}`" in doc, rule
