"""One round of the checklist in process: address fallbacks, trace modes, proxies, broken inputs."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from dataclasses import replace
from pathlib import Path
from typing import Any

from egresswatch.evidence import DnsEvidence, HttpEvidence, TcpEvidence, TraceEvidence
from egresswatch.model import Endpoint, Reason, Status, Step, StepResult
from egresswatch.probes.checklist import ChecklistPlan, TraceMode, run_checklist
from egresswatch.probes.tls import TlsOptions
from tests.support.dnsserver import TestDNSServer, dns_server
from tests.support.evidence import typed
from tests.support.https import HOST, NAME, LocalServers, Pki, Reply, local_servers, pki
from tests.support.tinyproxy import TinyProxy, tinyproxy

__all__ = ["dns_server", "local_servers", "pki", "tinyproxy"]  # fixtures, imported explicitly


NEVER = TraceMode.NEVER


def plan(url: str, resolv: Path, pki: Pki, **overrides: object) -> ChecklistPlan:
    fields: dict[str, object] = {
        "target": "shop",
        "endpoint": Endpoint.parse(url),
        "resolv_conf": resolv,
        "step_timeout_s": 2.0,
        "tls": TlsOptions(ca_file=pki.ca_file),
        "trace_max_hops": 3,
        "trace_hop_timeout_s": 0.3,
    }
    fields.update(overrides)
    return ChecklistPlan(**fields)  # type: ignore[arg-type]


def resolv_for(tmp_path: Path, dns: TestDNSServer) -> Path:
    path = tmp_path / "resolv.conf"
    path.write_text(f"nameserver {dns.host}#{dns.port}\noptions timeout:1 attempts:1\n")
    return path


def step(steps: tuple[StepResult, ...], which: Step) -> StepResult:
    return next(s for s in steps if s.step is which)


async def test_last_good_ip_carries_a_dns_outage(
    tmp_path: Path, dns_server: TestDNSServer, local_servers: LocalServers, pki: Pki
) -> None:
    server = await local_servers.https(Reply(200))
    resolv = resolv_for(tmp_path, dns_server)
    dns_server.answer(NAME, a=[HOST])
    known: dict[str, str] = {}
    the_plan = plan(f"https://{NAME}:{server.port}/", resolv, pki, trace=TraceMode.NEVER)
    first = await run_checklist(the_plan, source="node-1", known_good=known)
    assert first.first_failing_step is None
    assert known == {"shop": HOST}

    dns_server.nxdomain(NAME)
    second = await run_checklist(the_plan, source="node-1", known_good=known)
    assert second.first_failing_step is Step.DNS_CLUSTER
    tcp = step(second.steps, Step.TCP_CONNECT)
    assert tcp.status is Status.OK and typed(tcp, TcpEvidence).ip_source == "last_good"
    assert step(second.steps, Step.HTTP_RESPONSE).status is Status.OK
    # Not due, but a step failed: the trace runs only in ON_FAILURE mode; NEVER keeps it off.
    assert step(second.steps, Step.PATH_TRACE).reason is Reason.NOT_DUE


async def test_trace_on_failure_only(
    tmp_path: Path, dns_server: TestDNSServer, local_servers: LocalServers, pki: Pki
) -> None:
    server = await local_servers.https(Reply(200))
    resolv = resolv_for(tmp_path, dns_server)
    dns_server.answer(NAME, a=[HOST])
    url = f"https://{NAME}:{server.port}/"
    healthy = await run_checklist(plan(url, resolv, pki, trace=TraceMode.ON_FAILURE), source="n")
    trace = step(healthy.steps, Step.PATH_TRACE)
    assert trace.status is Status.SKIPPED and trace.reason is Reason.NOT_DUE

    broken_server = await local_servers.https(Reply(503))
    broken = await run_checklist(
        plan(f"https://{NAME}:{broken_server.port}/", resolv, pki, trace=TraceMode.ON_FAILURE),
        source="n",
    )
    assert broken.first_failing_step is Step.HTTP_RESPONSE
    trace = step(broken.steps, Step.PATH_TRACE)
    assert trace.status is Status.OK and typed(trace, TraceEvidence).last_hop == HOST


async def test_nothing_to_connect_to_is_skipped_not_failed(tmp_path: Path, pki: Pki) -> None:
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.1#1\noptions timeout:1 attempts:1\n")  # refuses
    result = await run_checklist(plan(f"https://{NAME}/", resolv, pki), source="n")
    assert result.first_failing_step is Step.DNS_CLUSTER
    tcp = step(result.steps, Step.TCP_CONNECT)
    assert tcp.status is Status.SKIPPED and tcp.reason is Reason.NO_ADDRESS
    for later in (Step.TLS_HANDSHAKE, Step.HTTP_RESPONSE):
        blocked = step(result.steps, later)
        assert blocked.status is Status.SKIPPED and blocked.reason is Reason.DEPENDENCY_FAILED
    assert step(result.steps, Step.PATH_TRACE).reason is Reason.NO_ADDRESS


async def test_unreadable_resolv_conf_is_a_probe_error(tmp_path: Path, pki: Pki) -> None:
    result = await run_checklist(
        plan(f"https://{NAME}/", tmp_path / "missing.conf", pki, trace=TraceMode.NEVER),
        source="n",
    )
    cluster = step(result.steps, Step.DNS_CLUSTER)
    assert cluster.status is Status.ERROR and cluster.reason is Reason.PROBE_ERROR
    assert "missing.conf" in cluster.detail


async def test_through_a_proxy_tcp_goes_to_the_proxy(
    tmp_path: Path,
    local_servers: LocalServers,
    pki: Pki,
    tinyproxy: Callable[..., TinyProxy],
) -> None:
    server = await local_servers.https(Reply(200))
    proxy = tinyproxy("allow", [server.port])
    url = f"https://{HOST}:{server.port}/"  # by IP: tinyproxy resolves nothing
    result = await run_checklist(
        plan(url, tmp_path / "unused", pki, proxy=proxy.route(), trace=TraceMode.NEVER),
        source="n",
    )
    assert result.first_failing_step is None, result
    tcp = step(result.steps, Step.TCP_CONNECT)
    assert typed(tcp, TcpEvidence).ip_source == "proxy"
    assert typed(tcp, TcpEvidence).port == proxy.port
    assert typed(step(result.steps, Step.HTTP_RESPONSE), HttpEvidence).via_proxy


async def test_a_denying_proxy_fails_http_response_not_tls(
    tmp_path: Path,
    local_servers: LocalServers,
    pki: Pki,
    tinyproxy: Callable[..., TinyProxy],
) -> None:
    server = await local_servers.https(Reply(200))
    proxy = tinyproxy("deny")
    url = f"https://{HOST}:{server.port}/"
    result = await run_checklist(
        plan(url, tmp_path / "unused", pki, proxy=proxy.route(), trace=TraceMode.NEVER),
        source="n",
    )
    assert result.first_failing_step is Step.HTTP_RESPONSE
    assert step(result.steps, Step.HTTP_RESPONSE).reason is Reason.PROXY_DENIED
    tls = step(result.steps, Step.TLS_HANDSHAKE)
    assert tls.status is Status.SKIPPED and tls.reason is Reason.PROXY_DENIED


async def test_the_round_budget_bounds_every_step(
    tmp_path: Path, local_servers: LocalServers, pki: Pki
) -> None:
    silent = await local_servers.silent()
    started = time.monotonic()
    result = await run_checklist(
        plan(
            f"http://{HOST}:{silent.port}/",
            tmp_path / "unused",
            pki,
            step_timeout_s=5.0,
            round_timeout_s=1.0,
            trace=TraceMode.ALWAYS,
        ),
        source="n",
    )
    assert time.monotonic() - started < 2.0
    http = step(result.steps, Step.HTTP_RESPONSE)
    assert http.status is Status.FAIL and http.reason is Reason.TIMEOUT
    trace = step(result.steps, Step.PATH_TRACE)
    assert trace.status is Status.SKIPPED and trace.reason is Reason.TIMEOUT


async def test_through_a_proxy_by_ip_the_target_name_is_not_resolved_here(
    tmp_path: Path,
    dns_server: TestDNSServer,
    local_servers: LocalServers,
    pki: Pki,
    tinyproxy: Callable[..., TinyProxy],
) -> None:
    """The proxy resolves the target's host; a proxy given by IP needs no name at all, so a
    DNS fault on the target's name cannot fail a round that does not use that name."""
    server = await local_servers.https(Reply(200))
    proxy = tinyproxy("allow", [server.port])
    dns_server.nxdomain(NAME)
    url = f"https://{HOST}:{server.port}/"
    the_plan = plan(
        url,
        resolv_for(tmp_path, dns_server),
        pki,
        proxy=proxy.route(),
        upstream=dns_server.nameserver,
        trace=TraceMode.NEVER,
    )
    result = await run_checklist(the_plan, source="n")
    assert result.first_failing_step is None, result
    for which in (Step.DNS_CLUSTER, Step.DNS_UPSTREAM):
        dns = step(result.steps, which)
        assert (dns.status, dns.reason) == (Status.SKIPPED, Reason.NOT_APPLICABLE)
        assert "the proxy is an IP address" in dns.detail
    assert dns_server.queries == []


