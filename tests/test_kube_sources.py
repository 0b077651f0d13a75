"""Designated sources: the owner of a pod (table), the expected sources (pure), and discovery
through pod and node churn with the real client against the fake API server."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest

from egresswatch.agent.identity import resolve_identity
from egresswatch.kube.discovery import Discovery, start_discovery
from egresswatch.kube.sources import expected_sources
from egresswatch.kube.views import NodeView, PodView, Workload, owner_of, pod_view
from egresswatch.model import SourceKind
from egresswatch.settings import ConfigError, KubernetesSettings, settings_from_dict
from tests.support.kubeapi import RunningKubeApi, kube_api, load_fixtures
from tests.support.service import wait_for

__all__ = ["kube_api"]

NODE = "aks-nodepool1-12345678-vmss00000{}".format
PROBE = "payments/egresswatch-probe@{}".format


def _owned(
    kind: str | None, name: str = "", labels: dict[str, str] | None = None
) -> dict[str, Any]:
    meta: dict[str, Any] = {"namespace": "ns", "name": "the-pod", "labels": labels or {}}
    if kind is not None:
        meta["ownerReferences"] = [{"kind": kind, "name": name, "controller": True}]
    return meta


@pytest.mark.parametrize(
    ("meta", "expected"),
    [
        # A Deployment's pod: its ReplicaSet's name minus the pod-template-hash.
        (
            _owned("ReplicaSet", "web-7d9f8b6c5d", {"pod-template-hash": "7d9f8b6c5d"}),
            Workload("ns", "Deployment", "web"),
        ),
        # A hyphenated Deployment name keeps its hyphens.
        (
            _owned("ReplicaSet", "my-web-app-5c6d", {"pod-template-hash": "5c6d"}),
            Workload("ns", "Deployment", "my-web-app"),
        ),
        # A bare ReplicaSet (no hash label, or a name that does not end in it) stays itself.
        (_owned("ReplicaSet", "rs-1"), Workload("ns", "ReplicaSet", "rs-1")),
        (
            _owned("ReplicaSet", "rs-1", {"pod-template-hash": "zzz"}),
            Workload("ns", "ReplicaSet", "rs-1"),
        ),
        (_owned("DaemonSet", "agents"), Workload("ns", "DaemonSet", "agents")),
        (_owned("StatefulSet", "db"), Workload("ns", "StatefulSet", "db")),
        # No controller, or one that is not a workload: the pod itself.
        (_owned(None), Workload("ns", "Pod", "the-pod")),
        (_owned("Job", "once"), Workload("ns", "Pod", "the-pod")),
    ],
)
def test_owner_of(meta: dict[str, Any], expected: Workload) -> None:
    assert owner_of(meta) == expected


def _pod(name: str, node: str | None, *, phase: str = "Running", gone: bool = False) -> PodView:
    owner = Workload("payments", "Deployment", "probe")
    return PodView("payments", name, node, "10.0.0.1", phase, gone, owner, {})


def test_expected_sources_one_per_workload_and_node() -> None:
    nodes = [NodeView("n1", {}), NodeView("n2", {})]
    pods = [
        _pod("probe-a", "n1"),
        _pod("probe-b", "n1"),  # a second replica on n1: the same source, two pods
        _pod("probe-c", "n2"),
        _pod("probe-d", None, phase="Pending"),  # not scheduled yet
        _pod("probe-e", "n3", phase="Succeeded"),  # finished
        _pod("probe-f", "n3", gone=True),  # being deleted
    ]
    expected = expected_sources(nodes, pods)
    assert sorted(expected) == ["n1", "n2", "payments/probe@n1", "payments/probe@n2"]
    assert expected["n1"].kind is SourceKind.NODE
    on_n1 = expected["payments/probe@n1"]
    assert on_n1.kind is SourceKind.POD and on_n1.node == "n1"
    assert [p.name for p in on_n1.pods] == ["probe-a", "probe-b"]
    assert sorted(expected_sources(nodes, pods, node_sources=False)) == [
        "payments/probe@n1",
        "payments/probe@n2",
    ]


def test_the_agent_names_itself_as_the_controller_expects_it() -> None:
    """The chart's Downward API environment of a fixture agent pod gives the agent the very
    name the controller computes from the same pod."""
    raw = next(
        o
        for o in load_fixtures()
        if o["kind"] == "Pod" and o["metadata"]["name"].startswith("egresswatch-probe")
    )
    pod = pod_view(raw)
    environ = {
        "POD_NAME": pod.name,
        "POD_NAMESPACE": pod.namespace,
        "NODE_NAME": str(pod.node),
        "EGRESSWATCH_SOURCE_KIND": "pod",
        "EGRESSWATCH_WORKLOAD": "egresswatch-probe",
    }
    identity = resolve_identity(source=None, kind=None, environ=environ)
    assert [identity.name] == list(expected_sources([], [pod]))


# -- discovery against the fake API server -------------------------------------------------------


SETTINGS = KubernetesSettings(
    enabled=True,
    node_selector="kubernetes.azure.com/agentpool=nodepool1",
    pod_namespaces=["payments"],
)


@pytest.fixture
async def discovery(kube_api: RunningKubeApi) -> AsyncIterator[Discovery]:
    settings = SETTINGS.model_copy(update={"kubeconfig": kube_api.kubeconfig})
    found = await start_discovery(settings, clock=lambda: datetime.now(UTC))
    try:
        async with asyncio.timeout(10):
            while not found.synced:
                await asyncio.sleep(0.02)
        yield found
    finally:
        await found.stop()


def _replica(kube_api: RunningKubeApi, name: str, node: str, template_hash: str) -> dict[str, Any]:
    template = kube_api.api.get("Pod", "egresswatch-probe-7d9f8b6c5d-bx9wq", "payments")
    assert template is not None
    pod = copy.deepcopy(template)
    meta = pod["metadata"]
    meta["name"], meta["labels"]["pod-template-hash"] = name, template_hash
    meta["ownerReferences"][0]["name"] = f"egresswatch-probe-{template_hash}"
    pod["spec"]["nodeName"] = node
    pod["status"]["podIP"] = "10.244.9.9"
    return pod


async def test_discovery_follows_pod_and_node_churn(
    kube_api: RunningKubeApi, discovery: Discovery
) -> None:
    fake = kube_api.api
    assert sorted(discovery.expected()) == [
        NODE(0),
        NODE(1),
        NODE(2),
        PROBE(NODE(0)),
        PROBE(NODE(1)),
    ]
    # Only what is needed was asked for: the agent pods by their selector in their namespace.
    pod_lists = {(p, q.get("labelSelector")) for m, p, q in fake.requests if p.endswith("/pods")}
    assert pod_lists == {
        ("/api/v1/namespaces/payments/pods", SETTINGS.pod_selector),
        ("/api/v1/namespaces/kube-system/pods", "k8s-app=kube-dns"),
    }

    # The Deployment scales up onto node 2: a new source there.
    fake.apply(_replica(kube_api, "egresswatch-probe-7d9f8b6c5d-new01", NODE(2), "7d9f8b6c5d"))
    await wait_for(lambda: PROBE(NODE(2)) in discovery.expected())

    # Node 2 is scaled down: its node source and its pod source retire.
    fake.remove("Pod", "egresswatch-probe-7d9f8b6c5d-new01", "payments")
    fake.remove("Node", NODE(2))
    await wait_for(lambda: NODE(2) not in discovery.expected())
    await wait_for(lambda: PROBE(NODE(2)) not in discovery.expected())
    assert set(discovery.retired()) == {NODE(2), PROBE(NODE(2))}

    # A node outside the selector is no source.
    other = copy.deepcopy(fake.get("Node", NODE(0)))
    assert other is not None
    other["metadata"]["name"] = "aks-userpool-1"
    other["metadata"]["labels"]["kubernetes.azure.com/agentpool"] = "userpool"
    fake.apply(other)
    await asyncio.sleep(0.3)
    assert "aks-userpool-1" not in discovery.expected()


async def test_a_rollout_on_the_same_node_keeps_the_identity(
    kube_api: RunningKubeApi, discovery: Discovery
) -> None:
    """A new ReplicaSet (a new pod-template-hash) replaces the pod on node 0: the source's
    name stays, its evidence is the new pod, and nothing retires."""
    fake = kube_api.api
    before = discovery.expected()[PROBE(NODE(0))]
    assert [p.name for p in before.pods] == ["egresswatch-probe-7d9f8b6c5d-bx9wq"]
    fake.apply(_replica(kube_api, "egresswatch-probe-6b8c7d9e4f-k2m4p", NODE(0), "6b8c7d9e4f"))
    fake.remove("Pod", "egresswatch-probe-7d9f8b6c5d-bx9wq", "payments")

    def replaced() -> bool:
        source = discovery.expected().get(PROBE(NODE(0)))
        return source is not None and [p.name for p in source.pods] == [
            "egresswatch-probe-6b8c7d9e4f-k2m4p"
        ]

    await wait_for(replaced)
    after = discovery.expected()[PROBE(NODE(0))]
    assert (
        after.workload == before.workload == Workload("payments", "Deployment", "egresswatch-probe")
    )
    assert after.pods[0].ip == "10.244.9.9"
    assert discovery.retired() == {}


@pytest.mark.parametrize(
    ("block", "named"),
    [
        ({"node_selector": "agentpool in nodepool1"}, "kubernetes.node_selector"),
        ({"pod_selector": "a=b=c"}, "kubernetes.pod_selector"),
        ({"pod_namespaces": ["Payments_NS"]}, r"kubernetes.pod_namespaces\[0\]"),
        ({"lease": "x"}, "kubernetes.lease"),
    ],
)
def test_a_bad_kubernetes_block_names_the_field(block: dict[str, Any], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        settings_from_dict({"kubernetes": block})


def test_selectors_the_api_server_takes_are_accepted() -> None:
    block = {
        "node_selector": "kubernetes.azure.com/agentpool in (nodepool1, np2),!virtual-kubelet.io/x",
        "pod_selector": "app.kubernetes.io/component!=node-agent,tier",
    }
    assert (
        settings_from_dict({"kubernetes": block}).kubernetes.node_selector == block["node_selector"]
    )
