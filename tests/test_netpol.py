"""The NetworkPolicy evaluator, table-driven: one case per rule of the Kubernetes documentation
("Network Policies" and the networking.k8s.io/v1 API reference), the traps included.

Each case id quotes the rule it checks. The cluster (namespaces, CoreDNS, the agent's pod, a
payments API with a named port) is tests/fixtures/kube/networkpolicies/cluster.yaml, as an AKS
API server serves it; each case adds its policies in the API's JSON shape.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, replace
from typing import Any

import pytest

from egresswatch.kube.netpol import (
    Destination,
    EgressDecision,
    NetworkPolicy,
    PolicySnapshot,
    SpecError,
    evaluate_dns,
    evaluate_egress,
    snapshot_from_api,
)
from tests.support.kube_fixtures import objects, pod, snapshot
from tests.support.purity import io_imported

CLUSTER = snapshot()
AGENT = pod(CLUSTER, "egresswatch-agent")
PAYMENTS = pod(CLUSTER, "payments-api")
OUTSIDE = Destination("20.70.246.20", 443)  # microsoft.com
PAYMENTS_HTTPS = Destination(PAYMENTS.ip or "", 8443)


def policy(name: str, spec: dict[str, Any], namespace: str = "shop") -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def egress_only(name: str, *rules: dict[str, Any], selector: Any = None) -> dict[str, Any]:
    """A policy selecting `selector` (every pod of shop by default) for Egress with `rules`."""
    spec = {"podSelector": selector or {}, "policyTypes": ["Egress"], "egress": list(rules)}
    return policy(name, spec)


DENY_ALL = egress_only("deny-all")
AGENT_LABELS = {"matchLabels": {"app.kubernetes.io/name": "egresswatch-agent"}}


def with_policies(*objs: dict[str, Any]) -> PolicySnapshot:
    return replace(CLUSTER, policies=tuple(NetworkPolicy.from_api(o) for o in objs))


@dataclass(frozen=True)
class Case:
    rule: str  # the documentation's rule, as the test id
    policies: tuple[dict[str, Any], ...]
    destination: Destination
    allowed: bool
    allowing: tuple[str, ...] = ()
    why: str = ""  # a substring of the decision's sentence


def rule_to(*peers: dict[str, Any], ports: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    found: dict[str, Any] = {"to": list(peers)}
    if ports is not None:
        found["ports"] = ports
    return found


def block(cidr: str, *excepted: str) -> dict[str, Any]:
    found: dict[str, Any] = {"cidr": cidr}
    if excepted:
        found["except"] = list(excepted)
    return {"ipBlock": found}


PAYMENTS_NS = {"namespaceSelector": {"matchLabels": {"team": "payments"}}}
PAYMENTS_PODS = {"podSelector": {"matchLabels": {"app": "payments-api"}}}


def selected_by(expression: dict[str, Any]) -> dict[str, Any]:
    """A deny-all whose podSelector is one matchExpressions entry."""
    return egress_only("deny-selected", selector={"matchExpressions": [expression]})


CASES = [
    # --- isolation: which pods a policy selects
    Case(
        "pods are non-isolated for egress when no policy selects them",
        (),
        OUTSIDE,
        True,
        why="no NetworkPolicy selects shop/egresswatch-agent",
    ),
    Case(
        "a policy selects pods in its own namespace only",
        (policy("deny-all", {"podSelector": {}, "policyTypes": ["Egress"]}, "payments"),),
        OUTSIDE,
        True,
    ),
    Case(
        "a podSelector that does not match leaves the pod non-isolated",
        (egress_only("deny-web", selector={"matchLabels": {"app": "web"}}),),
        OUTSIDE,
        True,
    ),
    Case(
        "trap: an empty podSelector {} selects every pod in the namespace",
        (DENY_ALL,),
        OUTSIDE,
        False,
        why="shop/deny-all denies all egress",
    ),
    Case(
        "policyTypes [Egress] with no egress rules denies all egress",
        (DENY_ALL,),
        Destination(PAYMENTS.ip or "", 8443),
        False,
    ),
    Case(
        "policyTypes [Ingress] only: egress rules are ignored, egress is not restricted",
        (
            policy(
                "ingress-only",
                {
                    "podSelector": {},
                    "policyTypes": ["Ingress"],
                    "egress": [rule_to(block("10.0.0.0/8"))],
                },
            ),
        ),
        OUTSIDE,
        True,
    ),
    Case(
        "policyTypes missing with only ingress rules defaults to Ingress: egress open",
        (policy("ingress", {"podSelector": {}, "ingress": [{}]}),),
        OUTSIDE,
        True,
    ),
    Case(
        "trap: policyTypes missing with only egress rules implies Egress",
        (policy("egress-implied", {"podSelector": {}, "egress": [rule_to(block("10.1.0.0/16"))]}),),
        OUTSIDE,
        False,
        why="no egress rule allows 20.70.246.20:443/TCP",
    ),
    Case(
        "policyTypes missing with egress: [] defaults to Ingress only: egress open",
        (policy("empty-egress", {"podSelector": {}, "egress": []}),),
        OUTSIDE,
        True,
    ),
    # --- rules
    Case(
        "egress: [{}] allows every destination",
        (egress_only("allow-all", {}),),
        OUTSIDE,
        True,
        ("shop/allow-all",),
    ),
    Case(
        "a rule without `to` matches every destination, its ports still apply",
        (egress_only("https-anywhere", {"ports": [{"port": 443}]}),),
        OUTSIDE,
        True,
        ("shop/https-anywhere",),
    ),
    Case(
        "a rule without `to`: another port is not allowed",
        (egress_only("https-anywhere", {"ports": [{"port": 443}]}),),
        Destination("20.70.246.20", 80),
        False,
    ),
    Case(
        "a rule without `ports` matches every port",
        (egress_only("to-azure", rule_to(block("20.70.0.0/16"))),),
        Destination("20.70.246.20", 8080),
        True,
        ("shop/to-azure",),
    ),
    # --- ipBlock
    Case(
        "ipBlock: the cidr holds the destination",
        (egress_only("to-ms", rule_to(block("20.70.246.0/24"))),),
        OUTSIDE,
        True,
    ),
    Case(
        "trap: ipBlock except carves its ranges out of the cidr",
        (egress_only("public", rule_to(block("0.0.0.0/0", "10.0.0.0/8"))),),
        Destination("10.1.2.3", 443),
        False,
    ),
    Case(
        "ipBlock except: addresses outside the except stay allowed",
        (egress_only("public", rule_to(block("0.0.0.0/0", "10.0.0.0/8"))),),
        OUTSIDE,
        True,
    ),
    Case(
        "ipBlock: an IPv4 cidr never holds an IPv6 destination",
        (egress_only("v4", rule_to(block("0.0.0.0/0"))),),
        Destination("2603:1030::1", 443),
        False,
    ),
    Case(
        "ipBlock and pod IPs are implementation-defined: here an ipBlock holds pod IPs too",
        (egress_only("pod-cidr", rule_to(block("10.244.0.0/16"))),),
        PAYMENTS_HTTPS,
        True,
    ),
    # --- selectors for in-cluster destinations
    Case(
        "podSelector alone selects pods in the policy's own namespace",
        (egress_only("to-payments-pods", rule_to(PAYMENTS_PODS)),),
        PAYMENTS_HTTPS,
        False,
    ),
    Case(
        "namespaceSelector alone selects every pod of the selected namespaces",
        (egress_only("to-payments", rule_to(PAYMENTS_NS)),),
        PAYMENTS_HTTPS,
        True,
    ),
    Case(
        "namespaceSelector and podSelector in one peer: both must match (AND)",
        (
            egress_only(
                "and", rule_to({**PAYMENTS_NS, "podSelector": {"matchLabels": {"app": "x"}}})
            ),
        ),
        PAYMENTS_HTTPS,
        False,
    ),
    Case(
        "namespaceSelector and podSelector in one peer: both match",
        (egress_only("and", rule_to({**PAYMENTS_NS, **PAYMENTS_PODS})),),
        PAYMENTS_HTTPS,
        True,
    ),
    Case(
        "separate peers in `to`: either may match (OR)",
        (
            egress_only(
                "or", rule_to({"namespaceSelector": {"matchLabels": {"team": "x"}}}, PAYMENTS_NS)
            ),
        ),
        PAYMENTS_HTTPS,
        True,
    ),
    Case(
        "every namespace carries kubernetes.io/metadata.name",
        (
            egress_only(
                "by-name",
                rule_to(
                    {
                        "namespaceSelector": {
                            "matchLabels": {"kubernetes.io/metadata.name": "payments"}
                        }
                    }
                ),
            ),
        ),
        PAYMENTS_HTTPS,
        True,
    ),
    Case(
        "namespaceSelector {} selects every namespace",
        (egress_only("cluster", rule_to({"namespaceSelector": {}})),),
        PAYMENTS_HTTPS,
        True,
    ),
    Case(
        "trap: podSelector {} in a peer is every pod of the policy's namespace, not the cluster",
        (egress_only("own-namespace", rule_to({"podSelector": {}})),),
        PAYMENTS_HTTPS,
        False,
    ),
    Case(
        "selectors pick pods: an address outside the cluster matches none",
        (egress_only("cluster", rule_to({"namespaceSelector": {}})),),
        OUTSIDE,
        False,
    ),
    # --- label selector operators (on the policy's podSelector)
    Case(
        "matchExpressions In: the label has one of the values",
        (
            selected_by(
                {
                    "key": "app.kubernetes.io/name",
                    "operator": "In",
                    "values": ["egresswatch-agent", "x"],
                }
            ),
        ),
        OUTSIDE,
        False,
    ),
    Case(
        "matchExpressions NotIn: the pod's value is listed, so it is not selected",
        (
            selected_by(
                {
                    "key": "app.kubernetes.io/name",
                    "operator": "NotIn",
                    "values": ["egresswatch-agent"],
                }
            ),
        ),
        OUTSIDE,
        True,
    ),
    Case(
        "matchExpressions NotIn selects pods without the label",
        (selected_by({"key": "tier", "operator": "NotIn", "values": ["db"]}),),
        OUTSIDE,
        False,
    ),
    Case(
        "matchExpressions Exists: the key is present",
        (selected_by({"key": "pod-template-hash", "operator": "Exists"}),),
        OUTSIDE,
        False,
    ),
    Case(
        "matchExpressions DoesNotExist: the key is present, so it is not selected",
        (selected_by({"key": "pod-template-hash", "operator": "DoesNotExist"}),),
        OUTSIDE,
        True,
    ),
    Case(
        "matchLabels and matchExpressions are ANDed",
        (
            egress_only(
                "both",
                selector={
                    **AGENT_LABELS,
                    "matchExpressions": [{"key": "tier", "operator": "Exists"}],
                },
            ),
        ),
        OUTSIDE,
        True,
    ),
    # --- ports
    Case(
        "a port's protocol defaults to TCP: UDP is not allowed",
        (egress_only("dns-tcp", {"ports": [{"port": 53}]}),),
        Destination("10.0.0.10", 53, "UDP"),
        False,
    ),
    Case(
        "a port's protocol defaults to TCP",
        (egress_only("dns-tcp", {"ports": [{"port": 53}]}),),
        Destination("10.0.0.10", 53),
        True,
    ),
    Case(
        "a UDP port",
        (egress_only("ntp", {"ports": [{"port": 123, "protocol": "UDP"}]}),),
        Destination("20.101.57.9", 123, "UDP"),
        True,
    ),
    Case(
        "SCTP is a protocol of its own",
        (egress_only("diameter", {"ports": [{"port": 3868, "protocol": "SCTP"}]}),),
        Destination("20.1.1.1", 3868, "SCTP"),
        True,
    ),
    Case(
        "SCTP: the same port over TCP is not allowed",
        (egress_only("diameter", {"ports": [{"port": 3868, "protocol": "SCTP"}]}),),
        Destination("20.1.1.1", 3868),
        False,
    ),
    Case(
        "a port without a number matches every port of its protocol",
        (egress_only("udp", {"ports": [{"protocol": "UDP"}]}),),
        Destination("20.1.1.1", 4500, "UDP"),
        True,
    ),
    Case(
        "endPort: port..endPort inclusive",
        (egress_only("range", {"ports": [{"port": 32000, "endPort": 32768}]}),),
        Destination("20.1.1.1", 32768),
        True,
    ),
    Case(
        "endPort: past the range is not allowed",
        (egress_only("range", {"ports": [{"port": 32000, "endPort": 32768}]}),),
        Destination("20.1.1.1", 32769),
        False,
    ),
    Case(
        "a named port matches a destination pod declaring it",
        (egress_only("named", {"ports": [{"port": "https"}]}),),
        PAYMENTS_HTTPS,
        True,
    ),
    Case(
        "a named port matches no address outside the cluster",
        (egress_only("named", {"ports": [{"port": "https"}]}),),
        Destination("20.1.1.1", 8443),
        False,
    ),
    Case(
        "a named port matches only the number the pod declares under that name",
        (egress_only("named", {"ports": [{"port": "https"}]}),),
        Destination(PAYMENTS.ip or "", 443),
        False,
    ),
    Case(
        "a named port matches only the protocol the pod declares",
        (egress_only("named", {"ports": [{"port": "https", "protocol": "UDP"}]}),),
        Destination(PAYMENTS.ip or "", 8443, "UDP"),
        False,
    ),
    # --- several policies
    Case(
        "policies are additive: one allowing is enough",
        (DENY_ALL, egress_only("https", {"ports": [{"port": 443}]})),
        OUTSIDE,
        True,
        ("shop/https",),
        "shop/https allows shop/egresswatch-agent",
    ),
    Case(
        "policies are additive: none allowing denies",
        (DENY_ALL, egress_only("https", {"ports": [{"port": 443}]})),
        Destination("20.70.246.20", 80),
        False,
        why="shop/deny-all, shop/https select",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.rule for c in CASES])
def test_rule(case: Case) -> None:
    decision = evaluate_egress(with_policies(*case.policies), AGENT, case.destination)
    assert decision.allowed is case.allowed, decision.why
    assert decision.allowing == (case.allowing or decision.allowing)
    assert case.why in decision.why
    assert decision.why.strip()
    if not case.allowed:
        assert decision.selecting and not decision.allowing


def test_selecting_names_every_policy_that_isolates_the_pod() -> None:
    found = with_policies(
        DENY_ALL,
        egress_only("https", {"ports": [{"port": 443}]}),
        policy("ingress", {"podSelector": {}, "ingress": [{}]}),
    )
    decision = evaluate_egress(found, AGENT, OUTSIDE)
    assert decision.selecting == ("shop/deny-all", "shop/https")  # not the Ingress-only one
    assert decision.allowing == ("shop/https",)


# --- the fixtures, as an AKS API server serves them ----------------------------------------


def test_the_fixture_cluster_reads_as_served() -> None:
    assert AGENT.ip == "10.244.0.23" and AGENT.labels["pod-template-hash"] == "6c9f7d8b5d"
    assert [(p.name, p.port, p.protocol) for p in PAYMENTS.ports] == [("https", 8443, "TCP")]
    assert CLUSTER.namespace_labels("payments")["team"] == "payments"
    assert CLUSTER.namespace_labels("never-seen") == {"kubernetes.io/metadata.name": "never-seen"}


@pytest.mark.parametrize(
    ("files", "destination", "allowed"),
    [
        (("default-deny-egress",), OUTSIDE, False),
        (("default-deny-egress", "allow-https-out"), OUTSIDE, True),
        (("default-deny-egress", "allow-https-out"), Destination("10.1.0.4", 443), False),
        (("default-deny-egress", "allow-https-out"), Destination("20.70.246.20", 80), False),
    ],
    ids=["default deny", "https out allowed", "private range excepted", "port 80 not listed"],
)
def test_fixture_policies(files: tuple[str, ...], destination: Destination, allowed: bool) -> None:
    assert evaluate_egress(snapshot(*files), AGENT, destination).allowed is allowed


# --- DNS to kube-dns -------------------------------------------------------------------------


def test_trap_a_default_deny_forgets_dns() -> None:
    decision = evaluate_dns(snapshot("default-deny-egress"), AGENT, resolver="10.0.0.10")
    assert not decision.allowed and decision.denied == ("UDP", "TCP")
    assert "shop/default-deny-egress denies all egress" in decision.decisions["UDP"].why


def test_dns_allowed_to_kube_dns_on_udp_and_tcp() -> None:
    decision = evaluate_dns(snapshot("default-deny-egress", "allow-dns"), AGENT)
    assert decision.allowed, decision.decisions
    assert decision.decisions["TCP"].allowing == ("shop/allow-dns",)


def test_dns_over_udp_only_leaves_tcp_denied() -> None:
    udp_only = egress_only("dns-udp", {"ports": [{"port": 53, "protocol": "UDP"}]})
    decision = evaluate_dns(with_policies(udp_only), AGENT)
    assert decision.denied == ("TCP",)  # truncated answers retried over TCP will fail


def test_dns_by_coredns_named_ports() -> None:
    named = egress_only(
        "dns-named",
        {"ports": [{"port": "dns", "protocol": "UDP"}, {"port": "dns-tcp", "protocol": "TCP"}]},
    )
    assert evaluate_dns(with_policies(named), AGENT).allowed


def test_dns_to_the_wrong_namespace_is_denied() -> None:
    wrong = egress_only(
        "dns-wrong", rule_to({"podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}})
    )
    decision = evaluate_dns(with_policies(wrong), AGENT)  # podSelector alone: shop's pods
    assert decision.denied == ("UDP", "TCP")


def test_dns_with_no_coredns_pod_known_judges_a_stand_in() -> None:
    bare = replace(snapshot("default-deny-egress", "allow-dns"), pods=(AGENT,))
    assert evaluate_dns(bare, AGENT, resolver="10.0.0.10").allowed
    by_ip = replace(
        bare, policies=(NetworkPolicy.from_api(egress_only("ip", rule_to(block("10.0.0.10/32")))),)
    )
    assert evaluate_dns(by_ip, AGENT, resolver="10.0.0.10", protocols=("UDP",)).allowed


# --- other policy kinds ----------------------------------------------------------------------


def test_other_policy_kinds_are_listed_not_evaluated() -> None:
    found = snapshot("cilium-deny")
    assert found.not_evaluated == ("CiliumNetworkPolicy shop/deny-egress",)
    decision = evaluate_egress(found, AGENT, OUTSIDE)
    assert decision.allowed and decision.not_evaluated == found.not_evaluated


def test_an_unreadable_policy_is_reported_and_listed() -> None:
    errors: list[SpecError] = []
    bad = policy("bad", {"podSelector": {}, "egress": [{"ports": [{"endPort": 90}]}]})
    found = snapshot_from_api([bad, DENY_ALL], on_error=errors.append)
    assert [e.path for e in errors] == ["NetworkPolicy shop/bad: spec.egress[0].ports[0].endPort"]
    assert found.not_evaluated[0].startswith("NetworkPolicy shop/bad (unreadable: needs a numeric")
    assert [p.key for p in found.policies] == ["shop/deny-all"]


# --- what the API server refuses, refused naming the field ---------------------------------

BAD = [
    (
        "trap: endPort without port",
        {"ports": [{"endPort": 90}]},
        "spec.egress[0].ports[0].endPort",
        "needs a numeric port",
    ),
    (
        "endPort with a named port",
        {"ports": [{"port": "https", "endPort": 90}]},
        "spec.egress[0].ports[0].endPort",
        "needs a numeric port",
    ),
    (
        "endPort below port",
        {"ports": [{"port": 100, "endPort": 90}]},
        "spec.egress[0].ports[0].endPort",
        "must be from port 100",
    ),
    (
        "an unknown protocol",
        {"ports": [{"port": 1, "protocol": "ICMP"}]},
        "spec.egress[0].ports[0].protocol",
        "'ICMP' is not one of",
    ),
    (
        "a port out of range",
        {"ports": [{"port": 70000}]},
        "spec.egress[0].ports[0].port",
        "70000 is not a port",
    ),
    (
        "an except outside the cidr",
        {"to": [block("10.0.0.0/8", "192.168.0.0/16")]},
        "spec.egress[0].to[0].ipBlock.except[0]",
        "is not inside the cidr",
    ),
    (
        "a cidr that does not parse",
        {"to": [block("10.0.0.0/33")]},
        "spec.egress[0].to[0].ipBlock.cidr",
        "is not a CIDR",
    ),
    (
        "ipBlock with a selector",
        {"to": [{**block("10.0.0.0/8"), "podSelector": {}}]},
        "spec.egress[0].to[0]",
        "ipBlock cannot be combined",
    ),
    ("an empty peer", {"to": [{}]}, "spec.egress[0].to[0]", "needs ipBlock"),
    (
        "an unknown operator",
        {
            "to": [
                {
                    "podSelector": {
                        "matchExpressions": [{"key": "a", "operator": "Equals", "values": ["b"]}]
                    }
                }
            ]
        },
        "spec.egress[0].to[0].podSelector.matchExpressions[0].operator",
        "'Equals' is not one of",
    ),
    (
        "In without values",
        {"to": [{"podSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]}}]},
        "spec.egress[0].to[0].podSelector.matchExpressions[0].values",
        "at least one value",
    ),
]


@pytest.mark.parametrize(("rule", "egress", "path", "problem"), BAD, ids=[b[0] for b in BAD])
def test_refused_naming_the_field(
    rule: str, egress: dict[str, Any], path: str, problem: str
) -> None:
    with pytest.raises(SpecError) as raised:
        NetworkPolicy.from_api(egress_only("bad", egress))
    assert raised.value.path == f"NetworkPolicy shop/bad: {path}", rule
    assert problem in raised.value.problem


def test_refused_policy_types_and_missing_pod_selector() -> None:
    with pytest.raises(SpecError, match=r"spec.policyTypes: \['Outbound'\]"):
        NetworkPolicy.from_api(policy("x", {"podSelector": {}, "policyTypes": ["Outbound"]}))
    with pytest.raises(SpecError, match=r"spec\.podSelector: required"):
        NetworkPolicy.from_api(policy("x", {"policyTypes": ["Egress"]}))


# --- properties: the union is additive -------------------------------------------------------

POOL = [
    DENY_ALL,
    egress_only("https", {"ports": [{"port": 443}]}),
    egress_only("public", rule_to(block("0.0.0.0/0", "10.0.0.0/8"))),
    egress_only("payments", rule_to(PAYMENTS_NS), selector=AGENT_LABELS),
    egress_only("named", {"ports": [{"port": "https"}]}),
    egress_only("other-pods", {}, selector={"matchLabels": {"app": "web"}}),
    policy("ingress", {"podSelector": {}, "ingress": [{}]}),
    policy("elsewhere", {"podSelector": {}, "policyTypes": ["Egress"]}, "payments"),
]
DESTINATIONS = [
    OUTSIDE,
    Destination("20.70.246.20", 80),
    Destination("10.1.0.4", 443),
    PAYMENTS_HTTPS,
    Destination(PAYMENTS.ip or "", 9090),
    Destination("10.0.0.10", 53, "UDP"),
]


def decide(objs: tuple[dict[str, Any], ...], destination: Destination) -> EgressDecision:
    return evaluate_egress(with_policies(*objs), AGENT, destination)


def test_union_is_additive_and_order_free() -> None:
    rng = random.Random(20260304)
    for _ in range(300):
        chosen = tuple(rng.sample(POOL, rng.randint(0, len(POOL))))
        destination = rng.choice(DESTINATIONS)
        together = decide(chosen, destination)
        alone = [decide((p,), destination) for p in chosen]
        assert set(together.selecting) == {k for d in alone for k in d.selecting}
        assert set(together.allowing) == {k for d in alone for k in d.allowing}
        assert together.allowed == (not together.selecting or bool(together.allowing))
        shuffled = decide(tuple(rng.sample(chosen, len(chosen))), destination)
        assert (shuffled.allowed, set(shuffled.allowing)) == (
            together.allowed,
            set(together.allowing),
        )


def test_once_isolated_adding_a_policy_never_takes_an_allowance_away() -> None:
    for chosen, extra in itertools.product(itertools.combinations(POOL, 2), POOL):
        for destination in DESTINATIONS:
            before = decide(chosen, destination)
            after = decide((*chosen, extra), destination)
            if before.selecting:
                assert set(before.allowing) <= set(after.allowing)
                assert after.allowed or not before.allowed
            else:
                # a pod nothing isolates is allowed; a policy can only restrict it to its rules
                assert before.allowed and set(after.allowing) <= {NetworkPolicy.from_api(extra).key}


def test_the_evaluator_imports_no_io_library() -> None:
    assert io_imported("egresswatch.kube.netpol", "egresswatch.controller.diagnosis.policies") == []


def test_fixture_objects_are_what_the_files_hold() -> None:
    kinds = [o["kind"] for o in objects("cluster")]
    assert kinds.count("Namespace") == 3 and kinds.count("Pod") == 4


def test_a_namespace_not_seen_yet_still_has_its_name_label() -> None:
    # the API server sets kubernetes.io/metadata.name on every namespace: a watch that has not
    # delivered the namespace yet must not make a by-name selector miss it
    by_name = egress_only(
        "by-name",
        rule_to(
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "payments"}}}
        ),
    )
    unseen = replace(with_policies(by_name), namespaces={})
    assert evaluate_egress(unseen, AGENT, PAYMENTS_HTTPS).allowed
