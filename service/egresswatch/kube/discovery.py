"""Discovery: the reflectors egresswatch runs, and the designated sources they give.

Watched, and nothing more (each a `WatchSpec` from `api_calls`):

| what | where | selector | form |
|---|---|---|---|
| Nodes | cluster | `kubernetes.node_selector` | labels, conditions, kubelet version |
| agent Pods | each `kubernetes.pod_namespaces` | `kubernetes.pod_selector` | node, IP, owner |
| NetworkPolicies | each `kubernetes.pod_namespaces` | - | whole (the evaluator reads it) |
| Namespaces | cluster | - | metadata only (labels, for namespaceSelector) |
| CoreDNS Pods, ConfigMaps | kube-system | `k8s-app=kube-dns` | pods as views, ConfigMaps whole |
| Cilium, Calico policies | each `kubernetes.pod_namespaces` | - | metadata only, if served |

`expected()` is computed from the Nodes and agent Pods when asked and something changed since
(a watch event costs a flag, not a pass over 20,000 pods). Until every reflector has listed
once (`synced`), nothing is expected and nothing is retired: a half-listed cluster would
retire every source it has not seen yet.

What changed in the cluster (`kube.changes`): the events of the Nodes, NetworkPolicies and
kube-system's DNS reflectors become `ClusterChange`s passed to `on_change_seen`; a reflector's
first list is the cluster as found, not a change (a relist after a 410 is: what happened while
unwatched).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from kubernetes.aio import client

from egresswatch.kube.api_calls import (
    CONFIGMAPS,
    NAMESPACES,
    NETWORK_POLICIES,
    NODES,
    OTHER_POLICY_KINDS,
    PODS,
    Resource,
)
from egresswatch.kube.changes import (
    ClusterChange,
    dns_config_change,
    dns_pod_change,
    node_change,
    policy_change,
)
from egresswatch.kube.client import close_client, open_client
from egresswatch.kube.sources import ExpectedSource, expected_sources, retired_now
from egresswatch.kube.views import NodeView, PodView, node_view, pod_view
from egresswatch.kube.watch import Reflector, WatchSpec, served
from egresswatch.settings import KubernetesSettings

__all__ = ["DNS_SELECTOR", "Discovery", "start_discovery"]

DNS_NAMESPACE = "kube-system"
DNS_SELECTOR = "k8s-app=kube-dns"  # CoreDNS's pods and its ConfigMaps (coredns, coredns-custom)


def _whole(raw: dict[str, Any]) -> dict[str, Any]:
    return raw


class Discovery:
    """The cluster as egresswatch needs it, and the sources it designates."""

    def __init__(
        self,
        api: client.ApiClient,
        settings: KubernetesSettings,
        *,
        clock: Callable[[], datetime],
        watch_timeout_s: int = 290,
        on_change_seen: Callable[[ClusterChange], None] | None = None,
        other_policy_kinds: Sequence[Resource] = (),
    ) -> None:
        self._api = api
        self._settings = settings
        self._clock = clock
        self._dirty = True
        self.version = 0  # counts the watch events that changed a cache (ClusterPolicies reads it)

        self._on_change_seen = on_change_seen

        def reflector(
            spec: WatchSpec, project: Callable[[dict[str, Any]], Any], changes: Any = None
        ) -> Any:
            made: Reflector[Any] = Reflector(
                api,
                spec,
                project,
                on_change=self._changed,
                on_event=self._changes_of(changes, lambda: made) if changes else None,
                watch_timeout_s=watch_timeout_s,
            )
            return made

        selector = settings.node_selector or None
        # Whole Nodes (conditions and kubelet version are in their status); the view keeps a
        # few strings of each.
        self.nodes: Reflector[NodeView] = reflector(
            WatchSpec(NODES, label_selector=selector), node_view, node_change
        )
        self.pods: list[Reflector[PodView]] = [
            reflector(WatchSpec(PODS, namespace=ns, label_selector=settings.pod_selector), pod_view)
            for ns in settings.pod_namespaces
        ]
        self.policies: list[Reflector[dict[str, Any]]] = [
            reflector(WatchSpec(NETWORK_POLICIES, namespace=ns), _whole, policy_change)
            for ns in settings.pod_namespaces
        ]
        self.namespaces: Reflector[NodeView] = reflector(
            WatchSpec(NAMESPACES, metadata_only=True), node_view
        )
        self.dns_pods: Reflector[PodView] = reflector(
            WatchSpec(PODS, DNS_NAMESPACE, DNS_SELECTOR), pod_view, dns_pod_change
        )
        self.dns_config: Reflector[dict[str, Any]] = reflector(
            WatchSpec(CONFIGMAPS, DNS_NAMESPACE, DNS_SELECTOR), _whole, dns_config_change
        )
        # Policies of kinds not evaluated: listed by name so the diagnosis can say they exist.
        self.other_policies: list[Reflector[NodeView]] = [
            reflector(WatchSpec(kind, namespace=ns, metadata_only=True), node_view)
            for kind in other_policy_kinds
            for ns in settings.pod_namespaces
        ]
        self._expected: dict[str, ExpectedSource] = {}
        self._retired: dict[str, datetime] = {}
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def api(self) -> client.ApiClient:
        """The client the reflectors use (also for the TokenReview call)."""
        return self._api

    @property
    def reflectors(self) -> list[Reflector[Any]]:
        return [
            self.nodes,
            *self.pods,
            *self.policies,
            self.namespaces,
            self.dns_pods,
            self.dns_config,
            *self.other_policies,
        ]

    # -- lifecycle --

    def start(self) -> None:
        """Start every reflector as its own named task."""
        self._tasks = [r.start() for r in self.reflectors]

    async def stop(self) -> None:
        """Cancel the reflectors and close the client."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        await close_client(self._api)

    @property
    def synced(self) -> bool:
        return all(r.synced.is_set() for r in self.reflectors)

    # -- the designated sources --

    def expected(self) -> Mapping[str, ExpectedSource]:
        """name -> designated source now; empty until synced."""
        self._refresh()
        return self._expected

    def retired(self) -> Mapping[str, datetime]:
        """Sources designated before and not now (their node left, or no replica runs there
        any more), with when that was seen. One that is designated again leaves this list."""
        self._refresh()
        return self._retired

    @property
    def not_evaluated(self) -> tuple[str, ...]:
        """The policies of other kinds present, which the evaluator does not read:
        `CiliumNetworkPolicy.cilium.io payments/deny-egress`."""
        return tuple(
            f"{r.spec.resource.kind}.{r.spec.resource.group} {key}"
            for r in self.other_policies
            for key in sorted(r.cache)
        )

    def _changes_of(
        self, change_of: Callable[[Any, Any, datetime], ClusterChange | None], made: Any
    ) -> Callable[[str, Any, Any], None]:
        """The event hook of one reflector: its events as ClusterChanges, from its second
        list or first watch event on."""

        def seen(_kind: str, old: Any, new: Any) -> None:
            if self._on_change_seen is None or not made().synced.is_set():
                return
            change = change_of(old, new, self._clock())
            if change is not None:
                self._on_change_seen(change)

        return seen

    def _changed(self) -> None:
        self._dirty = True
        self.version += 1

    def _refresh(self) -> None:
        if not self._dirty or not self.synced:
            return
        self._dirty = False
        pods = (pod for reflector in self.pods for pod in reflector.cache.values())
        now = expected_sources(
            self.nodes.cache.values(), pods, node_sources=self._settings.node_sources
        )
        when = self._clock()
        for name in retired_now(self._expected, now):
            self._retired[name] = when
        for name in now:
            self._retired.pop(name, None)
        self._expected = now


async def start_discovery(
    settings: KubernetesSettings,
    *,
    clock: Callable[[], datetime],
    watch_timeout_s: int = 290,
    on_change_seen: Callable[[ClusterChange], None] | None = None,
) -> Discovery:
    """The client (kubeconfig, else in-cluster) and the reflectors, started. KubeClientError
    when the client cannot be configured."""
    kubeconfig = Path(settings.kubeconfig) if settings.kubeconfig is not None else None
    api = await open_client(kubeconfig, context=settings.context)
    others = [kind for kind in OTHER_POLICY_KINDS if await served(api, kind)]
    discovery = Discovery(
        api,
        settings,
        clock=clock,
        watch_timeout_s=watch_timeout_s,
        on_change_seen=on_change_seen,
        other_policy_kinds=others,
    )
    discovery.start()
    return discovery
