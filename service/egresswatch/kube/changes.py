"""What changed in the cluster: watch events turned into change records. Pure: no I/O.

A `ClusterChange` says what object changed (kind, namespace/name), how (`action`: created,
changed, deleted, restarted) and what changed (`details`, one short phrase each), with the
time it was seen. Only what explains an egress failure is a change:

- NetworkPolicy (the watched namespaces): created, deleted, its spec changed (a diff summary);
- Node: added, removed, a condition's status (Ready and the others), the kubelet version, the
  node image (the `kubernetes.azure.com/node-image-version` label, AKS);
- CoreDNS Pod (kube-system, `k8s-app=kube-dns`): restarted (restartCount up), created or
  deleted (a replacement is both);
- ConfigMap `coredns`, `coredns-custom` (kube-system): created, deleted, its data changed.

A change that touches nothing of these (a label, a heartbeat, a resourceVersion) is None.
`concerns` says whether a change bears on a source (its namespace and node); `ChangeLog` is the
bounded recent log the controller keeps in memory.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from egresswatch.kube.views import NodeView, PodView

__all__ = [
    "DNS_CONFIGMAPS",
    "NODE_IMAGE_LABEL",
    "ChangeLog",
    "ClusterChange",
    "concerns",
    "dns_config_change",
    "dns_pod_change",
    "node_change",
    "policy_change",
]

Raw = Mapping[str, Any]

NODE_IMAGE_LABEL = "kubernetes.azure.com/node-image-version"
DNS_CONFIGMAPS = frozenset({"coredns", "coredns-custom"})
NETWORK_POLICY, NODE, POD, CONFIGMAP = "NetworkPolicy", "Node", "Pod", "ConfigMap"


@dataclass(frozen=True)
class ClusterChange:
    """One change seen in the cluster. `namespace` is None for a cluster-scoped object."""

    seen_at: datetime
    kind: str
    namespace: str | None
    name: str
    action: str
    details: tuple[str, ...] = ()

    @property
    def object(self) -> str:
        """`Kind namespace/name`, or `Kind name` for a cluster-scoped object."""
        where = f"{self.namespace}/{self.name}" if self.namespace else self.name
        return f"{self.kind} {where}"

    @property
    def summary(self) -> str:
        """One sentence: `NetworkPolicy payments/allow-https-out changed: spec.egress ...`."""
        what = f": {'; '.join(self.details)}" if self.details else ""
        return f"{self.object} {self.action}{what}"

    @property
    def id(self) -> str:
        """Stable over its fields, so two replicas storing one change store it once."""
        text = "\n".join((self.seen_at.isoformat(), self.summary))
        return hashlib.sha256(text.encode()).hexdigest()[:32]


# -- NetworkPolicies -------------------------------------------------------------------------


def policy_change(old: Raw | None, new: Raw | None, at: datetime) -> ClusterChange | None:
    """A NetworkPolicy created, deleted, or whose spec changed (each spec field that differs,
    summarised); None when only its metadata changed."""
    meta = (new or old or {}).get("metadata") or {}
    namespace, name = meta.get("namespace"), str(meta.get("name", ""))
    if old is None or new is None:
        return ClusterChange(at, NETWORK_POLICY, namespace, name, _created_or_deleted(old))
    before, after = old.get("spec") or {}, new.get("spec") or {}
    details = tuple(
        _spec_field_change(key, before.get(key), after.get(key))
        for key in sorted(set(before) | set(after))
        if before.get(key) != after.get(key)
    )
    return (
        ClusterChange(at, NETWORK_POLICY, namespace, name, "changed", details) if details else None
    )


def _spec_field_change(key: str, before: Any, after: Any) -> str:
    if isinstance(before, list | None) and isinstance(after, list | None):
        was, now = len(before or []), len(after or [])
        if key in ("egress", "ingress"):
            if was != now:
                return f"spec.{key}: {_rules(was)} → {_rules(now)}"
            return f"spec.{key}: rules changed"
        return f"spec.{key}: {_short(before)} → {_short(after)}"
    return f"spec.{key}: {_short(before)} → {_short(after)}"


def _rules(count: int) -> str:
    return f"{count} rule" if count == 1 else f"{count} rules"


def _short(value: Any, limit: int = 80) -> str:
    text = "absent" if value is None else str(value)
    return text if len(text) <= limit else f"{text[: limit - 1]}…"


# -- Nodes -----------------------------------------------------------------------------------


def node_change(old: NodeView | None, new: NodeView | None, at: datetime) -> ClusterChange | None:
    """A Node added or removed, a condition's status turned, its kubelet or node image
    changed; None for anything else (labels, heartbeats)."""
    node = new or old
    assert node is not None
    if old is None or new is None:
        action = "added" if old is None else "removed"
        return ClusterChange(at, NODE, None, node.name, action)
    details = [*_conditions(old, new)]
    if old.kubelet != new.kubelet and old.kubelet and new.kubelet:
        details.append(f"kubelet {old.kubelet} → {new.kubelet}")
    image_was, image_now = old.labels.get(NODE_IMAGE_LABEL), new.labels.get(NODE_IMAGE_LABEL)
    if image_was != image_now:
        details.append(f"node image {image_was or 'absent'} → {image_now or 'absent'}")
    return ClusterChange(at, NODE, None, node.name, "changed", tuple(details)) if details else None


def _conditions(old: NodeView, new: NodeView) -> Iterable[str]:
    was, now = dict(old.conditions), dict(new.conditions)
    for kind in sorted(set(was) | set(now)):
        if was.get(kind) != now.get(kind):
            yield f"{kind} {was.get(kind, 'absent')} → {now.get(kind, 'absent')}"


# -- CoreDNS ---------------------------------------------------------------------------------


def dns_pod_change(old: PodView | None, new: PodView | None, at: datetime) -> ClusterChange | None:
    """A CoreDNS pod created or deleted (a replacement is both), or restarted (its containers'
    restartCount went up); None otherwise."""
    pod = new or old
    assert pod is not None
    if old is None or new is None:
        return ClusterChange(at, POD, pod.namespace, pod.name, _created_or_deleted(old))
    if new.restarts > old.restarts:
        detail = f"restartCount {old.restarts} → {new.restarts}"
        return ClusterChange(at, POD, pod.namespace, pod.name, "restarted", (detail,))
    return None


def dns_config_change(old: Raw | None, new: Raw | None, at: datetime) -> ClusterChange | None:
    """CoreDNS's ConfigMap (`coredns`, `coredns-custom`) created, deleted, or its data changed
    (the keys added, removed and changed); None for other ConfigMaps or metadata only."""
    meta = (new or old or {}).get("metadata") or {}
    namespace, name = meta.get("namespace"), str(meta.get("name", ""))
    if name not in DNS_CONFIGMAPS:
        return None
    if old is None or new is None:
        return ClusterChange(at, CONFIGMAP, namespace, name, _created_or_deleted(old))
    before, after = dict(old.get("data") or {}), dict(new.get("data") or {})
    details = [
        f"data.{key} {_how(key, before, after)}"
        for key in sorted(set(before) | set(after))
        if before.get(key) != after.get(key)
    ]
    return (
        ClusterChange(at, CONFIGMAP, namespace, name, "changed", tuple(details))
        if details
        else None
    )


def _how(key: str, before: Mapping[str, Any], after: Mapping[str, Any]) -> str:
    return "added" if key not in before else "removed" if key not in after else "changed"


def _created_or_deleted(old: object | None) -> str:
    return "created" if old is None else "deleted"


# -- which changes concern a source ----------------------------------------------------------


def concerns(change: ClusterChange, *, namespace: str | None, node: str | None) -> bool:
    """Whether `change` bears on a source in `namespace` (pod sources; None for a node) on
    `node`: a NetworkPolicy of its namespace, its Node, and any CoreDNS change (every pod's
    names go through it)."""
    if change.kind == NETWORK_POLICY:
        return namespace is not None and change.namespace == namespace
    if change.kind == NODE:
        return node is not None and change.name == node
    return change.kind in (POD, CONFIGMAP)


class ChangeLog:
    """The recent changes, oldest first, bounded in count and age (older ones are in the
    database): what the controller attaches to an incident without a query."""

    def __init__(self, *, keep: timedelta = timedelta(hours=24), most: int = 10_000) -> None:
        self._keep = keep
        self._entries: deque[ClusterChange] = deque(maxlen=most)

    def add(self, changes: Iterable[ClusterChange]) -> None:
        for change in changes:
            self._entries.append(change)
        if self._entries:
            newest = self._entries[-1].seen_at
            while self._entries and self._entries[0].seen_at < newest - self._keep:
                self._entries.popleft()

    def between(self, start: datetime, end: datetime) -> Sequence[ClusterChange]:
        """The changes seen in [start, end]."""
        return [c for c in self._entries if start <= c.seen_at <= end]

    def __len__(self) -> int:
        return len(self._entries)
