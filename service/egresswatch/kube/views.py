"""The small views the reflectors keep of each object: only the fields egresswatch reads, so a
cluster of 20,000 pods costs a few strings each, not whole objects.

Each `*_view(raw)` takes the object as the API server sent it (a dict; a PartialObjectMetadata
for metadata-only watches) and never raises on a missing optional field.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["NodeView", "PodView", "Workload", "node_view", "owner_of", "pod_view"]

Raw = Mapping[str, Any]

# The controllers whose pods a pod source stands for; anything else is the pod itself.
_WORKLOAD_KINDS = frozenset({"Deployment", "DaemonSet", "StatefulSet", "ReplicaSet"})


@dataclass(frozen=True)
class Workload:
    """What a pod belongs to: (namespace, kind, name), e.g. a Deployment."""

    namespace: str
    kind: str
    name: str


@dataclass(frozen=True)
class NodeView:
    """A Node (or a Namespace: name and labels only). `conditions` are (type, status) pairs
    sorted by type and `kubelet` the kubelet version: empty from a metadata-only watch."""

    name: str
    labels: Mapping[str, str]
    conditions: tuple[tuple[str, str], ...] = ()
    kubelet: str = ""


@dataclass(frozen=True)
class PodView:
    namespace: str
    name: str
    node: str | None  # spec.nodeName: None until scheduled
    ip: str | None  # status.podIP
    phase: str
    terminating: bool  # metadata.deletionTimestamp is set
    owner: Workload
    labels: Mapping[str, str]
    restarts: int = 0  # the containers' restartCounts, summed

    @property
    def active(self) -> bool:
        """Scheduled, not finished and not being deleted: a replica that stands for its
        workload on its node."""
        return self.node is not None and not self.terminating and self.phase in _ACTIVE


_ACTIVE = frozenset({"Pending", "Running", "Unknown"})


def node_view(raw: Raw) -> NodeView:
    """Name, labels, and (a whole Node) its conditions and kubelet version; heartbeat times
    are left out, so a heartbeat alone changes nothing."""
    meta, status = raw["metadata"], raw.get("status") or {}
    conditions = sorted(
        (str(c.get("type", "")), str(c.get("status", ""))) for c in status.get("conditions") or []
    )
    return NodeView(
        name=meta["name"],
        labels=dict(meta.get("labels") or {}),
        conditions=tuple(conditions),
        kubelet=str((status.get("nodeInfo") or {}).get("kubeletVersion") or ""),
    )


def pod_view(raw: Raw) -> PodView:
    meta, spec, status = raw["metadata"], raw.get("spec") or {}, raw.get("status") or {}
    labels = dict(meta.get("labels") or {})
    return PodView(
        namespace=meta["namespace"],
        name=meta["name"],
        node=spec.get("nodeName") or None,
        ip=status.get("podIP") or None,
        phase=status.get("phase") or "Pending",
        terminating=bool(meta.get("deletionTimestamp")),
        owner=owner_of(meta),
        labels=labels,
        restarts=sum(
            int(c.get("restartCount") or 0) for c in status.get("containerStatuses") or []
        ),
    )


def owner_of(meta: Raw) -> Workload:
    """The workload a pod belongs to, from its controller ownerReference.

    A ReplicaSet made by a Deployment is named `DEPLOYMENT-HASH`, HASH being the pod's
    `pod-template-hash` label: the Deployment is that name minus `-HASH`, so a rollout (a new
    ReplicaSet, a new hash) keeps the same workload. A bare ReplicaSet stays itself; a pod with
    no controller (or an unknown one, e.g. a Job's) is its own workload.
    """
    namespace, name = meta["namespace"], meta["name"]
    references = meta.get("ownerReferences") or []
    owner = next((r for r in references if r.get("controller")), None)
    if owner is None or owner.get("kind") not in _WORKLOAD_KINDS:
        return Workload(namespace, "Pod", name)
    kind, owner_name = owner["kind"], owner["name"]
    template_hash = (meta.get("labels") or {}).get("pod-template-hash")
    if kind == "ReplicaSet" and template_hash and owner_name.endswith(f"-{template_hash}"):
        return Workload(namespace, "Deployment", owner_name[: -len(template_hash) - 1])
    return Workload(namespace, kind, owner_name)
