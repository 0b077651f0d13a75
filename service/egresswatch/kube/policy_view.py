"""The cluster's policies as the diagnosis reads them: `kube.netpol.PolicyView` over the
discovery's reflectors.

`snapshot()` is rebuilt only when a watch event changed something since the last one (the
discovery's `version`), so judging a round costs a lookup, not a pass over the caches. The pods
it knows are the ones already watched (the agent pods of the designated namespaces and
kube-system's DNS pods): an in-cluster destination that is some other pod is judged by its IP
alone (ipBlock rules), not by selectors. Pods carry no container ports in this view, so a named
port never matches one of them.

A NetworkPolicy the evaluator cannot read (a SpecError) is left out of the snapshot and named
once in the log, and listed in `not_evaluated` so nobody mistakes its absence for "allowed".
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from egresswatch.kube.netpol import NetworkPolicy, PodRef, PolicySnapshot, PolicyView, SpecError
from egresswatch.kube.sources import ExpectedSource
from egresswatch.kube.views import NodeView, PodView
from egresswatch.model import SourceKind

if TYPE_CHECKING:  # the watches load the Kubernetes client; this view reads only their caches
    from egresswatch.kube.watch import Reflector

__all__ = ["ClusterPolicies", "WatchedCluster"]

log = logging.getLogger(__name__)


class WatchedCluster(Protocol):
    """What the view reads of the discovery (kube.discovery.Discovery)."""

    @property
    def version(self) -> int: ...

    @property
    def policies(self) -> list[Reflector[dict[str, Any]]]: ...

    @property
    def namespaces(self) -> Reflector[NodeView]: ...

    @property
    def pods(self) -> list[Reflector[PodView]]: ...

    @property
    def dns_pods(self) -> Reflector[PodView]: ...

    @property
    def not_evaluated(self) -> tuple[str, ...]: ...

    def expected(self) -> Mapping[str, ExpectedSource]: ...


class ClusterPolicies:
    """`PolicyView` over a discovery's watch cache. Synchronous and never raises."""

    def __init__(self, cluster: WatchedCluster) -> None:
        self._cluster = cluster
        self._snapshot = PolicySnapshot()
        self._version = -1
        self._unreadable: set[str] = set()  # logged once each

    def snapshot(self) -> PolicySnapshot:
        """The NetworkPolicies, namespace labels, watched pods and other kinds now."""
        if self._cluster.version != self._version:
            self._version = self._cluster.version
            self._snapshot = self._build()
        return self._snapshot

    def pod(self, source: str) -> PodRef | None:
        """The pod standing for pod source `source` now: a designated source's first replica
        (by name) on its node; else the watched pod named `source` (`NAMESPACE/POD`, an agent
        started with `--source`); None for a node source or a pod the cache does not know."""
        found = self._cluster.expected().get(source)
        if found is None:
            key = source
        elif found.kind is not SourceKind.POD or not found.pods:
            return None
        else:
            namespace = found.workload.namespace if found.workload else ""
            key = f"{namespace}/{found.pods[0].name}"
        for reflector in self._cluster.pods:
            view = reflector.cache.get(key)
            if view is not None:
                return _pod_ref(view)
        return None

    def _build(self) -> PolicySnapshot:
        policies: list[NetworkPolicy] = []
        unreadable: list[str] = []
        for reflector in self._cluster.policies:
            for key, raw in sorted(reflector.cache.items()):
                try:
                    policies.append(NetworkPolicy.from_api(raw))
                except SpecError as error:
                    unreadable.append(f"NetworkPolicy {key} (unreadable: {error})")
                    if key not in self._unreadable:
                        self._unreadable.add(key)
                        log.warning(
                            "a NetworkPolicy cannot be evaluated", extra={"problem": str(error)}
                        )
        pods = [
            view for r in (*self._cluster.pods, self._cluster.dns_pods) for view in r.cache.values()
        ]
        return PolicySnapshot(
            policies=tuple(policies),
            namespaces={n.name: n.labels for n in self._cluster.namespaces.cache.values()},
            pods=tuple(_pod_ref(view) for view in pods),
            not_evaluated=(*self._cluster.not_evaluated, *unreadable),
        )


def _pod_ref(view: PodView) -> PodRef:
    return PodRef(view.namespace, view.name, labels=view.labels, ip=view.ip)


class CurrentPolicies:
    """A PolicyView that follows whichever view `current()` gives now: the API is made once,
    while discovery runs only on the replica that leads, and starts again on a new lead. No
    view: no policies known (an empty snapshot, no pod), so the diagnosis judges without them.
    """

    def __init__(self, current: Callable[[], PolicyView | None]) -> None:
        self._current = current

    def snapshot(self) -> PolicySnapshot:
        view = self._current()
        return view.snapshot() if view is not None else PolicySnapshot()

    def pod(self, source: str) -> PodRef | None:
        view = self._current()
        return view.pod(source) if view is not None else None
