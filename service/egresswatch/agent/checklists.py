"""From the plan to the checklist of one round: the agent's own half added.

The plan (egresswatch/plan.py) says what to probe and how; what only the agent can know or
must keep stays here, in `LocalSettings`: its resolv.conf, its CA bundle and its proxy
credentials. The controller never sends them. `egresswatch run` and `egresswatch check` read
both halves from one config file (agent/config_file.py: this module reads no config, so
`egresswatch agent` does not load the config's model).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from egresswatch.addresses import Nameserver, ProxyRoute
from egresswatch.model import Endpoint
from egresswatch.plan import Plan, PlanTarget
from egresswatch.probes.checklist import ChecklistPlan, TraceMode
from egresswatch.probes.proxy import proxy_for
from egresswatch.probes.tls import TlsContexts, TlsOptions

__all__ = ["LocalSettings", "checklist_plan"]


@dataclass(frozen=True)
class LocalSettings:
    """What an agent sets for itself, never taken from the controller."""

    resolv_conf: Path = Path("/etc/resolv.conf")
    ca_file: Path | None = None  # None: the system store
    # Per target, over `ca_file`: only a config file has them (the plan names no local paths).
    target_ca_files: Mapping[str, Path] = field(default_factory=dict)
    proxy_username: str | None = None
    proxy_password: str | None = field(default=None, repr=False)


def checklist_plan(
    plan: Plan,
    target: PlanTarget,
    local: LocalSettings,
    *,
    trace: TraceMode = TraceMode.ALWAYS,
    environ: Mapping[str, str] | None = None,
    tls_contexts: TlsContexts | None = None,
) -> ChecklistPlan:
    """The checklist of one round of `target` (one of `plan.targets`).

    `environ` (default: the process environment) holds HTTP(S)_PROXY and NO_PROXY; a
    malformed value raises ValueError naming the variable. `tls_contexts`: the caller's
    cache of TLS contexts, shared by every round it runs.
    """
    endpoint = target.endpoint
    return ChecklistPlan(
        target=target.name,
        endpoint=endpoint,
        resolv_conf=local.resolv_conf,
        upstream=Nameserver.parse(plan.dns.upstream) if plan.dns.upstream else None,
        step_timeout_s=target.step_timeout_s,
        expect=target.expect_status,
        method=target.method,
        tls=TlsOptions(
            ca_file=local.target_ca_files.get(target.name, local.ca_file), contexts=tls_contexts
        ),
        proxy=(
            _proxy(plan, endpoint, local, os.environ if environ is None else environ)
            if target.use_proxy
            else None
        ),
        pinned_ips=tuple(str(ip) for ip in target.pinned_ips),
        trace=trace,
        trace_max_hops=target.trace_max_hops,
        trace_hop_timeout_s=target.trace_hop_timeout_s,
    )


def _proxy(
    plan: Plan, endpoint: Endpoint, local: LocalSettings, environ: Mapping[str, str]
) -> ProxyRoute | None:
    configured = None
    no_proxy: tuple[str, ...] = ()
    if plan.proxy is not None:
        configured = replace(
            ProxyRoute.parse(plan.proxy.url, origin="config"),
            username=local.proxy_username,
            password=local.proxy_password,
        )
        no_proxy = plan.proxy.no_proxy
    return proxy_for(
        endpoint,
        configured=configured,
        no_proxy=no_proxy,
        use_environment=plan.proxy_from_environment,
        environ=environ,
    )
