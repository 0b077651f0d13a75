"""Rounds from a config file rather than from a controller's plan: `egresswatch run` (one
process that is controller and agent) and `egresswatch check` read both halves, the plan and
the agent's own (`LocalSettings`), from one file.

Apart from agent/checklists.py and agent/runner.py because it needs the config's model, which
`egresswatch agent` never builds (it reads no config file; docs/performance.md, "An agent's
footprint").
"""

from __future__ import annotations

from collections.abc import Mapping

from egresswatch.addresses import ProxyRoute
from egresswatch.agent.checklists import LocalSettings, checklist_plan
from egresswatch.agent.runner import RoundRunner
from egresswatch.plan_config import plan_from_settings
from egresswatch.probes.checklist import ChecklistPlan, TraceMode
from egresswatch.settings import Settings, TargetSettings

__all__ = ["checklist_for", "follow_config", "local_settings"]


def local_settings(settings: Settings) -> LocalSettings:
    """The local half of a config file: one process that is controller and agent."""
    username = password = None
    if settings.proxy is not None:
        route = ProxyRoute.parse(settings.proxy.url)
        username = settings.proxy.username or route.username
        password = settings.proxy.password() or route.password
    return LocalSettings(
        resolv_conf=settings.dns.resolv_conf,
        ca_file=settings.probes.ca_file,
        target_ca_files={t.name: t.ca_file for t in settings.targets if t.ca_file},
        proxy_username=username,
        proxy_password=password,
    )


def follow_config(runner: RoundRunner, settings: Settings) -> None:
    """Apply a config file's targets to `runner` (at start and at each reload): where one file
    holds the plan and the local half, and no plan travels. ValueError as `RoundRunner.apply`."""
    plan = plan_from_settings(settings, source=runner.source)
    runner.apply(plan, local_settings(settings))


def checklist_for(
    settings: Settings,
    target: TargetSettings,
    *,
    trace: TraceMode = TraceMode.ALWAYS,
    environ: Mapping[str, str] | None = None,
) -> ChecklistPlan:
    """The checklist of `target` (configured or not) from a config file: `egresswatch check`."""
    alone = settings.model_copy(update={"targets": [target]})
    plan = plan_from_settings(alone, source=settings.source.name)
    local = local_settings(alone)
    return checklist_plan(plan, plan.targets[0], local, trace=trace, environ=environ)
