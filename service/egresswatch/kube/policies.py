"""NetworkPolicy (networking.k8s.io/v1) as frozen types, parsed from the API's JSON.

`NetworkPolicy.from_api(obj)` reads the camelCase object exactly as the API server serves it
(or as a manifest writes it) and raises `SpecError` naming the field path for what the API
server would have refused: an unknown protocol or policy type, a CIDR that does not parse, an
`except` outside its `cidr`, `endPort` without a numeric `port` or below it, a peer with
`ipBlock` and a selector together. Only the egress half is kept: egresswatch judges egress.

Defaults are the API's: `policyTypes` absent means Ingress, plus Egress when the policy has at
least one egress rule; a port's protocol defaults to TCP.

Pure: standard library only.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from egresswatch.kube.selectors import (
    LabelSelector,
    SpecError,
    each_of,
    field_of,
    list_of,
    mapping_of,
)

__all__ = ["EgressRule", "IpBlock", "NetworkPolicy", "Peer", "PolicyPort"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
PROTOCOLS = ("TCP", "UDP", "SCTP")
_POLICY_TYPES = ("Ingress", "Egress")


@dataclass(frozen=True)
class IpBlock:
    """`cidr` minus every `except` network."""

    cidr: Network
    excepted: tuple[Network, ...] = ()

    def contains(self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        if ip.version != self.cidr.version or ip not in self.cidr:
            return False
        return not any(ip in net for net in self.excepted)

    @classmethod
    def from_api(cls, obj: object, path: str) -> IpBlock:
        found = mapping_of(obj, path)
        cidr = _network(field_of(found, "cidr", path, str), f"{path}.cidr")
        excepted = []
        for i, item in enumerate(list_of(found.get("except"), f"{path}.except")):
            where = f"{path}.except[{i}]"
            net = _network(item if isinstance(item, str) else None, where)
            if net.version != cidr.version or not net.subnet_of(cidr):  # type: ignore[arg-type]
                raise SpecError(where, f"{net} is not inside the cidr {cidr}")
            excepted.append(net)
        return cls(cidr, tuple(excepted))

    def __str__(self) -> str:
        return (
            f"{self.cidr} except {', '.join(map(str, self.excepted))}"
            if self.excepted
            else (str(self.cidr))
        )


def _network(value: str | None, path: str) -> Network:
    if not value:
        raise SpecError(path, "a CIDR is required")
    try:
        # strict=False: the API server accepts host bits (10.0.0.1/24), as net.ParseCIDR does
        return ipaddress.ip_network(value, strict=False)
    except ValueError as error:
        raise SpecError(path, f"{value!r} is not a CIDR ({error})") from None


@dataclass(frozen=True)
class Peer:
    """One `to` entry: an ipBlock, or pods by namespaceSelector and/or podSelector.

    A None selector is an absent one: no namespaceSelector means the policy's own namespace,
    no podSelector means every pod of the selected namespaces. The two together are ANDed.
    """

    ip_block: IpBlock | None = None
    namespace_selector: LabelSelector | None = None
    pod_selector: LabelSelector | None = None

    @classmethod
    def from_api(cls, obj: object, path: str) -> Peer:
        found = mapping_of(obj, path)
        block = found.get("ipBlock")
        namespaces, pods = found.get("namespaceSelector"), found.get("podSelector")
        if block is not None and (namespaces is not None or pods is not None):
            raise SpecError(path, "ipBlock cannot be combined with a selector")
        if block is None and namespaces is None and pods is None:
            raise SpecError(path, "needs ipBlock, namespaceSelector or podSelector")
        return cls(
            IpBlock.from_api(block, f"{path}.ipBlock") if block is not None else None,
            (
                LabelSelector.from_api(namespaces, f"{path}.namespaceSelector")
                if namespaces is not None
                else None
            ),
            LabelSelector.from_api(pods, f"{path}.podSelector") if pods is not None else None,
        )


@dataclass(frozen=True)
class PolicyPort:
    """One `ports` entry: `protocol` (TCP, UDP, SCTP), `port` a number, a container port's
    name, or None for every port of the protocol; `end_port` makes a numeric port a range."""

    protocol: str = "TCP"
    port: int | str | None = None
    end_port: int | None = None

    @classmethod
    def from_api(cls, obj: object, path: str) -> PolicyPort:
        found = mapping_of(obj, path)
        protocol = field_of(found, "protocol", path, str) or "TCP"
        if protocol not in PROTOCOLS:
            raise SpecError(f"{path}.protocol", f"{protocol!r} is not one of {PROTOCOLS}")
        port = found.get("port")
        if isinstance(port, bool) or not isinstance(port, int | str | None):
            raise SpecError(f"{path}.port", "expected a number or a port name")
        if isinstance(port, int) and not 1 <= port <= 65535:
            raise SpecError(f"{path}.port", f"{port} is not a port (1-65535)")
        if port == "":
            raise SpecError(f"{path}.port", "a port name cannot be empty")
        end = field_of(found, "endPort", path, int)
        if end is not None:
            if not isinstance(port, int):
                raise SpecError(f"{path}.endPort", "needs a numeric port (not absent, not a name)")
            if not port <= end <= 65535:
                raise SpecError(f"{path}.endPort", f"{end} must be from port {port} to 65535")
        return cls(protocol, port, end)

    def __str__(self) -> str:
        if self.port is None:
            return f"any/{self.protocol}"
        if self.end_port is not None:
            return f"{self.port}-{self.end_port}/{self.protocol}"
        return f"{self.port}/{self.protocol}"


@dataclass(frozen=True)
class EgressRule:
    """Traffic to any of `to` (empty: every destination) on any of `ports` (empty: every port)."""

    to: tuple[Peer, ...] = ()
    ports: tuple[PolicyPort, ...] = ()

    @classmethod
    def from_api(cls, obj: object, path: str) -> EgressRule:
        found = mapping_of(obj, path)
        return cls(
            each_of(found.get("to"), f"{path}.to", Peer.from_api),
            each_of(found.get("ports"), f"{path}.ports", PolicyPort.from_api),
        )


@dataclass(frozen=True)
class NetworkPolicy:
    """A namespaced NetworkPolicy's egress half: the pods it selects and what they may reach.

    `egress` only counts when `"Egress" in policy_types`; then an empty `egress` denies every
    destination (a default deny), and `egress: [{}]` allows every one.
    """

    namespace: str
    name: str
    pod_selector: LabelSelector
    policy_types: frozenset[str]
    egress: tuple[EgressRule, ...] = ()

    @property
    def key(self) -> str:
        """`namespace/name`, as the diagnosis names it."""
        return f"{self.namespace}/{self.name}"

    @property
    def limits_egress(self) -> bool:
        return "Egress" in self.policy_types

    @classmethod
    def from_api(cls, obj: Mapping[str, Any]) -> NetworkPolicy:
        """The policy in `obj` (a networking.k8s.io/v1 NetworkPolicy as JSON); SpecError naming
        the policy and the field path otherwise."""
        metadata = mapping_of(obj.get("metadata"), "metadata")
        name = field_of(metadata, "name", "metadata", str) or ""
        namespace = field_of(metadata, "namespace", "metadata", str) or "default"
        try:
            return cls._from_spec(namespace, name, mapping_of(obj.get("spec"), "spec"))
        except SpecError as error:
            raise SpecError(
                f"NetworkPolicy {namespace}/{name}: {error.path}", error.problem
            ) from None

    @classmethod
    def _from_spec(cls, namespace: str, name: str, spec: Mapping[str, Any]) -> NetworkPolicy:
        if not name:
            raise SpecError("metadata.name", "required")
        if "podSelector" not in spec:
            # the API requires it: `podSelector: {}` selects every pod, absent is a typo
            raise SpecError("spec.podSelector", "required (use {} to select every pod)")
        selector = LabelSelector.from_api(spec["podSelector"], "spec.podSelector")
        rules = each_of(spec.get("egress"), "spec.egress", EgressRule.from_api)
        types = spec.get("policyTypes")
        if types is None:
            # the API server's defaulting: Ingress always, Egress when there are egress rules
            found = {"Ingress", "Egress"} if rules else {"Ingress"}
        else:
            found = set(list_of(types, "spec.policyTypes"))
            if unknown := sorted(map(str, found - set(_POLICY_TYPES))):
                raise SpecError("spec.policyTypes", f"{unknown} not in {_POLICY_TYPES}")
        return cls(namespace, name, selector, frozenset(found), rules)
