"""Every Kubernetes API call egresswatch makes, listed once.

The watch layer builds its requests from these `Resource`s (`Resource.path`), and the RBAC
rules the chart grants are derived from `CALLS` (`kube.rbac.rules`), so a call the code makes
and a permission the chart grants cannot drift apart. A new call is a new line here.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "CALICO_POLICIES",
    "CALLS",
    "CILIUM_POLICIES",
    "CONFIGMAPS",
    "LEASES",
    "NAMESPACES",
    "NETWORK_POLICIES",
    "NODES",
    "OTHER_POLICY_KINDS",
    "PODS",
    "TOKEN_REVIEWS",
    "ApiCall",
    "Resource",
]


@dataclass(frozen=True)
class Resource:
    """One API resource: its group ("" for the core group), version and plural name."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool

    def path(self, namespace: str | None = None) -> str:
        """The collection's path: cluster-wide, or in `namespace` (namespaced resources)."""
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if namespace is None:
            return f"{base}/{self.plural}"
        if not self.namespaced:
            raise ValueError(f"{self.plural} are cluster-scoped: no namespace")
        return f"{base}/namespaces/{namespace}/{self.plural}"


@dataclass(frozen=True)
class ApiCall:
    """A verb on a resource, as RBAC names it. `namespaced` says whether the code makes the
    call inside namespaces (a Role there) or cluster-wide (a ClusterRole)."""

    resource: Resource
    verb: str
    namespaced: bool


PODS = Resource("", "v1", "pods", "Pod", namespaced=True)
NODES = Resource("", "v1", "nodes", "Node", namespaced=False)
NAMESPACES = Resource("", "v1", "namespaces", "Namespace", namespaced=False)
CONFIGMAPS = Resource("", "v1", "configmaps", "ConfigMap", namespaced=True)
NETWORK_POLICIES = Resource(
    "networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy", namespaced=True
)

TOKEN_REVIEWS = Resource(
    "authentication.k8s.io", "v1", "tokenreviews", "TokenReview", namespaced=False
)
LEASES = Resource("coordination.k8s.io", "v1", "leases", "Lease", namespaced=True)
# Policy kinds the evaluator does not read, watched (names only) where their API exists, so the
# diagnosis lists them as present and not evaluated (kube/discovery.py asks the API server's
# discovery first: a 404 means the CRD is not installed).
CILIUM_POLICIES = Resource(
    "cilium.io", "v2", "ciliumnetworkpolicies", "CiliumNetworkPolicy", namespaced=True
)
CALICO_POLICIES = Resource(
    "crd.projectcalico.org", "v1", "networkpolicies", "NetworkPolicy", namespaced=True
)
OTHER_POLICY_KINDS = (CILIUM_POLICIES, CALICO_POLICIES)


def _list_watch(resource: Resource, *, namespaced: bool) -> tuple[ApiCall, ...]:
    return tuple(ApiCall(resource, verb, namespaced) for verb in ("list", "watch"))


# What the reflectors do (kube/discovery.py): agent pods in the designated namespaces, the
# namespaces' NetworkPolicies (Cilium's and Calico's too, where installed), kube-system's DNS
# pods and ConfigMaps (namespaced: a Role in each of those namespaces); Nodes and Namespaces
# (cluster-scoped: a ClusterRole). An agent's projected service-account token is checked with a
# TokenReview (kube/tokenreview.py).
CALLS: tuple[ApiCall, ...] = (
    *_list_watch(PODS, namespaced=True),
    *_list_watch(NETWORK_POLICIES, namespaced=True),
    *_list_watch(CONFIGMAPS, namespaced=True),
    *_list_watch(NODES, namespaced=False),
    *_list_watch(NAMESPACES, namespaced=False),
    ApiCall(TOKEN_REVIEWS, "create", namespaced=False),
    # Leader election (kube/leader.py): the controller's Lease, in its own namespace.
    *(ApiCall(LEASES, verb, namespaced=True) for verb in ("get", "create", "update")),
    *(call for kind in OTHER_POLICY_KINDS for call in _list_watch(kind, namespaced=True)),
)
