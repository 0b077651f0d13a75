"""The diagnosis rules, table-driven: one case per rule and per precedence decision.

Rounds are built by hand with the evidence types the probes really write (evidence.py), so a
case reads like the checklist a person would have filled in. docs/diagnosis.md is the table
these cases check.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from ipaddress import ip_network
from typing import Any

import pytest

from egresswatch.controller.diagnosis.rules import Context, Observation, diagnose
from egresswatch.evidence import (
    DnsEvidence,
    DnsTry,
    Evidence,
    HttpEvidence,
    NotRun,
    ResetCheck,
    TcpAttempt,
    TcpEvidence,
    TlsEvidence,
    TraceEvidence,
    TraceHop,
)
from egresswatch.model import (
    PROBE_STEPS,
    Endpoint,
    Reason,
    Role,
    RoundResult,
    SourceKind,
    Status,
    Step,
    StepResult,
    Suspect,
    Verdict,
)
from egresswatch.steps import stored_evidence

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
HOST = "microsoft.com"
IP = "20.70.246.20"
WRONG_IP = "20.70.246.99"  # what a stale or hijacked cluster record answers
ENDPOINT = Endpoint.parse(f"https://{HOST}/")
CLUSTER_DNS = "10.0.0.10"
UPSTREAM = "168.63.129.16"
FIREWALL = "10.1.0.4"  # inside the configured egress device network
DEVICES = (ip_network("10.1.0.0/26"),)
CONTEXT = Context(egress_devices=DEVICES, upstream=UPSTREAM)
PROXY_URL = "http://10.1.1.1:3128"

NC = f"nc -z -v -w 5 {IP} 443"
CURL = f"curl -Iv https://{HOST}/"
NSLOOKUP = f"nslookup {HOST}"
NSLOOKUP_UPSTREAM = f"nslookup {HOST} {UPSTREAM}"


# --- builders: one step at a time, with the probes' evidence types --------------------------


def ok(step: Step, evidence: Evidence) -> StepResult:
    return StepResult(step, Status.OK, None, 0.01, "", evidence)


def fail(step: Step, reason: Reason | None, evidence: Evidence | None = None) -> StepResult:
    return StepResult(step, Status.FAIL, reason, 0.01, "", evidence or NotRun())


def skipped(step: Step, reason: Reason) -> StepResult:
    return StepResult(step, Status.SKIPPED, reason, 0.0, f"{step.value} skipped")


_RCODES = {
    Reason.NXDOMAIN: "NXDOMAIN",
    Reason.SERVFAIL: "SERVFAIL",
    Reason.REFUSED: "REFUSED",
    Reason.NO_DATA: "NOERROR",
}


def dns(step: Step, reason: Reason | None = None) -> StepResult:
    """A DNS step as probes/dns.py reports it: ok with an address, or failing with `reason`."""
    server = CLUSTER_DNS if step is Step.DNS_CLUSTER else UPSTREAM
    names: tuple[str, ...] = (f"{HOST}.default.svc.cluster.local.", f"{HOST}.")
    if step is Step.DNS_UPSTREAM:
        names = (f"{HOST}.",)
    rcode = _RCODES.get(reason, "TIMEOUT") if reason else "NOERROR"
    tried = tuple(DnsTry(n, "A", server, rcode, 1.0) for n in names)
    evidence = DnsEvidence(resolver=server, candidates=names, tried=tried)
    if reason is None:
        return ok(step, replace(evidence, addresses=(IP,), name=f"{HOST}."))
    return fail(step, reason, evidence)


def tcp(
    reason: Reason | None = None,
    *,
    icmp_from: str | None = None,
    address: str = IP,
    port: int = 443,
    ip_source: str = "dns_cluster",
) -> StepResult:
    ms = 5000.0 if reason is Reason.CONN_TIMEOUT else 1.2
    attempt = TcpAttempt(address, reason.value if reason else "ok", ms, icmp_from)
    evidence = TcpEvidence(None, port, ip_source, (attempt,))
    if reason is None:
        return ok(Step.TCP_CONNECT, replace(evidence, address=address))
    return fail(Step.TCP_CONNECT, reason, evidence)


def tls(
    reason: Reason | None = None,
    *,
    issuer: str | None = "CN=Microsoft Azure RSA TLS Issuing CA 04",
    subject: str = f"CN={HOST}",
    verify_error: str | None = None,
) -> StepResult:
    evidence = TlsEvidence(
        address=IP,
        port=443,
        server_name=HOST,
        issuer=issuer,
        subject=subject,
        verify_error=verify_error,
    )
    if reason is None:
        return ok(Step.TLS_HANDSHAKE, evidence)
    return fail(Step.TLS_HANDSHAKE, reason, evidence)


def http(
    reason: Reason | None = None,
    *,
    status: int | None = 200,
    proxy_status: int | None = None,
    via_proxy: str | None = None,
    server: str | None = None,
) -> StepResult:
    evidence = HttpEvidence(
        url=ENDPOINT.url,
        address=None if via_proxy else IP,
        via_proxy=via_proxy,
        expected="200-399",
        status=status,
        proxy_status=proxy_status,
        server=server,
    )
    if reason is None:
        return ok(Step.HTTP_RESPONSE, evidence)
    return fail(Step.HTTP_RESPONSE, reason, evidence)


def unprompted_reset() -> StepResult:
    """tcp_connect as the round reads it when the endpoint resets whatever is sent."""
    check = ResetCheck("tls_handshake", "reset", "conn_reset", 150.0, 0.4)
    attempt = TcpAttempt(IP, Reason.CONN_RESET.value, 1.2)
    evidence = TcpEvidence(None, 443, "dns_cluster", (attempt,), reset_check=check)
    return fail(Step.TCP_CONNECT, Reason.CONN_RESET, evidence)


def trace(last_hop: str | None, *, reason: Reason | None = Reason.CONN_TIMEOUT) -> StepResult:
    """A path_trace through 10.224.0.1 and `last_hop`: stopping there, or (`reason` None)
    reaching the destination one hop later.
    """
    hops = [TraceHop(1, "10.224.0.1", icmp="time_exceeded")]
    if last_hop is not None:
        hops.append(TraceHop(2, last_hop, icmp="time_exceeded"))
    evidence = TraceEvidence(destination=IP, port=443)
    if reason is None:
        hops.append(TraceHop(len(hops) + 1, IP, reached=True))
        reached = replace(evidence, hops=tuple(hops), last_hop=IP, reached=True, stopped="reached")
        return ok(Step.PATH_TRACE, reached)
    hops.append(TraceHop(len(hops) + 1))
    stopped = replace(evidence, hops=tuple(hops), last_hop=last_hop, stopped="silent")
    return fail(Step.PATH_TRACE, reason, stopped)


def healthy_steps() -> dict[Step, StepResult]:
    return {
        Step.DNS_CLUSTER: dns(Step.DNS_CLUSTER),
        Step.DNS_UPSTREAM: dns(Step.DNS_UPSTREAM),
        Step.TCP_CONNECT: tcp(),
        Step.TLS_HANDSHAKE: tls(),
        Step.HTTP_RESPONSE: http(),
        Step.PATH_TRACE: skipped(Step.PATH_TRACE, Reason.NOT_DUE),
    }


def rnd(*changes: StepResult, source: str = "pod-a", blocked: bool = False) -> RoundResult:
    """A healthy round with `changes` replacing steps; `blocked`: tls and http could not run."""
    steps = healthy_steps()
    if blocked:
        for step in (Step.TLS_HANDSHAKE, Step.HTTP_RESPONSE):
            steps[step] = skipped(step, Reason.DEPENDENCY_FAILED)
    for change in changes:
        steps[change.step] = change
    return RoundResult("microsoft", source, T0, tuple(steps[s] for s in PROBE_STEPS))


def obs(
    round_: RoundResult,
    *,
    source: str | None = None,
    kind: SourceKind = SourceKind.POD,
    target: str = "microsoft",
    role: Role = Role.ENDPOINT,
    node: str | None = None,
) -> Observation:
    name = source or round_.source
    return Observation(name, kind, target, role, ENDPOINT, replace(round_, source=name), node)


def control(round_: RoundResult, target: str) -> Observation:
    return obs(round_, target=target, role=Role.CONTROL)


TIMED_OUT = rnd(tcp(Reason.CONN_TIMEOUT), blocked=True)
K8S_DOWN = control(TIMED_OUT, "kubernetes.io")
GOOGLE_DOWN = control(TIMED_OUT, "google.com")
K8S_UP = control(rnd(), "kubernetes.io")


# --- the table -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    name: str
    this: Observation
    suspect: Suspect
    rule: str
    command: str | None
    says: tuple[str, ...] = ()  # substrings the evidence must contain
    controls: tuple[Observation, ...] = ()
    peers: tuple[Observation, ...] = ()
    context: Context = CONTEXT
    first: Step | None = field(default=None)

    def __post_init__(self) -> None:
        if self.first is None:
            object.__setattr__(self, "first", self.this.round.first_failing_step)


CASES = [
    # 1. nothing failed
    Case("healthy", obs(rnd()), Suspect.UNKNOWN, "healthy", None, ("no step failed",)),
    Case(
        "healthy but a probe broke",
        obs(rnd(StepResult(Step.TLS_HANDSHAKE, Status.ERROR, Reason.PROBE_ERROR, 0, "bad CA"))),
        Suspect.UNKNOWN,
        "healthy",
        None,
        ("tls_handshake probe broke: bad CA",),
    ),
    # 2. DNS
    Case(
        "cluster SERVFAIL, upstream answers",
        obs(rnd(dns(Step.DNS_CLUSTER, Reason.SERVFAIL))),
        Suspect.CLUSTER_DNS,
        "cluster_fails",
        NSLOOKUP,
        (
            f"cluster DNS {CLUSTER_DNS} answered SERVFAIL for {HOST}.",
            f"upstream {UPSTREAM} answered {IP}",
        ),
    ),
    Case(
        "cluster NXDOMAIN, upstream answers: stub domain or forwarding",
        obs(rnd(dns(Step.DNS_CLUSTER, Reason.NXDOMAIN))),
        Suspect.CLUSTER_DNS,
        "cluster_name_absent",
        NSLOOKUP,
        (f"cluster DNS {CLUSTER_DNS} answered NXDOMAIN for {HOST}.",),
    ),
    Case(
        "NXDOMAIN from both",
        obs(rnd(dns(Step.DNS_CLUSTER, Reason.NXDOMAIN), dns(Step.DNS_UPSTREAM, Reason.NXDOMAIN))),
        Suspect.NAME_NOT_FOUND,
        "name_absent_upstream",
        NSLOOKUP_UPSTREAM,
        (f"upstream {UPSTREAM} answered NXDOMAIN for {HOST}.",),
    ),
    Case(
        "NODATA from cluster, NXDOMAIN upstream",
        obs(rnd(dns(Step.DNS_CLUSTER, Reason.NO_DATA), dns(Step.DNS_UPSTREAM, Reason.NXDOMAIN))),
        Suspect.NAME_NOT_FOUND,
        "name_absent_upstream",
        NSLOOKUP_UPSTREAM,
        ("no address record (NODATA)",),
    ),
    Case(
        "cluster NXDOMAIN, no upstream configured",
        obs(
            rnd(
                dns(Step.DNS_CLUSTER, Reason.NXDOMAIN),
                skipped(Step.DNS_UPSTREAM, Reason.NOT_CONFIGURED),
            )
        ),
        Suspect.NAME_NOT_FOUND,
        "name_absent_only_resolver",
        NSLOOKUP,
        ("configure dns.upstream",),
    ),
    Case(
        "cluster SERVFAIL, no upstream configured",
        obs(
            rnd(
                dns(Step.DNS_CLUSTER, Reason.SERVFAIL),
                skipped(Step.DNS_UPSTREAM, Reason.NOT_CONFIGURED),
            )
        ),
        Suspect.CLUSTER_DNS,
        "cluster_fails_no_upstream",
        NSLOOKUP,
        ("upstream was not asked (not_configured",),
    ),
    Case(
        "both time out, nobody to compare with: upstream outage",
        obs(
            rnd(
                dns(Step.DNS_CLUSTER, Reason.DNS_TIMEOUT),
                dns(Step.DNS_UPSTREAM, Reason.DNS_TIMEOUT),
            )
        ),
        Suspect.UPSTREAM_DNS,
        "upstream_fails",
        NSLOOKUP_UPSTREAM,
        (f"upstream {UPSTREAM} did not answer for {HOST}. (dns_timeout)",),
    ),
    Case(
        "upstream unreachable, cluster fine",
        obs(rnd(dns(Step.DNS_UPSTREAM, Reason.NET_UNREACHABLE))),
        Suspect.UPSTREAM_DNS,
        "upstream_fails",
        NSLOOKUP_UPSTREAM,
        (f"upstream {UPSTREAM} could not be asked for {HOST}. (net_unreachable)",),
    ),
    Case(
        "both SERVFAIL: cluster forwards to a failing upstream",
        obs(rnd(dns(Step.DNS_CLUSTER, Reason.SERVFAIL), dns(Step.DNS_UPSTREAM, Reason.SERVFAIL))),
        Suspect.UPSTREAM_DNS,
        "upstream_fails",
        NSLOOKUP_UPSTREAM,
    ),
    Case(
        "upstream NXDOMAIN for a name cluster DNS resolves",
        obs(rnd(dns(Step.DNS_UPSTREAM, Reason.NXDOMAIN))),
        Suspect.UPSTREAM_DNS,
        "upstream_name_absent",
        NSLOOKUP_UPSTREAM,
    ),
    Case(
        "upstream unreachable from a pod only: a node asks it fine",
        obs(
            rnd(
                dns(Step.DNS_CLUSTER, Reason.DNS_TIMEOUT),
                dns(Step.DNS_UPSTREAM, Reason.DNS_TIMEOUT),
            )
        ),
        Suspect.NETWORK_POLICY,
        "pod_fails_node_works",
        NSLOOKUP_UPSTREAM,
        ("dns_upstream works from node aks-node-1",),
        peers=(obs(rnd(), source="aks-node-1", kind=SourceKind.NODE),),
    ),
    Case(
        "cluster DNS silent for this pod only",
        obs(rnd(dns(Step.DNS_CLUSTER, Reason.DNS_TIMEOUT))),
        Suspect.SOURCE_LOCAL,
        "only_this_source_fails",
        NSLOOKUP,
        ("dns_cluster works from every other source: pod pod-b",),
        # a node's resolver is not CoreDNS: it does not count for dns_cluster
        peers=(
            obs(rnd(), source="pod-b"),
            obs(rnd(dns(Step.DNS_CLUSTER, Reason.DNS_TIMEOUT)), source="n1", kind=SourceKind.NODE),
        ),
    ),
    Case(
        "cluster SERVFAIL while the upstream is up elsewhere but silent here",
        obs(
            rnd(dns(Step.DNS_CLUSTER, Reason.SERVFAIL), dns(Step.DNS_UPSTREAM, Reason.DNS_TIMEOUT))
        ),
        Suspect.CLUSTER_DNS,
        "cluster_fails",
        NSLOOKUP,
        ("dns_upstream works from aks-node-1",),
        peers=(obs(rnd(), source="aks-node-1", kind=SourceKind.NODE),),
    ),
    Case(
        "DNS first, later failures listed",
        obs(rnd(dns(Step.DNS_CLUSTER, Reason.SERVFAIL), tcp(Reason.CONN_TIMEOUT), blocked=True)),
        Suspect.CLUSTER_DNS,
        "cluster_fails",
        NSLOOKUP,
        ("also failing: tcp_connect (conn_timeout)",),
    ),
    # 3. only the trace
    Case(
        "only path_trace fails",
        obs(rnd(trace("10.2.0.1"))),
        Suspect.UNKNOWN,
        "trace_only",
        f"traceroute -T -p 443 {IP}",
        (f"path_trace to {IP}:443 stopped at hop 2 (10.2.0.1): conn_timeout",),
    ),
    # 4. signatures
    Case(
        "proxy wants credentials",
        obs(
            rnd(
                skipped(Step.TLS_HANDSHAKE, Reason.PROXY_AUTH_REQUIRED),
                http(
                    Reason.PROXY_AUTH_REQUIRED,
                    status=407,
                    proxy_status=407,
                    via_proxy="proxy 10.1.1.1:3128 (config)",
                ),
            )
        ),
        Suspect.PROXY,
        "proxy_refuses",
        f"curl -Iv --proxy {PROXY_URL} https://{HOST}/",
        ("proxy 10.1.1.1:3128 (config) answered 407 to CONNECT",),
        context=replace(CONTEXT, proxy=PROXY_URL),
    ),
    Case(
        "proxy denies while every control fails too: the proxy is more specific",
        obs(rnd(http(Reason.PROXY_DENIED, status=403, proxy_status=403))),
        Suspect.PROXY,
        "proxy_refuses",
        CURL,
        ("answered 403 to CONNECT",),
        controls=(control(rnd(http(Reason.PROXY_DENIED, status=403)), "kubernetes.io"),),
    ),
    Case(
        "proxy unreachable",
        obs(
            rnd(
                tcp(Reason.CONN_REFUSED, address="10.1.1.1", port=3128, ip_source="proxy"),
                blocked=True,
            )
        ),
        Suspect.PROXY,
        "proxy_unreachable",
        "nc -z -v -w 5 10.1.1.1 3128",
        ("tcp_connect (the proxy): 10.1.1.1:3128 conn_refused",),
    ),
    Case(
        "HTTP 470 from Azure Firewall",
        obs(rnd(http(Reason.FIREWALL_DENIED, status=470))),
        Suspect.FIREWALL,
        "firewall_refuses",
        CURL,
        ("answered 470",),
    ),
    Case(
        "reset right after the ClientHello",
        obs(
            rnd(
                tls(Reason.FIREWALL_DENIED, issuer=None),
                skipped(Step.HTTP_RESPONSE, Reason.DEPENDENCY_FAILED),
            )
        ),
        Suspect.FIREWALL,
        "firewall_refuses",
        CURL,
        (f"tls_handshake with {HOST} at {IP}:443: firewall_denied",),
    ),
    Case(
        # The same, told apart: a connection that sent nothing stayed up.
        "reset after the ClientHello, an idle connection stays up",
        obs(
            rnd(
                replace(
                    tls(Reason.FIREWALL_DENIED, issuer=None),
                    evidence=replace(
                        TlsEvidence(address=IP, port=443, server_name=HOST),
                        reset_check=ResetCheck("tls_handshake", "reset", "ok", 150.0, 151.2),
                    ),
                ),
                skipped(Step.HTTP_RESPONSE, Reason.DEPENDENCY_FAILED),
            )
        ),
        Suspect.FIREWALL,
        "firewall_refuses",
        CURL,
        ("a second connection that sent nothing stayed up for 150 ms: the peer reacted",),
    ),
    Case(
        "silent drop, the trace stops at the egress device",
        obs(rnd(tcp(Reason.CONN_TIMEOUT), trace(FIREWALL), blocked=True)),
        Suspect.FIREWALL,
        "egress_device_stops_it",
        NC,
        (f"stopped at hop 2 ({FIREWALL}, in egress device 10.1.0.0/26)",),
    ),
    Case(
        "silent drop at the egress device while every control fails: egress_path, device named",
        obs(rnd(tcp(Reason.CONN_TIMEOUT), trace(FIREWALL), blocked=True)),
        Suspect.EGRESS_PATH,
        "every_control_fails",
        NC,
        (f"stopped at hop 2 ({FIREWALL}, in egress device 10.1.0.0/26)",),
        controls=(K8S_DOWN, GOOGLE_DOWN),
    ),
    Case(
        "ICMP refusal from the egress device while every control fails: still firewall",
        obs(rnd(tcp(Reason.FIREWALL_DENIED, icmp_from=FIREWALL), blocked=True)),
        Suspect.FIREWALL,
        "egress_device_stops_it",
        NC,
        controls=(K8S_DOWN, GOOGLE_DOWN),
    ),
    Case(
        "ICMP admin-prohibited from the egress device",
        obs(rnd(tcp(Reason.FIREWALL_DENIED, icmp_from=FIREWALL), blocked=True)),
        Suspect.FIREWALL,
        "egress_device_stops_it",
        NC,
        (f"{IP}:443 firewall_denied after 1.2 ms (ICMP from {FIREWALL}, in egress device",),
    ),
    Case(
        "host unreachable said by the egress device",
        obs(rnd(tcp(Reason.HOST_UNREACHABLE, icmp_from=FIREWALL), blocked=True)),
        Suspect.FIREWALL,
        "egress_device_stops_it",
        NC,
    ),
    # 5. source comparison
    Case(
        "pod fails, node works",
        obs(TIMED_OUT),
        Suspect.NETWORK_POLICY,
        "pod_fails_node_works",
        NC,
        ("tcp_connect works from node aks-node-1", "fails from pod-b too"),
        peers=(
            obs(rnd(), source="aks-node-1", kind=SourceKind.NODE),
            obs(TIMED_OUT, source="pod-b"),
        ),
    ),
    Case(
        "pod fails, node works, every control fails: network_policy before egress_path",
        obs(TIMED_OUT),
        Suspect.NETWORK_POLICY,
        "pod_fails_node_works",
        NC,
        ("every control fails from pod-a too",),
        controls=(K8S_DOWN, GOOGLE_DOWN),
        peers=(obs(rnd(), source="aks-node-1", kind=SourceKind.NODE),),
    ),
    Case(
        "one node fails, the others work",
        obs(TIMED_OUT, source="aks-node-2", kind=SourceKind.NODE),
        Suspect.SOURCE_LOCAL,
        "only_this_source_fails",
        NC,
        ("tcp_connect works from every other source: node aks-node-1, pod pod-b",),
        peers=(
            obs(rnd(), source="aks-node-1", kind=SourceKind.NODE),
            obs(rnd(), source="pod-b"),
        ),
    ),
    Case(
        "a pod is compared with its own node first",
        obs(TIMED_OUT, node="aks-node-1"),
        Suspect.NETWORK_POLICY,
        "pod_fails_node_works",
        NC,
        ("tcp_connect works from its own node aks-node-1",),
        peers=(
            obs(rnd(), source="aks-node-1", kind=SourceKind.NODE),
            obs(TIMED_OUT, source="aks-node-2", kind=SourceKind.NODE),
            obs(rnd(), source="aks-node-3", kind=SourceKind.NODE),
        ),
    ),
    Case(
        "a pod whose own node fails where the other nodes work: the node",
        obs(TIMED_OUT, node="aks-node-2"),
        Suspect.SOURCE_LOCAL,
        "node_fails_others_work",
        NC,
        (
            "tcp_connect fails from its own node aks-node-2 too",
            "tcp_connect works from every other node: aks-node-1",
        ),
        peers=(
            obs(rnd(), source="aks-node-1", kind=SourceKind.NODE),
            obs(TIMED_OUT, source="aks-node-2", kind=SourceKind.NODE),
        ),
    ),
    Case(
        "one node fails with its pods, the other nodes work: that node",
        obs(TIMED_OUT, source="aks-node-2", kind=SourceKind.NODE),
        Suspect.SOURCE_LOCAL,
        "node_fails_others_work",
        NC,
        ("tcp_connect works from every other node: aks-node-1, aks-node-3",),
        peers=(
            obs(rnd(), source="aks-node-1", kind=SourceKind.NODE),
            obs(rnd(), source="aks-node-3", kind=SourceKind.NODE),
            obs(TIMED_OUT, source="pod-on-2", node="aks-node-2"),
        ),
    ),
    Case(
        "one pod fails, another pod works, no node",
        obs(TIMED_OUT),
        Suspect.SOURCE_LOCAL,
        "only_this_source_fails",
        NC,
        peers=(obs(rnd(), source="pod-b"),),
    ),
    Case(
        "pods split: no comparison concludes, the shape does",
        obs(TIMED_OUT),
        Suspect.NSG_OR_ROUTE,
        "silent_drop",
        NC,
        peers=(obs(rnd(), source="pod-b"), obs(TIMED_OUT, source="pod-c")),
    ),
    Case(
        "pod gets an untrusted certificate where a node does not: not compared, interception",
        obs(rnd(tls(Reason.TLS_UNTRUSTED, issuer="CN=Contoso Inspection CA"))),
        Suspect.TLS_INTERCEPTION,
        "issuer_differs",
        CURL,
        ("aks-node-1 is shown a trusted certificate issued by CN=Microsoft Azure RSA",),
        peers=(obs(rnd(), source="aks-node-1", kind=SourceKind.NODE),),
    ),
    # 6. egress-wide
    Case(
        "every control fails too",
        obs(TIMED_OUT),
        Suspect.EGRESS_PATH,
        "every_control_fails",
        NC,
        (
            "every control fails from pod-a too: kubernetes.io (tcp_connect conn_timeout), "
            "google.com (tcp_connect conn_timeout)",
        ),
        controls=(K8S_DOWN, GOOGLE_DOWN),
    ),
    Case(
        "a control of its own: the other controls decide",
        obs(TIMED_OUT, target="kubernetes.io", role=Role.CONTROL),
        Suspect.EGRESS_PATH,
        "every_control_fails",
        NC,
        ("google.com (tcp_connect conn_timeout)",),
        controls=(K8S_UP, GOOGLE_DOWN),  # its own (working) row is not a control of itself
    ),
    Case(
        "one control works: not egress-wide",
        obs(TIMED_OUT),
        Suspect.NSG_OR_ROUTE,
        "silent_drop",
        NC,
        controls=(K8S_UP, GOOGLE_DOWN),
    ),
    Case(
        "a control answering 404 was reached: not egress-wide",
        obs(TIMED_OUT),
        Suspect.NSG_OR_ROUTE,
        "silent_drop",
        NC,
        controls=(control(rnd(http(Reason.HTTP_STATUS, status=404)), "kubernetes.io"),),
    ),
    # 7. shapes
    Case(
        "silent drop, the trace stops before any egress device",
        obs(rnd(tcp(Reason.CONN_TIMEOUT), trace("10.2.0.1"), blocked=True)),
        Suspect.NSG_OR_ROUTE,
        "silent_drop",
        NC,
        (f"tcp_connect (from dns_cluster): {IP}:443 conn_timeout after 5.0 s", "hop 2 (10.2.0.1)"),
    ),
    Case(
        "silent drop, no trace",
        obs(TIMED_OUT),
        Suspect.NSG_OR_ROUTE,
        "silent_drop",
        NC,
        ("no path_trace this round",),
    ),
    Case(
        "no route",
        obs(rnd(tcp(Reason.NET_UNREACHABLE, icmp_from="10.224.0.1"), blocked=True)),
        Suspect.NSG_OR_ROUTE,
        "no_route",
        NC,
        ("net_unreachable after 1.2 ms (ICMP from 10.224.0.1)",),
    ),
    Case(
        "ICMP admin-prohibited from a non-device sender",
        obs(rnd(tcp(Reason.FIREWALL_DENIED, icmp_from="10.224.0.1"), blocked=True)),
        Suspect.FIREWALL,
        "refused_by_filter",
        NC,
        ("10.224.0.1 is not a configured egress device",),
    ),
    Case(
        "RST from the endpoint",
        obs(rnd(tcp(Reason.CONN_REFUSED), blocked=True)),
        Suspect.ENDPOINT_DOWN,
        "endpoint_refuses",
        NC,
        (f"{IP}:443 conn_refused",),
    ),
    Case(
        "accepted then reset, no device on the path",
        obs(rnd(tcp(Reason.CONN_RESET), trace(None, reason=None), blocked=True)),
        Suspect.ENDPOINT_DOWN,
        "endpoint_resets",
        NC,
    ),
    Case(
        # tcp_connect sends nothing: a device on the path had nothing to inspect.
        "accepted then reset, an egress device on the path",
        obs(rnd(tcp(Reason.CONN_RESET), trace(FIREWALL, reason=None), blocked=True)),
        Suspect.ENDPOINT_DOWN,
        "endpoint_resets",
        NC,
        (f"egress device {FIREWALL} is on the path, but the reset came with nothing sent",),
    ),
    Case(
        "TLS cut, an egress device on the path",
        obs(
            rnd(
                tls(Reason.TLS_HANDSHAKE_FAILED, issuer=None),
                trace(FIREWALL, reason=None),
                skipped(Step.HTTP_RESPONSE, Reason.DEPENDENCY_FAILED),
            )
        ),
        Suspect.FIREWALL,
        "cut_on_device_path",
        CURL,
        (f"egress device {FIREWALL} is on the path",),
    ),
    Case(
        # One connection per round: the TLS handshake met the reset, and a second connection
        # that sent nothing was reset too (probes/resetcheck.py): a load balancer with no
        # healthy backend, whatever device is on the path.
        "reset whatever is sent, an egress device on the path",
        obs(rnd(unprompted_reset(), trace(FIREWALL, reason=None), blocked=True)),
        Suspect.ENDPOINT_DOWN,
        "endpoint_resets",
        NC,
        (
            "tls_handshake met the reset on the round's connection, and a second connection "
            "that sent nothing was reset too: the endpoint resets whatever is sent",
            f"egress device {FIREWALL} is on the path, but",
        ),
    ),
    Case(
        "untrusted issuer",
        obs(
            rnd(
                tls(
                    Reason.TLS_UNTRUSTED,
                    issuer="CN=Contoso Inspection CA",
                    verify_error="unable to get local issuer certificate",
                ),
                skipped(Step.HTTP_RESPONSE, Reason.DEPENDENCY_FAILED),
            )
        ),
        Suspect.TLS_INTERCEPTION,
        "untrusted_issuer",
        CURL,
        (
            "tls_untrusted (unable to get local issuer certificate), "
            "certificate issued by CN=Contoso Inspection CA",
        ),
    ),
    Case(
        "self-signed leaf: the endpoint's own certificate",
        obs(rnd(tls(Reason.TLS_UNTRUSTED, issuer=f"CN={HOST}", subject=f"CN={HOST}"))),
        Suspect.ENDPOINT_ERROR,
        "self_signed",
        CURL,
        ("self-signed",),
    ),
    Case(
        "expired certificate",
        obs(rnd(tls(Reason.TLS_EXPIRED, verify_error="certificate has expired"))),
        Suspect.ENDPOINT_ERROR,
        "certificate_invalid",
        CURL,
        ("tls_expired (certificate has expired)",),
    ),
    Case(
        "handshake refused by the endpoint",
        obs(rnd(tls(Reason.TLS_HANDSHAKE_FAILED))),
        Suspect.ENDPOINT_ERROR,
        "exchange_broken",
        CURL,
    ),
    Case(
        "HTTP 503",
        obs(rnd(http(Reason.HTTP_STATUS, status=503, server="nginx"))),
        Suspect.ENDPOINT_ERROR,
        "unexpected_status",
        CURL,
        (f"{ENDPOINT.url} answered 503 (expected 200-399), server nginx",),
    ),
    Case(
        "HTTP answer never came",
        obs(rnd(http(Reason.TIMEOUT, status=None))),
        Suspect.ENDPOINT_ERROR,
        "no_answer_in_time",
        CURL,
        (f"http_response for {ENDPOINT.url}: timeout",),
    ),
    # 8. anything else
    Case(
        "a failure without a shape",
        obs(rnd(fail(Step.TCP_CONNECT, Reason.PROBE_ERROR), trace("10.2.0.1"), blocked=True)),
        Suspect.UNKNOWN,
        "no_rule",
        f"nc -z -v -w 5 {HOST} 443",  # no address in the evidence: the host name
        ("tcp_connect: probe_error", "stopped at hop 2 (10.2.0.1)"),
    ),
    # Verdicts that hold (issue 11): the cluster's answer differs and only the upstream's works
    Case(
        "the cluster answers another address, only the upstream's connects",
        obs(
            rnd(
                ok(
                    Step.DNS_CLUSTER,
                    DnsEvidence(resolver=CLUSTER_DNS, addresses=(WRONG_IP,), name=f"{HOST}."),
                ),
                fail(
                    Step.TCP_CONNECT,
                    Reason.CONN_TIMEOUT,
                    TcpEvidence(
                        None,
                        443,
                        "dns_cluster",
                        (TcpAttempt(WRONG_IP, "conn_timeout", 400.0),),
                        other_source="dns_upstream",
                        other_answers=(TcpAttempt(IP, "ok", 1.1),),
                    ),
                ),
                trace(FIREWALL),
                blocked=True,
            )
        ),
        Suspect.CLUSTER_DNS,
        "cluster_answer_unreachable",
        f"{NSLOOKUP}; {NSLOOKUP_UPSTREAM}",
        (
            f"the cluster resolver answers {HOST} with {WRONG_IP}, the upstream resolver "
            f"{UPSTREAM} with {IP}",
            f"tcp_connect to the upstream's answer {IP} works",
        ),
        peers=(obs(rnd(), source="node-1", kind=SourceKind.NODE),),
    ),
    Case(
        "the answers differ and the upstream's fails too: not the cluster's answer",
        obs(
            rnd(
                ok(
                    Step.DNS_CLUSTER,
                    DnsEvidence(resolver=CLUSTER_DNS, addresses=(WRONG_IP,), name=f"{HOST}."),
                ),
                fail(
                    Step.TCP_CONNECT,
                    Reason.CONN_TIMEOUT,
                    TcpEvidence(
                        None,
                        443,
                        "dns_cluster",
                        (TcpAttempt(WRONG_IP, "conn_timeout", 400.0),),
                        other_source="dns_upstream",
                        other_answers=(TcpAttempt(IP, "conn_timeout", 400.0),),
                    ),
                ),
                blocked=True,
            )
        ),
        Suspect.NSG_OR_ROUTE,
        "silent_drop",
        f"nc -z -v -w 5 {WRONG_IP} 443",
    ),
    # ... egress blocked before DNS: the DNS failure is one face of it
    Case(
        "the egress device drops everything, the cluster's DNS queries too",
        obs(
            rnd(
                dns(Step.DNS_CLUSTER, Reason.SERVFAIL),
                dns(Step.DNS_UPSTREAM, Reason.DNS_TIMEOUT),
                tcp(Reason.CONN_TIMEOUT, ip_source="last_good"),
                trace(FIREWALL),
                blocked=True,
            )
        ),
        Suspect.EGRESS_PATH,
        "egress_blocked_dns_too",
        NC,
        (
            f"cluster DNS {CLUSTER_DNS} answered SERVFAIL",
            "every control fails from pod-a too",
            f"stopped at hop 2 ({FIREWALL}, in egress device 10.1.0.0/26)",
        ),
        controls=(K8S_DOWN, GOOGLE_DOWN),
        peers=(
            obs(rnd(tcp(Reason.CONN_TIMEOUT), blocked=True), source="node-1", kind=SourceKind.NODE),
        ),
    ),
    Case(
        "only the upstream resolver is down: the last good address still connects",
        obs(
            rnd(
                dns(Step.DNS_CLUSTER, Reason.SERVFAIL),
                dns(Step.DNS_UPSTREAM, Reason.DNS_TIMEOUT),
                tcp(ip_source="last_good"),
            )
        ),
        Suspect.UPSTREAM_DNS,
        "upstream_fails",
        NSLOOKUP_UPSTREAM,
        controls=(control(rnd(dns(Step.DNS_UPSTREAM, Reason.DNS_TIMEOUT)), "kubernetes.io"),),
    ),
    Case(
        "a pod blocked entirely, DNS too, where its node gets through: a policy",
        obs(
            rnd(
                dns(Step.DNS_CLUSTER, Reason.DNS_TIMEOUT),
                dns(Step.DNS_UPSTREAM, Reason.DNS_TIMEOUT),
                tcp(Reason.CONN_TIMEOUT, ip_source="last_good"),
                blocked=True,
            )
        ),
        Suspect.NETWORK_POLICY,
        "pod_fails_node_works",
        NC,
        ("tcp_connect works from node node-1",),
        controls=(K8S_DOWN,),
        peers=(obs(rnd(), source="node-1", kind=SourceKind.NODE),),
    ),
    # ... a proxy reporting the destination's failure points past the proxy
    Case(
        "the proxy reports it could not connect to the endpoint",
        obs(
            rnd(
                tcp(ip_source="proxy", address="10.1.1.1", port=3128),
                fail(
                    Step.TLS_HANDSHAKE,
                    Reason.DESTINATION_UNREACHABLE,
                    TlsEvidence(
                        server_name=HOST, via_proxy="proxy 10.1.1.1:3128 (config)", proxy_status=500
                    ),
                ),
                skipped(Step.HTTP_RESPONSE, Reason.DEPENDENCY_FAILED),
            )
        ),
        Suspect.ENDPOINT_DOWN,
        "proxy_reports_destination_down",
        f"curl -Iv --proxy {PROXY_URL} https://{HOST}/",
        ("the fault lies past the proxy",),
        context=replace(CONTEXT, proxy=PROXY_URL),
    ),
    # ... the next command follows the target's own path
    Case(
        "a direct target while a proxy is configured: no --proxy in the command",
        obs(rnd(http(Reason.HTTP_STATUS, status=503))),
        Suspect.ENDPOINT_ERROR,
        "unexpected_status",
        CURL,
        context=replace(CONTEXT, proxy=PROXY_URL),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_rule(case: Case) -> None:
    verdict = diagnose(case.this, controls=case.controls, peers=case.peers, context=case.context)
    assert (verdict.suspect, verdict.facts["rule"]) == (case.suspect, case.rule), verdict.evidence
    assert verdict.first_failing_step is case.first
    assert verdict.next_command == case.command
    text = " | ".join(verdict.evidence)
    for expected in case.says:
        assert expected in text
    json.dumps(verdict.facts)  # JSON-able, as the API serves it


def test_every_suspect_is_produced() -> None:
    assert {case.suspect for case in CASES} == set(Suspect)


def test_rule_ids_are_documented() -> None:
    from pathlib import Path

    doc = (Path(__file__).parent.parent / "docs" / "diagnosis.md").read_text()
    for rule in {case.rule for case in CASES}:
        assert f"`{rule}`" in doc, rule


def test_facts_name_the_inputs() -> None:
    """The facts carry what decided it: the source, the step, and the peers compared."""
    peers = (obs(rnd(), source="aks-node-1", kind=SourceKind.NODE),)
    verdict = diagnose(obs(TIMED_OUT), controls=(), peers=peers, context=CONTEXT)
    assert verdict.facts["source"] == "pod-a"
    assert verdict.facts["first_failing_step"] == "tcp_connect"
    assert verdict.facts["reason"] == "conn_timeout"
    assert verdict.facts["working_sources"] == ["aks-node-1"]
    assert verdict.facts["tcp_connect"]["icmp_from"] == []


def test_upstream_from_the_evidence_when_the_context_has_none() -> None:
    this = obs(rnd(dns(Step.DNS_UPSTREAM, Reason.SERVFAIL)))
    verdict = diagnose(this, controls=(), peers=(), context=Context())
    assert verdict.next_command == NSLOOKUP_UPSTREAM


# --- never raises, whatever storage read ------------------------------------------------------

_GARBAGE: list[dict[str, Any]] = [
    {},
    {"attempts": "x", "hops": 3, "tried": None, "addresses": "1.2.3.4"},
    {"attempts": [1, None, {"address": 5, "icmp_from": 7, "ms": "x"}], "port": "443"},
    {"hops": [{"ttl": True, "address": ["x"]}, None], "last_hop": 12, "destination": 1},
    {"address": "not-an-ip", "last_hop": "not-an-ip", "port": 99999, "issuer": 3},
    {"tried": [{"name": None, "rcode": 5}, "x"], "candidates": [None, 1], "resolver": ""},
    {"status": "200", "proxy_status": True, "via_proxy": 1, "url": None, "ip_source": "proxy"},
    {"icmp_from": FIREWALL, "last_hop": FIREWALL, "attempts": [{"icmp_from": FIREWALL}]},
    {"last_hop": "2001:db8::1", "attempts": [{"address": "2001:db8::1", "icmp_from": "::1"}]},
]


_STATUSES = list(Status)
_REASONS = [None, *Reason]
_KINDS = list(SourceKind)
_REALISTIC = {step: result.evidence.to_json() for step, result in healthy_steps().items()}


def _random_step(rng: random.Random, step: Step) -> StepResult:
    garbage = rng.random() < 0.5
    # Garbage as a row from a stranger version could hold it, read as storage reads it.
    evidence = stored_evidence(step, rng.choice(_GARBAGE) if garbage else _REALISTIC[step])
    status, reason = rng.choice(_STATUSES), rng.choice(_REASONS)
    return StepResult(step, status, reason, rng.random(), rng.choice(["", "detail"]), evidence)


def _random_round(rng: random.Random, source: str) -> RoundResult:
    steps = [_random_step(rng, s) for s in PROBE_STEPS if rng.random() < 0.95]
    rng.shuffle(steps)
    return RoundResult("microsoft", source, T0, tuple(steps))


def _random_observation(rng: random.Random, source: str, target: str = "microsoft") -> Observation:
    kind = rng.choice(_KINDS)
    return Observation(source, kind, target, Role.ENDPOINT, ENDPOINT, _random_round(rng, source))


def test_never_raises_on_any_combination() -> None:
    rng = random.Random(20260301)
    contexts = [Context(), CONTEXT, Context(egress_devices=(ip_network("2001:db8::/32"),))]
    for _ in range(3000):
        this = _random_observation(rng, "pod-a")
        controls = [
            _random_observation(rng, "pod-a", f"control-{i}") for i in range(rng.randint(0, 2))
        ]
        peers = [_random_observation(rng, f"peer-{i}") for i in range(rng.randint(0, 3))]
        verdict = diagnose(this, controls=controls, peers=peers, context=rng.choice(contexts))
        _check_shape(verdict, this)


def _check_shape(verdict: Verdict, this: Observation) -> None:
    assert isinstance(verdict.suspect, Suspect)
    assert verdict.first_failing_step is this.round.first_failing_step
    assert verdict.evidence and all(isinstance(s, str) and s for s in verdict.evidence)
    if verdict.first_failing_step is None:
        assert verdict.suspect is Suspect.UNKNOWN and verdict.next_command is None
    else:
        assert isinstance(verdict.next_command, str)
    json.dumps(verdict.facts)
