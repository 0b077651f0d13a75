"""Which sources should exist, from the cluster as the reflectors see it. Pure: no I/O.

- A **node source** per Node the node selector matched (the Nodes reflector watches with that
  selector): its name is the node's name.
- A **pod source** per (designated workload, node) with an active replica: its name is
  `model.pod_source_name(namespace, workload, node)`; the replicas' pod names and IPs are the
  evidence. A rollout on the same node keeps the name; a node with no replica left has none.

A source expected before and not any more is **retired** (`retired_now`): the controller stops
waiting for it rather than calling it stale for ever.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from egresswatch.kube.views import NodeView, PodView, Workload
from egresswatch.model import SourceKind, pod_source_name

__all__ = ["ExpectedSource", "PodEvidence", "expected_sources", "retired_now"]


@dataclass(frozen=True)
class PodEvidence:
    name: str
    ip: str | None


@dataclass(frozen=True)
class ExpectedSource:
    """A designated source: its name, kind, node, workload (pod sources) and the replicas
    that stand for it now (pod sources; empty for a node)."""

    name: str
    kind: SourceKind
    node: str
    workload: Workload | None = None
    pods: tuple[PodEvidence, ...] = ()


def expected_sources(
    nodes: Iterable[NodeView], pods: Iterable[PodView], *, node_sources: bool = True
) -> dict[str, ExpectedSource]:
    """name -> the source, for the selected `nodes` (when `node_sources`) and the designated
    `pods` (already narrowed to the designated namespaces and label selector)."""
    expected: dict[str, ExpectedSource] = {}
    if node_sources:
        for node in nodes:
            expected[node.name] = ExpectedSource(node.name, SourceKind.NODE, node.name)
    replicas: dict[tuple[Workload, str], list[PodView]] = {}
    for pod in pods:
        if pod.active and pod.node is not None:
            replicas.setdefault((pod.owner, pod.node), []).append(pod)
    for (workload, node_name), members in replicas.items():
        name = pod_source_name(workload.namespace, workload.name, node_name)
        evidence = tuple(PodEvidence(p.name, p.ip) for p in sorted(members, key=_by_name))
        expected[name] = ExpectedSource(name, SourceKind.POD, node_name, workload, evidence)
    return expected


def retired_now(
    before: Mapping[str, ExpectedSource], now: Mapping[str, ExpectedSource]
) -> set[str]:
    """The sources expected `before` and not `now`: their node left, or no longer runs a
    replica of their workload."""
    return set(before) - set(now)


def _by_name(pod: PodView) -> str:
    return pod.name
