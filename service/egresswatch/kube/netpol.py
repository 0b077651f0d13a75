"""Whether a pod may send a packet: the Kubernetes NetworkPolicy egress semantics, evaluated.

`evaluate_egress(snapshot, source, destination)` decides, for a source pod and a destination
(IP, port, protocol), what the cluster's NetworkPolicies (networking.k8s.io/v1) say, following
the rules of the Kubernetes documentation ("Network Policies", and the API reference):

- a pod is isolated for egress once a policy with Egress in its `policyTypes` selects it
  (`podSelector` in the policy's namespace; `{}` selects every pod there); a pod no such policy
  selects may send anything (the implicit allow);
- an isolated pod may send what at least one egress rule of one selecting policy allows: the
  policies add up, none of them denies (so order never matters);
- a rule matches when a `to` peer matches (no `to`: any destination) and a `ports` entry matches
  (no `ports`: any port);
- a peer: `ipBlock` (the `cidr` minus its `except`s), `podSelector` alone (pods in the policy's
  own namespace), `namespaceSelector` alone (every pod of the selected namespaces), or both in
  one peer (pods matching both: AND; separate peers are OR);
- a port: the protocol (TCP when absent; UDP, SCTP), a number, a range (`port`..`endPort`), or a
  name, which matches only a destination pod declaring a container port of that name and
  protocol with that number.

**Pod IPs and `ipBlock`.** The documentation leaves it to the implementation whether ipBlock
applies to pod IPs ("should be cluster-external"). Here an ipBlock matches the destination IP
whatever it is, pod IPs included, as Azure NPM and Calico do on AKS (Cilium does not); a pod
destination can match by selector as well. Destinations are judged after Service translation
(the pods behind a ClusterIP), which is also what the CNIs see.

Other policy kinds (CiliumNetworkPolicy, Calico's) are not evaluated: the snapshot lists them
(`not_evaluated`) and every decision carries that list, so nobody mistakes silence for "allowed".

Pure: standard library only (an import-linter contract keeps it so).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Protocol

from egresswatch.kube.policies import EgressRule, NetworkPolicy, Peer, PolicyPort
from egresswatch.kube.selectors import SpecError, field_of, labels_of, list_of, mapping_of

__all__ = [
    "KUBE_DNS_LABELS",
    "ContainerPort",
    "Destination",
    "DnsDecision",
    "EgressDecision",
    "NetworkPolicy",
    "PodRef",
    "PolicySnapshot",
    "PolicyView",
    "SpecError",
    "evaluate_dns",
    "evaluate_egress",
]

NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"  # every namespace carries it (1.21+)
KUBE_DNS_NAMESPACE = "kube-system"
KUBE_DNS_LABELS: Mapping[str, str] = {"k8s-app": "kube-dns"}  # CoreDNS on AKS, GKE, kubeadm
_LISTED = 3  # names in one sentence


@dataclass(frozen=True)
class ContainerPort:
    """A port a pod's container declares: its name (may be empty), number and protocol."""

    name: str
    port: int
    protocol: str = "TCP"


