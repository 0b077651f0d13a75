"""The PolicyView over the discovery's caches (kube/policy_view.py): what the snapshot holds,
when it is rebuilt, and which pod stands for a source. The caches are filled by hand (the
seam is ours: `WatchedCluster`); the whole path runs in tests/test_kube_changes.py."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from egresswatch.kube.policy_view import ClusterPolicies
from egresswatch.kube.sources import ExpectedSource, PodEvidence
from egresswatch.kube.views import NodeView, PodView, Workload
from egresswatch.model import SourceKind

NODE = "aks-nodepool1-12345678-vmss000000"
DESIGNATED = f"payments/egresswatch-probe@{NODE}"


@dataclass
class Cache:
    cache: dict[str, Any] = field(default_factory=dict)


def agent_pod(name: str, namespace: str = "payments") -> PodView:
    owner = Workload(namespace, "Deployment", "egresswatch-probe")
    labels = {"app.kubernetes.io/name": "egresswatch"}
    return PodView(namespace, name, NODE, "10.244.0.21", "Running", False, owner, labels)


def policy(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "payments"}, "spec": spec}


@dataclass
class Cluster:
    version: int = 1
    policies: list[Cache] = field(default_factory=lambda: [Cache()])
    namespaces: Cache = field(default_factory=Cache)
    pods: list[Cache] = field(default_factory=lambda: [Cache()])
    dns_pods: Cache = field(default_factory=Cache)
    not_evaluated: tuple[str, ...] = ()
    designated: dict[str, ExpectedSource] = field(default_factory=dict)

    def expected(self) -> Mapping[str, ExpectedSource]:
        return self.designated


def test_the_snapshot_holds_the_caches_and_is_rebuilt_only_after_a_change() -> None:
    cluster = Cluster(not_evaluated=("CiliumNetworkPolicy.cilium.io payments/deny-egress",))
    cluster.policies[0].cache["payments/deny"] = policy(
        "deny", {"podSelector": {}, "policyTypes": ["Egress"]}
    )
    cluster.policies[0].cache["payments/broken"] = policy("broken", {"policyTypes": ["Egress"]})
    cluster.namespaces.cache["payments"] = NodeView("payments", {"team": "pay"})
    cluster.pods[0].cache["payments/a"] = agent_pod("a")
    view = ClusterPolicies(cluster)  # type: ignore[arg-type]
    snapshot = view.snapshot()
    assert [p.key for p in snapshot.policies] == ["payments/deny"]
    assert snapshot.not_evaluated[0] == "CiliumNetworkPolicy.cilium.io payments/deny-egress"
    assert snapshot.not_evaluated[1].startswith("NetworkPolicy payments/broken (unreadable:")
    assert snapshot.namespace_labels("payments")["team"] == "pay"
    assert [p.key for p in snapshot.pods] == ["payments/a"]
    cluster.pods[0].cache["payments/b"] = agent_pod("b")
    assert view.snapshot() is snapshot  # no event counted: the same snapshot
    cluster.version += 1
    assert [p.key for p in view.snapshot().pods] == ["payments/a", "payments/b"]


def test_the_pod_of_a_source() -> None:
    cluster = Cluster()
    cluster.pods[0].cache["payments/egresswatch-probe-x"] = agent_pod("egresswatch-probe-x")
    cluster.pods[0].cache["shop/probe-0"] = agent_pod("probe-0", "shop")
    workload = Workload("payments", "Deployment", "egresswatch-probe")
    cluster.designated = {
        DESIGNATED: ExpectedSource(
            DESIGNATED, SourceKind.POD, NODE, workload, (PodEvidence("egresswatch-probe-x", None),)
        ),
        NODE: ExpectedSource(NODE, SourceKind.NODE, NODE),
    }
    view = ClusterPolicies(cluster)  # type: ignore[arg-type]
    found = view.pod(DESIGNATED)
    assert found is not None and found.key == "payments/egresswatch-probe-x"
    assert found.labels == {"app.kubernetes.io/name": "egresswatch"}
    assert view.pod(NODE) is None
    named = view.pod("shop/probe-0")  # an agent started with --source NAMESPACE/POD
    assert named is not None and named.key == "shop/probe-0"
    assert view.pod("shop/unknown") is None