async def test_through_a_proxy_by_name_the_dns_steps_resolve_the_proxy(
    tmp_path: Path,
    dns_server: TestDNSServer,
    local_servers: LocalServers,
    pki: Pki,
    tinyproxy: Callable[..., TinyProxy],
) -> None:
    server = await local_servers.https(Reply(200))
    proxy = tinyproxy("allow", [server.port])
    proxy_name = "proxy.corp.test"
    dns_server.answer(proxy_name, a=[HOST])
    route = replace(proxy.route(), host=proxy_name)
    url = f"https://{HOST}:{server.port}/"
    the_plan = plan(url, resolv_for(tmp_path, dns_server), pki, proxy=route, trace=TraceMode.NEVER)
    result = await run_checklist(the_plan, source="n")
    assert result.first_failing_step is None, result
    cluster = typed(step(result.steps, Step.DNS_CLUSTER), DnsEvidence)
    assert cluster.addresses == (HOST,) and proxy_name in (cluster.name or "")
    tcp = typed(step(result.steps, Step.TCP_CONNECT), TcpEvidence)
    assert (tcp.ip_source, tcp.address, tcp.port) == ("proxy", HOST, proxy.port)

    dns_server.nxdomain(proxy_name)  # the proxy's name is on the path: its failure is ours
    broken = await run_checklist(the_plan, source="n")
    assert broken.first_failing_step is Step.DNS_CLUSTER
    tcp_step = step(broken.steps, Step.TCP_CONNECT)
    assert tcp_step.reason is Reason.NO_ADDRESS and "proxy's name" in tcp_step.detail


