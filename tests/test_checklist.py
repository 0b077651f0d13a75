"""One round of the checklist in process: address fallbacks, trace modes, proxies, broken inputs."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from egresswatch.evidence import HttpEvidence, TcpEvidence, TraceEvidence
from egresswatch.model import Endpoint, Reason, Status, Step, StepResult
from egresswatch.probes.checklist import ChecklistPlan, TraceMode, run_checklist
from egresswatch.probes.tls import TlsOptions
from tests.support.dnsserver import TestDNSServer, dns_server
from tests.support.evidence import typed
from tests.support.https import HOST, NAME, LocalServers, Pki, Reply, local_servers, pki
from tests.support.tinyproxy import TinyProxy, tinyproxy

__all__ = ["dns_server", "local_servers", "pki", "tinyproxy"]  # fixtures, imported explicitly


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
