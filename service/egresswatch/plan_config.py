"""The plan from the config: what the controller serves each source, and what `egresswatch
run` and `egresswatch check` follow (plan.py is the model; this module fills it in from a
config file, so that the model does not need the config: an agent reads none).
"""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import urlsplit

from egresswatch.addresses import ProxyRoute
from egresswatch.plan import Plan, PlanDns, PlanProxy, PlanTarget
from egresswatch.settings import Settings, TargetSettings

__all__ = ["plan_from_settings", "plan_target", "public_proxy_url"]


def plan_target(settings: Settings, target: TargetSettings) -> PlanTarget:
    """What an agent needs to probe one target: the config's defaults filled in."""
    interval, timeout, step_timeout = settings.timing(target)
    probes = settings.probes
    return PlanTarget(
        name=target.name,
        url=target.url,
        address=target.address,
        role=target.role,
        interval_s=interval,
        timeout_s=timeout,
        step_timeout_s=step_timeout,
        expect_status=target.expect_status or probes.expect_status,
        method=target.method or probes.method,
        trace_every_s=probes.trace_every,
        trace_max_hops=probes.trace_max_hops,
        trace_hop_timeout_s=probes.trace_hop_timeout,
        pinned_ips=tuple(target.pinned_ips),
        use_proxy=target.use_proxy,
        recover_after=settings.detection_for(target).recover_after,
    )


def plan_from_settings(settings: Settings, *, source: str, now: datetime | None = None) -> Plan:
    """The plan for `source` from the config. Never a secret (module docstring)."""
    proxy = settings.proxy
    url = public_proxy_url(settings)
    return Plan(
        source=source,
        generated_at=now or datetime.now(UTC),
        targets=tuple(plan_target(settings, t) for t in settings.targets),
        dns=PlanDns(upstream=settings.dns.upstream),
        proxy=(
            None
            if proxy is None or url is None
            else PlanProxy(
                url=url,
                no_proxy=tuple(proxy.no_proxy),
                authenticated=proxy.username is not None
                or ProxyRoute.parse(proxy.url).username is not None,
            )
        ),
        proxy_from_environment=settings.proxy_from_environment,
    )


def public_proxy_url(settings: Settings) -> str | None:
    """The configured proxy's URL without its user and password, for plans and next commands."""
    if settings.proxy is None:
        return None
    text = settings.proxy.url.strip()
    parts = urlsplit(text if "://" in text else f"http://{text}")
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:  # settings validated it; never echo a malformed one
        return None
    return f"{parts.scheme.lower()}://{host}{port}"