async def test_when_the_clusters_answer_fails_the_upstreams_is_tried(
    tmp_path: Path, dns_server: TestDNSServer, local_servers: LocalServers, pki: Pki
) -> None:
    """A stale or hijacked cluster record: tcp_connect says which answer it used (the
    cluster's, which fails) and whether the upstream's different one works."""
    server = await local_servers.https(Reply(200))
    wrong = "127.0.0.2"  # nothing listens there: refused at once
    dns_server.answer(NAME, a=[wrong])
    upstream = TestDNSServer()
    try:
        upstream.answer(NAME, a=[HOST])
        the_plan = plan(
            f"https://{NAME}:{server.port}/",
            resolv_for(tmp_path, dns_server),
            pki,
            upstream=upstream.nameserver,
            trace=TraceMode.NEVER,
        )
        result = await run_checklist(the_plan, source="n")
    finally:
        upstream.stop()
    assert result.first_failing_step is Step.TCP_CONNECT
    tcp_step = step(result.steps, Step.TCP_CONNECT)
    tcp = typed(tcp_step, TcpEvidence)
    assert tcp.ip_source == "dns_cluster"
    assert [a.address for a in tcp.attempts] == [wrong]
    assert tcp.other_source == "dns_upstream"
    assert [(a.address, a.outcome) for a in tcp.other_answers] == [(HOST, "ok")]
    assert f"dns_upstream's answer {HOST} connects" in tcp_step.detail


