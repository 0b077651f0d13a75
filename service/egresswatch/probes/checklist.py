"""One round of the checklist for one target, steps 1-6 in order (DESIGN.md §1).

Steps run independently where they can: a DNS failure still lets `tcp_connect` try the last
good or a pinned IP, so a DNS outage does not hide whether the network path works. A step that
cannot run because an earlier one failed is `skipped` with `dependency_failed`, never `fail`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, MutableMapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from egresswatch.addresses import Nameserver, ProxyRoute
from egresswatch.evidence import DnsEvidence, NotRun, TcpEvidence
from egresswatch.model import (
    Endpoint,
    Reason,
    RoundResult,
    Scheme,
    Status,
    StatusRanges,
    Step,
    StepResult,
    evidence_of,
    is_ip_address,
)
from egresswatch.probes.base import blocked_by, guarded, skipped
from egresswatch.probes.dns import dns_cluster, dns_upstream
from egresswatch.probes.handover import Handover
from egresswatch.probes.http import http_response
from egresswatch.probes.overload import TIMEOUT_REASONS, Stalls, judge_timeout
from egresswatch.probes.resetcheck import tell_apart
from egresswatch.probes.resolvconf import load_resolv_conf
from egresswatch.probes.tcp import tcp_connect, try_address
from egresswatch.probes.tls import TlsOptions, tls_handshake
from egresswatch.probes.traceroute import path_trace


class TraceMode(StrEnum):
    ALWAYS = "always"  # `egresswatch check`: a person wants the whole picture
    ON_FAILURE = "on_failure"  # the service when the trace is not due: only if a step failed
    NEVER = "never"


@dataclass(frozen=True)
class ChecklistPlan:
    """Everything one round needs: the plan and the agent's own half (agent/checklists.py),
    resolved, so that probes never see the config or the plan."""

    target: str
    endpoint: Endpoint
    resolv_conf: Path
    upstream: Nameserver | None = None
    step_timeout_s: float = 5.0
    expect: StatusRanges = field(default_factory=StatusRanges)
    method: str = "GET"
    tls: TlsOptions = field(default_factory=TlsOptions)
    proxy: ProxyRoute | None = None  # already decided for this endpoint (config, env, NO_PROXY)
    pinned_ips: tuple[str, ...] = ()
    trace: TraceMode = TraceMode.ALWAYS
    trace_max_hops: int = 30
    trace_hop_timeout_s: float = 1.0
    round_timeout_s: float | None = None  # the whole round's budget; None: steps' own limits


MIN_STEP_S = 0.05  # less budget than this left: the step is skipped, not started to fail


class _Budget:
    """What is left of the round's time: each step gets min(its own limit, what is left).

    With `stalls` (the process's event loop stalls), a step that timed out while the loop
    was stalled for much of its budget is the prober's problem (probes/overload.py)."""

    def __init__(self, total_s: float | None, stalls: Stalls | None = None) -> None:
        loop = asyncio.get_running_loop()
        self._clock = loop.time
        self._deadline = None if total_s is None else loop.time() + total_s
        self._stalls = stalls

    def remaining(self) -> float | None:
        return None if self._deadline is None else self._deadline - self._clock()

    def has(self, seconds: float) -> bool:
        """Whether at least `seconds` are left (always, without a round budget)."""
        left = self.remaining()
        return left is None or left >= seconds

    async def run(
        self,
        step: Step,
        plan: ChecklistPlan,
        probe: Callable[[ChecklistPlan], Coroutine[Any, Any, StepResult]],
    ) -> StepResult:
        left = self.remaining()
        if left is not None and left < MIN_STEP_S:
            return skipped(
                step, Reason.TIMEOUT, "the round's time budget was spent before this step"
            )
        if left is not None and left < plan.step_timeout_s:
            plan = replace(
                plan, step_timeout_s=left, trace_hop_timeout_s=min(plan.trace_hop_timeout_s, left)
            )
        started = self._clock()
        result = await guarded(step, probe(plan))
        if self._stalls is None or result.reason not in TIMEOUT_REASONS:
            return result
        # A trace's hops time out one by one: each hop's budget is what a stall eats.
        budget = plan.trace_hop_timeout_s if step is Step.PATH_TRACE else plan.step_timeout_s
        stalled = self._stalls(started, self._clock())
        return judge_timeout(result, budget_s=budget, stalled_s=stalled)


# target name -> the last IP tcp_connect reached directly; the caller owns it across rounds.
KnownGood = MutableMapping[str, str]


async def run_checklist(
    plan: ChecklistPlan,
    *,
    source: str,
    known_good: KnownGood | None = None,
    now: datetime | None = None,
    stalls: Stalls | None = None,
    trace: TraceMode | None = None,
) -> RoundResult:
    """Run steps 1-6 for one target and return the round. Never raises (but can be cancelled).

    `trace`, when given, is used instead of `plan.trace` (a runner decides it each round,
    without a copy of its plan).

    `stalls`: the event loop's stalls (egresswatch.looplag); with it, a timeout that was our
    own lateness is `error`/`prober_overloaded`, not `fail` (probes/overload.py).
    A direct HTTP(S) target's tcp_connect, tls_handshake and http_response share one
    connection (probes/handover.py), each timed apart; it is closed when the round ends.
    """
    handover = Handover()
    try:
        mode = plan.trace if trace is None else trace
        return await _run(plan, source, known_good, now, handover, stalls, mode)
    finally:
        handover.close()


async def _run(
    plan: ChecklistPlan,
    source: str,
    known_good: KnownGood | None,
    now: datetime | None,
    handover: Handover,
    stalls: Stalls | None,
    trace_mode: TraceMode,
) -> RoundResult:
    started_at = now or datetime.now(UTC)
    known = known_good if known_good is not None else {}
    budget = _Budget(plan.round_timeout_s, stalls)
    shared = handover if _continues(plan) else None
    cluster, upstream = await _dns_steps(plan, budget)
    addresses, ip_source = await _addresses(plan, cluster, upstream, known)
    tcp = await budget.run(Step.TCP_CONNECT, plan, lambda p: _tcp(p, addresses, ip_source, shared))
    if tcp.status is Status.FAIL and ip_source == Step.DNS_CLUSTER.value:
        tcp = await _other_answer(plan, tcp, upstream, budget.remaining())
    reached = _reached(tcp)
    tls = await budget.run(Step.TLS_HANDSHAKE, plan, lambda p: _tls(p, tcp, reached, shared))
    http = await budget.run(Step.HTTP_RESPONSE, plan, lambda p: _http(p, tcp, tls, reached, shared))
    handover.close()  # before the trace: the exchange is over
    if handover.cut is not None:  # reset right after the accept: the endpoint's, or a filter's?
        left = budget.remaining()
        limit = plan.step_timeout_s if left is None else min(plan.step_timeout_s, left)
        tcp, tls, http = await tell_apart(handover.cut, (tcp, tls, http), timeout_s=limit)
    good = _reached(tcp)  # not an address that resets whatever is sent
    if good and plan.proxy is None:
        known[plan.target] = good
    earlier = (cluster, upstream, tcp, tls, http)
    destination = reached or _first(addresses)
    trace = await budget.run(
        Step.PATH_TRACE,
        plan,
        lambda p: _trace(p, trace_mode, earlier, destination, budget.remaining()),
    )
    return RoundResult(plan.target, source, started_at, (*earlier, trace))


async def _dns_steps(plan: ChecklistPlan, budget: _Budget) -> tuple[StepResult, StepResult]:
    """Steps 1 and 2, side by side. Without a name to resolve (an IP target, or a proxy given
    by its IP) both are skipped at once, as their probes would say: no pair of tasks is made
    for them (for an IP target's round that pair was about 5 % of its interpreter time)."""
    if budget.has(MIN_STEP_S):
        cluster = _literal(plan, Step.DNS_CLUSTER)
        upstream = _literal(plan, Step.DNS_UPSTREAM)
        if cluster is not None and upstream is not None:
            return cluster, upstream
    return await asyncio.gather(
        budget.run(Step.DNS_CLUSTER, plan, _dns_cluster),
        budget.run(Step.DNS_UPSTREAM, plan, _dns_upstream),
    )


def _continues(plan: ChecklistPlan) -> bool:
    """Whether the round goes on past TCP on tcp_connect's connection: a direct HTTP(S)
    target. Through a proxy each step keeps its own connection (the CONNECT is per step)."""
    return plan.proxy is None and plan.endpoint.scheme is not Scheme.TCP


def _resolved_name(plan: ChecklistPlan) -> str:
    """The name this source must resolve: through a proxy, the proxy's (the proxy resolves the
    target's host, so that name is not on this source's path), else the target's host."""
    return plan.proxy.host if plan.proxy is not None else plan.endpoint.host


def _literal(plan: ChecklistPlan, step: Step) -> StepResult | None:
    """Skipped when the name to resolve is an IP address already."""
    if plan.proxy is not None:
        if is_ip_address(plan.proxy.host):
            proxy, host = plan.proxy.host, plan.endpoint.host
            why = f"the proxy is an IP address ({proxy}); the proxy resolves {host}"
            return skipped(step, Reason.NOT_APPLICABLE, why)
        return None
    if plan.endpoint.is_ip_literal:
        return skipped(step, Reason.NOT_APPLICABLE, "target is an IP address")
    return None


async def _dns_cluster(plan: ChecklistPlan) -> StepResult:
    literal = _literal(plan, Step.DNS_CLUSTER)
    if literal is not None:
        return literal
    try:
        resolv = load_resolv_conf(plan.resolv_conf)
    except OSError as exc:
        return StepResult(
            Step.DNS_CLUSTER,
            Status.ERROR,
            Reason.PROBE_ERROR,
            0.0,
            f"cannot read {plan.resolv_conf}: {exc.strerror or exc}",
            NotRun(resolv_conf=str(plan.resolv_conf)),
        )
    return await dns_cluster(_resolved_name(plan), resolv, timeout_s=plan.step_timeout_s)


async def _dns_upstream(plan: ChecklistPlan) -> StepResult:
    literal = _literal(plan, Step.DNS_UPSTREAM)
    if literal is not None:
        return literal
    if plan.upstream is None:
        return skipped(
            Step.DNS_UPSTREAM,
            Reason.NOT_CONFIGURED,
            "no upstream resolver configured (dns.upstream or --upstream)",
        )
    return await dns_upstream(_resolved_name(plan), plan.upstream, timeout_s=plan.step_timeout_s)


async def _addresses(
    plan: ChecklistPlan, cluster: StepResult, upstream: StepResult, known: KnownGood
) -> tuple[list[str], str]:
    """The IPs tcp_connect tries, and where they came from (DESIGN.md §1, step 3). Through a
    proxy they are the proxy's, resolved by the DNS steps like any name on the path."""
    if plan.proxy is not None and is_ip_address(plan.proxy.host):
        return [plan.proxy.host], "proxy"
    if plan.proxy is None and plan.endpoint.is_ip_literal:
        return [plan.endpoint.host], "literal"
    for result in (cluster, upstream):
        dns = evidence_of(result, DnsEvidence)
        if result.status is Status.OK and dns is not None and dns.addresses:
            return list(dns.addresses), "proxy" if plan.proxy else result.step.value
    if plan.proxy is not None:
        return [], "proxy"
    if plan.target in known:
        return [known[plan.target]], "last_good"
    if plan.pinned_ips:
        return list(plan.pinned_ips), "pinned"
    return [], "none"


async def _tcp(
    plan: ChecklistPlan, addresses: list[str], ip_source: str, handover: Handover | None
) -> StepResult:
    if not addresses:
        what = "the proxy's name did not resolve" if plan.proxy else "no IP to connect to"
        return skipped(
            Step.TCP_CONNECT,
            Reason.NO_ADDRESS,
            f"{what}: DNS gave none, none known good, none pinned",
        )
    port = plan.proxy.port if plan.proxy else plan.endpoint.port
    return await tcp_connect(
        addresses, port, timeout_s=plan.step_timeout_s, ip_source=ip_source, handover=handover
    )


async def _other_answer(
    plan: ChecklistPlan, tcp: StepResult, upstream: StepResult, left_s: float | None
) -> StepResult:
    """The cluster resolver's addresses all failed: does the upstream's different answer work?

    A stale record, a wrong stub domain or a hijacked name shows exactly so: the cluster's
    answer is unreachable while the real one works. One connect, within the step's limit.
    """
    used, other = evidence_of(tcp, TcpEvidence), evidence_of(upstream, DnsEvidence)
    if used is None or other is None or upstream.status is not Status.OK:
        return tcp
    tried = {a.address for a in used.attempts} | set(used.untried)
    candidates = [a for a in other.addresses if a not in tried]
    timeout_s = plan.step_timeout_s if left_s is None else min(plan.step_timeout_s, left_s)
    if not candidates or timeout_s < MIN_STEP_S or used.port is None:
        return tcp
    attempt = await try_address(candidates[0], used.port, timeout_s)
    works = "connects" if attempt.outcome == "ok" else f"fails too ({attempt.outcome})"
    evidence = replace(used, other_source=upstream.step.value, other_answers=(attempt,))
    detail = f"{tcp.detail}; {upstream.step.value}'s answer {attempt.address} {works}"
    return replace(tcp, detail=detail, evidence=evidence)


async def _tls(
    plan: ChecklistPlan, tcp: StepResult, reached: str | None, handover: Handover | None
) -> StepResult:
    if plan.endpoint.scheme is not Scheme.HTTPS:
        return skipped(Step.TLS_HANDSHAKE, Reason.NOT_APPLICABLE, "not a TLS target")
    if reached is None:
        return blocked_by(Step.TLS_HANDSHAKE, tcp)
    # Through a proxy the tunnel is opened to the name, as curl does; the proxy resolves it.
    address = plan.endpoint.host if plan.proxy else reached
    return await tls_handshake(
        address,
        plan.endpoint.port,
        plan.endpoint.host,
        tls=plan.tls,
        timeout_s=plan.step_timeout_s,
        proxy=_at(plan.proxy, reached),
        handover=handover,
    )


async def _http(
    plan: ChecklistPlan,
    tcp: StepResult,
    tls: StepResult,
    reached: str | None,
    handover: Handover | None,
) -> StepResult:
    if plan.endpoint.scheme is Scheme.TCP:
        return skipped(Step.HTTP_RESPONSE, Reason.NOT_APPLICABLE, "not an HTTP target")
    if reached is None:
        return blocked_by(Step.HTTP_RESPONSE, tcp)
    if tls.status in (Status.FAIL, Status.ERROR):
        return blocked_by(Step.HTTP_RESPONSE, tls)
    return await http_response(
        plan.endpoint,
        None if plan.proxy else reached,
        proxy=_at(plan.proxy, reached),
        tls=plan.tls,
        expect=plan.expect,
        method=plan.method,
        timeout_s=plan.step_timeout_s,
        handover=handover,
    )


async def _trace(
    plan: ChecklistPlan,
    mode: TraceMode,
    earlier: Sequence[StepResult],
    destination: str | None,
    left_s: float | None,
) -> StepResult:
    failed = any(r.status is Status.FAIL for r in earlier)
    if mode is TraceMode.NEVER or (mode is TraceMode.ON_FAILURE and not failed):
        return skipped(Step.PATH_TRACE, Reason.NOT_DUE, "not due this round")
    if destination is None:
        return skipped(Step.PATH_TRACE, Reason.NO_ADDRESS, "no IP to trace to")
    port = plan.proxy.port if plan.proxy else plan.endpoint.port
    budget = plan.trace_hop_timeout_s * 4 + plan.step_timeout_s
    if left_s is not None:
        budget = min(budget, left_s)
    return await path_trace(
        destination,
        port,
        timeout_s=budget,
        max_hops=plan.trace_max_hops,
        hop_timeout_s=plan.trace_hop_timeout_s,
    )


def _at(proxy: ProxyRoute | None, reached: str) -> ProxyRoute | None:
    """The proxy at the address tcp_connect reached: its name was resolved by the DNS steps,
    and nothing after them asks another resolver (the machine's own, say) again."""
    return replace(proxy, host=reached) if proxy is not None else None


def _reached(tcp: StepResult) -> str | None:
    """The address tcp_connect connected to, when it did."""
    found = evidence_of(tcp, TcpEvidence)
    return found.address if found is not None and tcp.status is Status.OK else None


def _first(addresses: list[str]) -> str | None:
    return addresses[0] if addresses else None
