"""Change records from watch events (kube/changes.py), table-driven, and which changes concern
a source; the bounded recent log."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from egresswatch.kube.changes import (
    ChangeLog,
    ClusterChange,
    concerns,
    dns_config_change,
    dns_pod_change,
    node_change,
    policy_change,
)
from egresswatch.kube.views import NodeView, PodView, Workload

AT = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
NODE = "aks-nodepool1-12345678-vmss000000"
IMAGE = "kubernetes.azure.com/node-image-version"


def policy(egress: list[Any] | None = None, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"podSelector": {}, "policyTypes": ["Egress"], **spec}
    if egress is not None:
        body["egress"] = egress
    return {
        "metadata": {"name": "allow-https-out", "namespace": "payments", "resourceVersion": "7"},
        "spec": body,
    }


HTTPS = {"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}], "ports": [{"port": 443}]}


@pytest.mark.parametrize(
    ("old", "new", "summary"),
    [
        (None, policy([HTTPS]), "NetworkPolicy payments/allow-https-out created"),
        (policy([HTTPS]), None, "NetworkPolicy payments/allow-https-out deleted"),
        (
            policy([HTTPS]),
            policy([]),
            "NetworkPolicy payments/allow-https-out changed: spec.egress: 1 rule → 0 rules",
        ),
        (
            policy([HTTPS]),
            policy([{**HTTPS, "ports": [{"port": 8443}]}]),
            "NetworkPolicy payments/allow-https-out changed: spec.egress: rules changed",
        ),
        (
            policy([HTTPS]),
            policy([HTTPS], podSelector={"matchLabels": {"app": "x"}}),
            "NetworkPolicy payments/allow-https-out changed: "
            "spec.podSelector: {} → {'matchLabels': {'app': 'x'}}",
        ),
        (
            policy([HTTPS]),
            policy([HTTPS], policyTypes=["Egress", "Ingress"]),
            "NetworkPolicy payments/allow-https-out changed: "
            "spec.policyTypes: ['Egress'] → ['Egress', 'Ingress']",
        ),
        # metadata only (a label, a new resourceVersion): no change
        (policy([HTTPS]), {**policy([HTTPS]), "metadata": {"name": "allow-https-out"}}, None),
    ],
    ids=["created", "deleted", "rules-removed", "rule-changed", "selector", "types", "metadata"],
)
def test_network_policy_changes(old: Any, new: Any, summary: str | None) -> None:
    change = policy_change(old, new, AT)
    assert (change.summary if change else None) == summary


def node(**fields: Any) -> NodeView:
    base = NodeView(
        NODE,
        {IMAGE: "AKSUbuntu-2204gen2containerd-202507.21.0"},
        (("MemoryPressure", "False"), ("Ready", "True")),
        "v1.33.2",
    )
    return replace(base, **fields)


@pytest.mark.parametrize(
    ("old", "new", "summary"),
    [
        (None, node(), f"Node {NODE} added"),
        (node(), None, f"Node {NODE} removed"),
        (
            node(),
            node(conditions=(("MemoryPressure", "False"), ("Ready", "False"))),
            f"Node {NODE} changed: Ready True → False",
        ),
        (
            node(),
            node(conditions=(("MemoryPressure", "True"), ("Ready", "Unknown"))),
            f"Node {NODE} changed: MemoryPressure False → True; Ready True → Unknown",
        ),
        (node(), node(kubelet="v1.33.3"), f"Node {NODE} changed: kubelet v1.33.2 → v1.33.3"),
        (
            node(),
            node(labels={IMAGE: "AKSUbuntu-2204gen2containerd-202508.01.0"}),
            f"Node {NODE} changed: node image AKSUbuntu-2204gen2containerd-202507.21.0 → "
            "AKSUbuntu-2204gen2containerd-202508.01.0",
        ),
        # another label, or the same conditions (a heartbeat): no change
        (node(), node(labels={IMAGE: node().labels[IMAGE], "team": "a"}), None),
        (node(), node(), None),
    ],
    ids=["added", "removed", "not-ready", "pressure", "kubelet", "image", "label", "heartbeat"],
)
def test_node_changes(old: NodeView | None, new: NodeView | None, summary: str | None) -> None:
    change = node_change(old, new, AT)
    assert (change.summary if change else None) == summary


def dns_pod(name: str = "coredns-6f7b5c8d9c-x7k2p", restarts: int = 0) -> PodView:
    owner = Workload("kube-system", "Deployment", "coredns")
    return PodView("kube-system", name, NODE, "10.244.0.10", "Running", False, owner, {}, restarts)


@pytest.mark.parametrize(
    ("old", "new", "summary"),
    [
        (
            dns_pod(restarts=0),
            dns_pod(restarts=2),
            "Pod kube-system/coredns-6f7b5c8d9c-x7k2p restarted: restartCount 0 → 2",
        ),
        (
            None,
            dns_pod("coredns-6f7b5c8d9c-new01"),
            "Pod kube-system/coredns-6f7b5c8d9c-new01 created",
        ),
        (dns_pod(), None, "Pod kube-system/coredns-6f7b5c8d9c-x7k2p deleted"),
        (dns_pod(), replace(dns_pod(), ip="10.244.0.11"), None),
    ],
    ids=["restarted", "replacement", "deleted", "other"],
)
def test_coredns_pod_changes(old: PodView | None, new: PodView | None, summary: str | None) -> None:
    change = dns_pod_change(old, new, AT)
    assert (change.summary if change else None) == summary


def configmap(name: str, **data: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "kube-system"}, "data": data}


@pytest.mark.parametrize(
    ("old", "new", "summary"),
    [
        (
            configmap("coredns-custom"),
            configmap("coredns-custom", **{"corp.server": "corp:53 {}"}),
            "ConfigMap kube-system/coredns-custom changed: data.corp.server added",
        ),
        (
            configmap("coredns", Corefile=".:53 {}"),
            configmap("coredns", Corefile=".:53 { log }"),
            "ConfigMap kube-system/coredns changed: data.Corefile changed",
        ),
        (None, configmap("coredns-custom"), "ConfigMap kube-system/coredns-custom created"),
        (configmap("coredns", a="1"), configmap("coredns", a="1"), None),
        (configmap("kube-proxy", a="1"), configmap("kube-proxy", a="2"), None),
    ],
    ids=["custom-added", "corefile", "created", "same", "not-dns"],
)
def test_coredns_configmap_changes(old: Any, new: Any, summary: str | None) -> None:
    change = dns_config_change(old, new, AT)
    assert (change.summary if change else None) == summary


def change(kind: str, namespace: str | None, name: str, at: datetime = AT) -> ClusterChange:
    return ClusterChange(at, kind, namespace, name, "changed")


@pytest.mark.parametrize(
    ("found", "namespace", "node_name", "expected"),
    [
        (change("NetworkPolicy", "payments", "p"), "payments", NODE, True),
        (change("NetworkPolicy", "shop", "p"), "payments", NODE, False),
        (change("NetworkPolicy", "payments", "p"), None, NODE, False),  # a node source
        (change("Node", None, NODE), "payments", NODE, True),
        (change("Node", None, "other"), None, NODE, False),
        (change("Pod", "kube-system", "coredns-1"), None, NODE, True),
        (change("ConfigMap", "kube-system", "coredns"), "payments", None, True),
    ],
    ids=["own-namespace", "other-namespace", "node-source", "own-node", "other-node", "dns", "cm"],
)
def test_which_changes_concern_a_source(
    found: ClusterChange, namespace: str | None, node_name: str | None, expected: bool
) -> None:
    assert concerns(found, namespace=namespace, node=node_name) is expected


def test_the_recent_log_is_bounded_in_count_and_age() -> None:
    log = ChangeLog(keep=timedelta(hours=1), most=3)
    log.add(change("Node", None, f"n{i}", AT + timedelta(minutes=i)) for i in range(5))
    assert [c.name for c in log.between(AT, AT + timedelta(hours=1))] == ["n2", "n3", "n4"]
    log.add([change("Node", None, "late", AT + timedelta(hours=2))])
    assert [c.name for c in log.between(AT, AT + timedelta(hours=3))] == ["late"]


def test_a_change_id_is_stable_over_its_fields() -> None:
    one = policy_change(None, policy([HTTPS]), AT)
    assert one is not None and one.id == policy_change(None, policy([HTTPS]), AT).id  # type: ignore[union-attr]
    assert one.id != policy_change(policy([HTTPS]), None, AT).id  # type: ignore[union-attr]
