"""Time the NetworkPolicy evaluator and the diagnosis with a policy view on a cluster-sized
snapshot. Not a test: the numbers are printed, never asserted.

    python benchmarks/netpol.py [--namespaces 100] [--pods 50] [--policies 5]

Each namespace gets `--pods` pods and `--policies` policies (a default deny, DNS to kube-dns,
443 out of the private ranges, a namespace selector, a named port); the source is a pod of
the first namespace. Prints the mean time per evaluate_egress (outside address, in-cluster
pod), per evaluate_dns, and per diagnose with and without the view.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from egresswatch.controller.diagnosis.rules import Context, Observation, diagnose
from egresswatch.evidence import TcpAttempt, TcpEvidence
from egresswatch.kube.netpol import (
    ContainerPort,
    Destination,
    NetworkPolicy,
    PodRef,
    PolicySnapshot,
    evaluate_dns,
    evaluate_egress,
)
from egresswatch.model import Endpoint, Reason, Role, RoundResult, SourceKind, Status, Step
from egresswatch.model import StepResult as Result


def policies_for(namespace: str, count: int) -> list[dict[str, Any]]:
    dns = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
        "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
    }
    rules: list[list[dict[str, Any]]] = [
        [],
        [{"to": [dns], "ports": [{"port": 53, "protocol": "UDP"}, {"port": 53}]}],
        [
            {
                "to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8"]}}],
                "ports": [{"port": 443}],
            }
        ],
        [{"to": [{"namespaceSelector": {"matchLabels": {"team": "payments"}}}]}],
        [{"ports": [{"port": "https"}]}],
    ]
    return [
        {
            "metadata": {"name": f"p{i}", "namespace": namespace},
            "spec": {
                "podSelector": {"matchLabels": {"app": f"app{i % 3}"}} if i else {},
                "policyTypes": ["Egress"],
                "egress": rules[i % len(rules)],
            },
        }
        for i in range(count)
    ]


def cluster(namespaces: int, pods: int, policies: int) -> PolicySnapshot:
    names = [f"ns{i}" for i in range(namespaces)]
    found = [NetworkPolicy.from_api(p) for ns in names for p in policies_for(ns, policies)]
    https = (ContainerPort("https", 8443),)
    members = [
        PodRef(ns, f"pod{j}", {"app": f"app{j % 3}"}, f"10.{244 + i // 250}.{i % 250}.{j}", https)
        for i, ns in enumerate(names)
        for j in range(pods)
    ]
    dns = PodRef("kube-system", "coredns-0", {"k8s-app": "kube-dns"}, "10.243.0.5")
    labels = {ns: {"team": "payments" if i % 2 else "shop"} for i, ns in enumerate(names)}
    return PolicySnapshot(tuple(found), labels, (dns, *members), ("CiliumNetworkPolicy ns0/x",))


def mean_us(action: Callable[[], object], repeat: int) -> float:
    start = time.perf_counter()
    for _ in range(repeat):
        action()
    return (time.perf_counter() - start) / repeat * 1e6


class View:
    def __init__(self, snapshot: PolicySnapshot, source: PodRef) -> None:
        self._snapshot, self._source = snapshot, source

    def snapshot(self) -> PolicySnapshot:
        return self._snapshot

    def pod(self, source: str) -> PodRef | None:
        return self._source


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--namespaces", type=int, default=100)
    parser.add_argument("--pods", type=int, default=50)
    parser.add_argument("--policies", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=2000)
    args = parser.parse_args()
    snapshot = cluster(args.namespaces, args.pods, args.policies)
    source = snapshot.pods[1]
    inside = replace(snapshot.pods[-1])
    outside = Destination("20.70.246.20", 443)
    to_pod = Destination(inside.ip or "", 8443)
    endpoint = Endpoint.parse("https://microsoft.com/")
    attempt = TcpAttempt("20.70.246.20", "conn_timeout", 5000.0)
    evidence = TcpEvidence(None, 443, "dns_cluster", (attempt,))
    tcp = Result(Step.TCP_CONNECT, Status.FAIL, Reason.CONN_TIMEOUT, 5.0, "", evidence)
    round_ = RoundResult("microsoft", "pod-a", datetime.now(UTC), (tcp,))
    this = Observation("pod-a", SourceKind.POD, "microsoft", Role.ENDPOINT, endpoint, round_)
    plain, viewed = Context(), Context(policies=View(snapshot, source))
    print(
        f"{len(snapshot.policies)} policies, {len(snapshot.pods)} pods, "
        f"{args.namespaces} namespaces"
    )
    rows = [
        ("evaluate_egress, outside address", lambda: evaluate_egress(snapshot, source, outside)),
        (
            "evaluate_egress, in-cluster pod (named port)",
            lambda: evaluate_egress(snapshot, source, to_pod),
        ),
        ("evaluate_dns (UDP and TCP)", lambda: evaluate_dns(snapshot, source)),
        ("diagnose without a view", lambda: diagnose(this, controls=(), peers=(), context=plain)),
        ("diagnose with the view", lambda: diagnose(this, controls=(), peers=(), context=viewed)),
    ]
    for name, action in rows:
        print(f"{name}: {mean_us(action, args.repeat):.1f} µs")


if __name__ == "__main__":
    main()
