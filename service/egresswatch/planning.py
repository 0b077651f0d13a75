"""From the config to the plan of one round: defaults filled in, the proxy decided."""

from __future__ import annotations

import os
from collections.abc import Mapping

from egresswatch.addresses import Nameserver, ProxyRoute
from egresswatch.model import Endpoint
from egresswatch.probes.checklist import ChecklistPlan, TraceMode
from egresswatch.probes.proxy import proxy_for
from egresswatch.probes.tls import TlsOptions
from egresswatch.settings import Settings, TargetSettings


def plan_for(
    settings: Settings,
    target: TargetSettings,
    *,
    trace: TraceMode = TraceMode.ALWAYS,
    environ: Mapping[str, str] | None = None,
) -> ChecklistPlan:
    """The round plan for a configured target."""
    probes = settings.probes
    endpoint = target.endpoint
    _, _, step_timeout = settings.timing(target)
    ca_file = target.ca_file or probes.ca_file
    proxy = (
        _proxy(settings, endpoint, os.environ if environ is None else environ)
        if target.use_proxy
        else None
    )
    return ChecklistPlan(
        target=target.name,
        endpoint=endpoint,
        resolv_conf=settings.dns.resolv_conf,
        upstream=Nameserver.parse(settings.dns.upstream) if settings.dns.upstream else None,
        step_timeout_s=step_timeout,
        expect=target.expect_status or probes.expect_status,
        method=target.method or probes.method,
        tls=TlsOptions(ca_file=ca_file),
        proxy=proxy,
        pinned_ips=tuple(str(ip) for ip in target.pinned_ips),
        trace=trace,
        trace_max_hops=probes.trace_max_hops,
        trace_hop_timeout_s=probes.trace_hop_timeout,
    )


def _proxy(settings: Settings, endpoint: Endpoint, environ: Mapping[str, str]) -> ProxyRoute | None:
    configured = None
    no_proxy: list[str] = []
    if settings.proxy is not None:
        route = ProxyRoute.parse(settings.proxy.url, origin="config")
        configured = ProxyRoute(
            route.host,
            route.port,
            settings.proxy.username or route.username,
            settings.proxy.password() or route.password,
            origin="config",
        )
        no_proxy = settings.proxy.no_proxy
    return proxy_for(
        endpoint,
        configured=configured,
        no_proxy=no_proxy,
        use_environment=settings.proxy_from_environment,
        environ=environ,
    )