async def test_an_ip_targets_round_makes_no_task_for_its_dns_steps(
    tmp_path: Path, local_servers: LocalServers, pki: Pki
) -> None:
    """Both DNS steps of an IP target are skipped at once, as their probes say, without the
    pair of tasks a name's round runs them in (about 5 % of an IP round's interpreter time)."""
    server = await local_servers.https(Reply(200))
    loop = asyncio.get_running_loop()
    made: list[str] = []
    default = loop.get_task_factory()

    def counting(
        loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any], **kwargs: Any
    ) -> asyncio.Future[Any]:
        made.append(getattr(coro, "__qualname__", ""))
        if default is not None:
            return default(loop, coro, **kwargs)
        return asyncio.Task(coro, loop=loop, **kwargs)

    loop.set_task_factory(counting)  # type: ignore[arg-type]  # typeshed: no **kwargs
    try:
        result = await run_checklist(
            plan(f"https://{HOST}:{server.port}/", tmp_path / "unread.conf", pki, trace=NEVER),
            source="n",
        )
    finally:
        loop.set_task_factory(default)
    assert result.first_failing_step is None
    for which in (Step.DNS_CLUSTER, Step.DNS_UPSTREAM):
        dns = step(result.steps, which)
        assert dns.status is Status.SKIPPED and dns.reason is Reason.NOT_APPLICABLE
    assert not [name for name in made if name.startswith("_Budget")], made


async def test_the_trace_mode_given_overrides_the_plans(
    tmp_path: Path, local_servers: LocalServers, pki: Pki
) -> None:
    """A runner decides the trace each round without a copy of its plan: `trace=` wins over
    `plan.trace`, both ways."""
    server = await local_servers.https(Reply(200))
    url = f"https://{HOST}:{server.port}/"
    always = plan(url, tmp_path / "unread.conf", pki, trace=TraceMode.ALWAYS)
    quiet = await run_checklist(always, source="n", trace=TraceMode.ON_FAILURE)
    assert step(quiet.steps, Step.PATH_TRACE).reason is Reason.NOT_DUE
    never = replace(always, trace=TraceMode.NEVER)
    traced = await run_checklist(never, source="n", trace=TraceMode.ALWAYS)
    assert step(traced.steps, Step.PATH_TRACE).status is Status.OK


async def test_steps_skipped_alike_are_one_object(
    tmp_path: Path, local_servers: LocalServers, pki: Pki
) -> None:
    """A step skipped the same way round after round (an IP target's DNS steps, the trace
    when not due) is one frozen result, not a new one a round."""
    server = await local_servers.https(Reply(200))
    the_plan = plan(f"https://{HOST}:{server.port}/", tmp_path / "unread.conf", pki)
    first, second = [
        await run_checklist(the_plan, source="n", trace=TraceMode.ON_FAILURE) for _ in range(2)
    ]
    for which in (Step.DNS_CLUSTER, Step.DNS_UPSTREAM, Step.PATH_TRACE):
        assert step(first.steps, which).status is Status.SKIPPED
        assert step(first.steps, which) is step(second.steps, which), which
    assert step(first.steps, Step.TCP_CONNECT) is not step(second.steps, Step.TCP_CONNECT)
