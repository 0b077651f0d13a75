"""The plan: what an agent probes, one typed model for the controller and the agent.

The controller builds it from its config (`plan_from_settings`, plan_config.py) and serves it
as JSON at `GET /api/v1/plan?source=`; the agent parses the same model (agent/plan.py) and
turns it into its rounds (agent/checklists.py). `egresswatch run` builds it the same way and
skips the JSON. The OpenAPI document's plan schemas are generated from these classes, so a
field is written here once, assigned once in `plan_target`, and read once where the agent uses
it. This module imports no config: an agent, which reads none, parses the plan without
building the config's model (docs/performance.md, "An agent's footprint").

Never a secret: the proxy's URL loses its user and password and `authenticated` only says that
the proxy wants credentials. An agent brings its own, with its resolv.conf and CA bundle
(agent/checklists.py, LocalSettings).
"""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime
from typing import Annotated, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from egresswatch.addresses import Nameserver, ProxyRoute
from egresswatch.model import Endpoint, Role
from egresswatch.validation import ExpectStatus

__all__ = ["Plan", "PlanDns", "PlanProxy", "PlanTarget"]

Seconds = Annotated[float, Field(gt=0)]


def _endpoint(value: str | None) -> str | None:
    if value is not None:
        Endpoint.parse(value)
    return value


def _nameserver(value: str | None) -> str | None:
    if value is not None:
        Nameserver.parse(value)
    return value


def _proxy_url(value: str) -> str:
    if ProxyRoute.parse(value).username is not None:
        raise ValueError("a plan's proxy URL carries no credentials")
    return value


def _utc(value: datetime) -> datetime:
    return value.astimezone(UTC)  # serialized with a `Z`, as every time in the API


class _Wire(BaseModel):
    # Both ends are this version: an unknown field is a bug, not a newer controller's
    # addition. Defaults are required in the served JSON (and so in its schema).
    model_config = ConfigDict(
        extra="forbid", frozen=True, json_schema_serialization_defaults_required=True
    )


class PlanTarget(_Wire):
    """One target with every default filled in; durations in seconds."""

    name: str
    url: Annotated[str | None, AfterValidator(_endpoint)]
    address: Annotated[str | None, AfterValidator(_endpoint)]
    role: Role
    interval_s: Seconds
    timeout_s: Seconds = Field(description="the whole round's budget")
    step_timeout_s: Seconds
    expect_status: ExpectStatus = Field(description="e.g. 200-399 or 200,204")
    method: str = Field(pattern=r"^(GET|HEAD)$")
    trace_every_s: Seconds
    trace_max_hops: int = Field(ge=1, le=64)
    trace_hop_timeout_s: Seconds
    pinned_ips: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...]
    use_proxy: bool
    # An agent traces every round after a failed trace until this many traces worked, so that
    # path_trace recovers as the other steps do (agent/runner.py).
    recover_after: int = Field(
        ge=1,
        le=100,
        description="good rounds that recover a step (traced every round until then)",
    )

    @model_validator(mode="after")
    def _one_location(self) -> Self:
        if (self.url is None) == (self.address is None):
            raise ValueError("give exactly one of url or address")
        return self

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint.parse(self.url or self.address or "")


class PlanDns(_Wire):
    upstream: Annotated[str | None, AfterValidator(_nameserver)] = Field(
        None, description="the resolver dns_upstream asks; null: that step is skipped"
    )


class PlanProxy(_Wire):
    url: Annotated[str, AfterValidator(_proxy_url)] = Field(description="without user or password")
    no_proxy: tuple[str, ...] = ()
    authenticated: bool = Field(False, description="the agent brings its own credentials")


class Plan(_Wire):
    """Everything an agent probes and how; see the module docstring."""

    source: str
    generated_at: Annotated[datetime, AfterValidator(_utc)]
    targets: tuple[PlanTarget, ...]
    dns: PlanDns = PlanDns()
    proxy: PlanProxy | None = None
    proxy_from_environment: bool = True

    def same_work(self, other: Plan | None) -> bool:
        """Whether `other` asks for the same rounds (when and for whom it was made aside)."""
        return other is not None and (
            self.targets,
            self.dns,
            self.proxy,
            self.proxy_from_environment,
        ) == (other.targets, other.dns, other.proxy, other.proxy_from_environment)
