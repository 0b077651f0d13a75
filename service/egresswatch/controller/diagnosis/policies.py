"""The derived step `network_policy`: what the cluster's NetworkPolicies say of the packets a
pod source's failing step sent.

`judge` finds the failing step's destination in its evidence (the cluster resolver for
`dns_cluster`, judged as DNS to kube-dns; the upstream resolver on port 53 for `dns_upstream`;
the address and port `tcp_connect` aimed at, which is the proxy's when the round went through
one; the same connection for `tls_handshake` and `http_response`) and asks the evaluator
(kube/netpol.py) through the `PolicyView` the controller was given. Only failures where the
packets got no answer are judged: a policy drops packets, it cannot make a resolver answer
NXDOMAIN or a server present the wrong certificate.

Pure: no I/O, no clock (the view reads the watch cache in memory).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from egresswatch.controller.diagnosis.findings import BLOCKED, DNS_UNANSWERED, listing, tcp_of
from egresswatch.evidence import DnsEvidence, TlsEvidence
from egresswatch.kube.netpol import (
    Destination,
    EgressDecision,
    PodRef,
    PolicyView,
    evaluate_dns,
    evaluate_egress,
)
from egresswatch.model import RoundResult, Step, StepResult, evidence_of

__all__ = ["PolicyEvidence", "judge"]


@dataclass(frozen=True)
class PolicyEvidence:
    """The `network_policy` step's evidence: for the pod behind the source, whether the
    NetworkPolicies allow the failing step's packets to `destination`.

    `selecting` are the policies (namespace/name) that isolate the pod for egress, `allowing`
    those of them that allow the packets (empty when `allowed` comes from no policy selecting
    the pod), `why` the evaluator's sentence, `not_evaluated` the other policy kinds present
    (CiliumNetworkPolicy, Calico's), which nobody judged.
    """

    step: Step
    pod: str
    destination: str
    allowed: bool
    selecting: tuple[str, ...]
    allowing: tuple[str, ...]
    why: str
    not_evaluated: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The facts' shape: JSON-able, one key per field."""
        return {
            "step": self.step.value,
            "pod": self.pod,
            "destination": self.destination,
            "allowed": self.allowed,
            "selecting": list(self.selecting),
            "allowing": list(self.allowing),
            "why": self.why,
            "not_evaluated": list(self.not_evaluated),
        }

    @property
    def sentences(self) -> tuple[str, ...]:
        """The evidence a verdict quotes: the decision, then what was not evaluated."""
        if not self.allowed:
            found = [f"network_policy: {self.why}"]
        elif self.not_evaluated:
            found = [f"the NetworkPolicies allow it: {self.why}"]
        else:
            found = [f"network_policy ruled out: {self.why}"]
        if self.not_evaluated:
            kinds = listing(list(self.not_evaluated))
            found.append(f"present and not evaluated: {kinds}: look at them too")
        return tuple(found)

    @property
    def command(self) -> str:
        """`kubectl describe networkpolicy -n shop a b`, else the namespace's list."""
        namespace = self.pod.split("/", 1)[0]
        names = [key.split("/", 1)[1] for key in self.selecting]
        if not names:
            return f"kubectl get networkpolicy -n {namespace}"
        return f"kubectl describe networkpolicy -n {namespace} {' '.join(names)}"


def judge(
    view: PolicyView, source: str, failing: StepResult, round_: RoundResult
) -> PolicyEvidence | None:
    """The NetworkPolicies' word on `failing` (a step of `round_` from the pod source `source`);
    None when the view does not know the pod, the failure is not one a policy causes, or the
    step's evidence does not say where its packets went."""
    reasons = DNS_UNANSWERED if failing.step in (Step.DNS_CLUSTER, Step.DNS_UPSTREAM) else BLOCKED
    if not failing.failed or failing.reason not in reasons:
        return None
    pod = view.pod(source)
    if pod is None:
        return None
    if failing.step is Step.DNS_CLUSTER:
        return _cluster_dns(view, pod, failing)
    destinations = _destinations(failing, round_)
    if not destinations:
        return None
    snapshot = view.snapshot()
    decisions = [(d, evaluate_egress(snapshot, pod, d)) for d in destinations]
    destination, decision = next(((d, x) for d, x in decisions if not x.allowed), decisions[0])
    return _evidence(failing.step, pod, str(destination), decision)


def _cluster_dns(view: PolicyView, pod: PodRef, failing: StepResult) -> PolicyEvidence | None:
    dns = evidence_of(failing, DnsEvidence)
    resolver = _resolver(dns)
    found = evaluate_dns(view.snapshot(), pod, resolver=resolver, protocols=_protocols(dns))
    protocol, decision = next(
        ((p, d) for p, d in found.decisions.items() if not d.allowed),
        next(iter(found.decisions.items())),
    )
    where = f"kube-dns ({resolver}:53/{protocol})" if resolver else f"kube-dns (53/{protocol})"
    return _evidence(failing.step, pod, where, decision)


def _destinations(failing: StepResult, round_: RoundResult) -> list[Destination]:
    """Where the failing step's packets went, per protocol it used."""
    if failing.step is Step.DNS_UPSTREAM:
        dns = evidence_of(failing, DnsEvidence)
        resolver = _resolver(dns)
        return [Destination(resolver, 53, p) for p in _protocols(dns)] if resolver else []
    # tls_handshake and http_response ride tcp_connect's connection (the proxy's, through one)
    tcp = tcp_of(failing) or tcp_of(round_.step(Step.TCP_CONNECT))
    if tcp is not None and tcp.aimed_at and tcp.port is not None:
        return [Destination(tcp.aimed_at, tcp.port)]
    tls = evidence_of(round_.step(Step.TLS_HANDSHAKE), TlsEvidence)
    if tls is not None and tls.address and tls.port is not None:
        return [Destination(tls.address, tls.port)]
    return []


def _resolver(dns: DnsEvidence | None) -> str | None:
    if dns is None:
        return None
    return dns.resolver or next((t.server for t in dns.tried if t.server), None)


def _protocols(dns: DnsEvidence | None) -> tuple[str, ...]:
    """The protocols the queries used (udp, then tcp after a truncated answer), UDP if unsaid."""
    asked = [t.proto.upper() for t in dns.tried if t.proto] if dns is not None else []
    found = tuple(dict.fromkeys(p for p in asked if p in ("UDP", "TCP")))
    return found or ("UDP",)


def _evidence(step: Step, pod: PodRef, where: str, decision: EgressDecision) -> PolicyEvidence:
    return PolicyEvidence(
        step,
        pod.key,
        where,
        decision.allowed,
        decision.selecting,
        decision.allowing,
        decision.why,
        decision.not_evaluated,
    )