@dataclass(frozen=True)
class PodRef:
    """A pod as the policies see it: namespace, name, labels, IP and declared ports."""

    namespace: str
    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    ip: str | None = None
    ports: tuple[ContainerPort, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @classmethod
    def from_api(cls, obj: Mapping[str, Any]) -> PodRef:
        """The pod in `obj` (a v1 Pod as JSON): metadata, `status.podIP` and the containers'
        ports; SpecError naming the field otherwise."""
        metadata = mapping_of(obj.get("metadata"), "metadata")
        spec = mapping_of(obj.get("spec"), "spec")
        status = mapping_of(obj.get("status"), "status")
        ports = []
        for i, container in enumerate(list_of(spec.get("containers"), "spec.containers")):
            where = f"spec.containers[{i}]"
            for j, port in enumerate(list_of(mapping_of(container, where).get("ports"), where)):
                found = mapping_of(port, f"{where}.ports[{j}]")
                number = field_of(found, "containerPort", f"{where}.ports[{j}]", int)
                if number is None:
                    raise SpecError(f"{where}.ports[{j}].containerPort", "required")
                name = field_of(found, "name", f"{where}.ports[{j}]", str) or ""
                protocol = field_of(found, "protocol", f"{where}.ports[{j}]", str) or "TCP"
                ports.append(ContainerPort(name, number, protocol))
        return cls(
            namespace=field_of(metadata, "namespace", "metadata", str) or "default",
            name=field_of(metadata, "name", "metadata", str) or "",
            labels=labels_of(metadata.get("labels"), "metadata.labels"),
            ip=field_of(status, "podIP", "status", str),
            ports=tuple(ports),
        )


@dataclass(frozen=True)
class Destination:
    """Where a packet goes: IP, port, protocol (TCP, UDP, SCTP), and the pod it reaches when it
    is one (else the snapshot is asked by IP)."""

    ip: str
    port: int
    protocol: str = "TCP"
    pod: PodRef | None = None

    def __str__(self) -> str:
        host = f"[{self.ip}]" if ":" in self.ip else self.ip
        return f"{host}:{self.port}/{self.protocol}"


@dataclass(frozen=True)
class PolicySnapshot:
    """What the policies are judged against: the NetworkPolicies, namespace name → labels,
    the known pods (for in-cluster destinations), and the other policy kinds present that are
    not evaluated ("CiliumNetworkPolicy shop/deny-egress")."""

    policies: tuple[NetworkPolicy, ...] = ()
    namespaces: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    pods: tuple[PodRef, ...] = ()
    not_evaluated: tuple[str, ...] = ()

    def namespace_labels(self, namespace: str) -> Mapping[str, str]:
        """A namespace's labels, `kubernetes.io/metadata.name` always among them (the API
        server sets it on every namespace, so a namespace not seen yet still has it)."""
        return {**self.namespaces.get(namespace, {}), NAMESPACE_NAME_LABEL: namespace}

    def pod_at(self, ip: str) -> PodRef | None:
        """The known pod with this IP, if any."""
        return self._pods_by_ip.get(ip)

    def policies_in(self, namespace: str) -> tuple[NetworkPolicy, ...]:
        """The NetworkPolicies of `namespace`, in snapshot order."""
        return self._policies_by_namespace.get(namespace, ())

    # indexes, built on first use: the snapshot is frozen, so they cannot go stale
    @cached_property
    def _pods_by_ip(self) -> Mapping[str, PodRef]:
        found: dict[str, PodRef] = {}
        for pod in self.pods:
            if pod.ip:
                found.setdefault(pod.ip, pod)
        return found

    @cached_property
    def _policies_by_namespace(self) -> Mapping[str, tuple[NetworkPolicy, ...]]:
        found: dict[str, list[NetworkPolicy]] = {}
        for policy in self.policies:
            found.setdefault(policy.namespace, []).append(policy)
        return {namespace: tuple(policies) for namespace, policies in found.items()}


@dataclass(frozen=True)
class EgressDecision:
    """What the policies say of one packet: `allowed`; `selecting`, the policies (namespace/name)
    that isolate the source pod for egress; `allowing`, those of them that allow it; `why`, one
    plain sentence; `not_evaluated`, the other policy kinds present, passed through."""

    allowed: bool
    selecting: tuple[str, ...]
    allowing: tuple[str, ...]
    why: str
    not_evaluated: tuple[str, ...] = ()


class PolicyView(Protocol):
    """The cluster's policies as the controller's watch cache holds them.

    Both methods are synchronous, cheap and never raise: the diagnosis is pure and calls them
    while it judges. `snapshot()` is the current NetworkPolicies, namespace labels, pods and the
    other policy kinds; `pod(source)` is the pod that currently stands for a pod source (by the
    source's name as agents report it), or None when the cache does not know it.
    """

    def snapshot(self) -> PolicySnapshot: ...

    def pod(self, source: str) -> PodRef | None: ...


# --- the evaluation --------------------------------------------------------------------------


def evaluate_egress(
    snapshot: PolicySnapshot, source: PodRef, destination: Destination
) -> EgressDecision:
    """What the NetworkPolicies in `snapshot` say of `source` sending to `destination`."""
    selecting = [p for p in snapshot.policies_in(source.namespace) if _isolates(p, source)]
    names = tuple(p.key for p in selecting)
    if not selecting:
        why = f"no NetworkPolicy selects {source.key} for egress: its egress is not restricted"
        return EgressDecision(True, (), (), why, snapshot.not_evaluated)
    target = destination.pod or snapshot.pod_at(destination.ip)
    allowing = tuple(
        p.key
        for p in selecting
        if any(_rule_allows(snapshot, p, r, destination, target) for r in p.egress)
    )
    where = f"{destination}" + (f" (pod {target.key})" if target is not None else "")
    if allowing:
        why = (
            f"{_names(allowing)} {_verb(allowing, 'allows', 'allow')} {source.key} to reach {where}"
        )
    elif all(not p.egress for p in selecting):
        why = f"{_names(names)} {_verb(names, 'denies', 'deny')} all egress from {source.key}"
    else:
        why = (
            f"{_names(names)} {_verb(names, 'selects', 'select')} {source.key} and no egress rule "
            f"allows {where}"
        )
    return EgressDecision(bool(allowing), names, allowing, why, snapshot.not_evaluated)


def _isolates(policy: NetworkPolicy, pod: PodRef) -> bool:
    return (
        policy.limits_egress
        and policy.namespace == pod.namespace
        and policy.pod_selector.matches(pod.labels)
    )


def _rule_allows(
    snapshot: PolicySnapshot,
    policy: NetworkPolicy,
    rule: EgressRule,
    destination: Destination,
    target: PodRef | None,
) -> bool:
    ports = not rule.ports or any(_port_matches(p, destination, target) for p in rule.ports)
    peers = not rule.to or any(
        _peer_matches(snapshot, policy, peer, destination, target) for peer in rule.to
    )
    return ports and peers


def _peer_matches(
    snapshot: PolicySnapshot,
    policy: NetworkPolicy,
    peer: Peer,
    destination: Destination,
    target: PodRef | None,
) -> bool:
    if peer.ip_block is not None:
        try:
            ip = ipaddress.ip_address(destination.ip.strip("[]"))
        except ValueError:
            return False
        return peer.ip_block.contains(ip)
    if target is None:
        return False  # selectors pick pods: an address outside the cluster matches none
    if peer.namespace_selector is None:
        in_namespace = target.namespace == policy.namespace
    else:
        in_namespace = peer.namespace_selector.matches(snapshot.namespace_labels(target.namespace))
    pods = peer.pod_selector is None or peer.pod_selector.matches(target.labels)
    return in_namespace and pods


def _port_matches(port: PolicyPort, destination: Destination, target: PodRef | None) -> bool:
    if port.protocol != destination.protocol:
        return False
    if port.port is None:
        return True
    if isinstance(port.port, int):
        last = port.end_port if port.end_port is not None else port.port
        return port.port <= destination.port <= last
    # a named port names a container port of the destination pod: only pods that declare it
    return target is not None and any(
        p.name == port.port and p.protocol == destination.protocol and p.port == destination.port
        for p in target.ports
    )


def _names(keys: Sequence[str]) -> str:
    shown = ", ".join(keys[:_LISTED])
    rest = len(keys) - _LISTED
    return f"{shown} and {rest} more" if rest > 0 else shown


def _verb(keys: Sequence[str], one: str, many: str) -> str:
    return one if len(keys) == 1 else many


# --- DNS to kube-dns -------------------------------------------------------------------------


@dataclass(frozen=True)
class DnsDecision:
    """What the policies say of DNS from a pod to kube-dns, per protocol asked."""

    decisions: Mapping[str, EgressDecision]  # protocol (UDP, TCP) -> the decision

    @property
    def allowed(self) -> bool:
        return all(d.allowed for d in self.decisions.values())

    @property
    def denied(self) -> tuple[str, ...]:
        """The protocols the policies deny, in the order asked."""
        return tuple(p for p, d in self.decisions.items() if not d.allowed)


def kube_dns_pods(snapshot: PolicySnapshot) -> tuple[PodRef, ...]:
    """The cluster DNS pods: kube-system pods labelled k8s-app=kube-dns."""
    return tuple(
        pod
        for pod in snapshot.pods
        if pod.namespace == KUBE_DNS_NAMESPACE
        and all(pod.labels.get(k) == v for k, v in KUBE_DNS_LABELS.items())
    )


def evaluate_dns(
    snapshot: PolicySnapshot,
    source: PodRef,
    *,
    resolver: str | None = None,
    protocols: Sequence[str] = ("UDP", "TCP"),
) -> DnsDecision:
    """Whether `source` may query kube-dns on port 53 over each of `protocols`.

    A pod asks the kube-dns Service (`resolver`, e.g. 10.0.0.10); the CNI judges the packet
    after it is translated to a CoreDNS pod, so every kube-dns pod in the snapshot is judged
    and the first one denied speaks. With none known, a stand-in is judged: a kube-system pod
    labelled k8s-app=kube-dns at `resolver`, declaring CoreDNS' ports `dns` (53/UDP) and
    `dns-tcp` (53/TCP).
    """
    pods = kube_dns_pods(snapshot) or (_kube_dns_stand_in(resolver),)
    decisions: dict[str, EgressDecision] = {}
    for protocol in protocols:
        found = [
            evaluate_egress(snapshot, source, Destination(pod.ip or "", 53, protocol, pod))
            for pod in pods
        ]
        decisions[protocol] = next((d for d in found if not d.allowed), found[0])
    return DnsDecision(decisions)


def _kube_dns_stand_in(resolver: str | None) -> PodRef:
    ports = (ContainerPort("dns", 53, "UDP"), ContainerPort("dns-tcp", 53, "TCP"))
    return PodRef(KUBE_DNS_NAMESPACE, "kube-dns", dict(KUBE_DNS_LABELS), resolver, ports)


def snapshot_from_api(
    policies: Sequence[Mapping[str, Any]],
    namespaces: Sequence[Mapping[str, Any]] = (),
    pods: Sequence[Mapping[str, Any]] = (),
    not_evaluated: Sequence[str] = (),
    *,
    on_error: Callable[[SpecError], None] | None = None,
) -> PolicySnapshot:
    """A snapshot from API objects (NetworkPolicies, Namespaces, Pods as JSON).

    A NetworkPolicy that does not parse raises SpecError, or, with `on_error`, is reported to
    it and listed in `not_evaluated` ("NetworkPolicy shop/x (unreadable: ...)") so the
    decisions still say a policy was present that nobody judged.
    """
    parsed: list[NetworkPolicy] = []
    skipped = list(not_evaluated)
    for obj in policies:
        try:
            parsed.append(NetworkPolicy.from_api(obj))
        except SpecError as error:
            if on_error is None:
                raise
            on_error(error)
            skipped.append(f"{error.path.split(':')[0]} (unreadable: {error.problem})")
    labels = {}
    for obj in namespaces:
        metadata = mapping_of(obj.get("metadata"), "metadata")
        name = field_of(metadata, "name", "metadata", str) or ""
        labels[name] = labels_of(metadata.get("labels"), f"Namespace {name}: metadata.labels")
    return PolicySnapshot(
        tuple(parsed), labels, tuple(PodRef.from_api(p) for p in pods), tuple(skipped)
    )
