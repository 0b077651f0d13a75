"""The plan: what an agent probes, one typed model for the controller and the agent.

The controller builds it from its config (`plan_from_settings`, plan_config.py) and serves it
as JSON at `GET /api/v1/plan?source=`; the agent parses the same model (agent/plan.py) and
turns it into its rounds (agent/checklists.py). `egresswatch run` builds it the same way and
skips the JSON. The OpenAPI document's plan schemas are generated from these classes, so a
field is written here once, assigned once in `plan_target`, and read once where the agent uses
it. This module imports no config: an agent, which reads none, parses the plan without
building the config's model (docs/performance.md, "An agent's footprint").

Frozen dataclasses, not pydantic models, so that an agent reads a plan without importing
pydantic either (egresswatch/wire.py says how one declaration serves both: bounds, pattern and
descriptions are pydantic's `Field` keys in each field's metadata, enforced with the other
checks by `__post_init__` at every construction). The controller serves and documents them
through a pydantic `TypeAdapter` (controller/api/plan_adapter.py).

Never a secret: the proxy's URL loses its user and password and `authenticated` only says that
the proxy wants credentials. An agent brings its own, with its resolv.conf and CA bundle
(agent/checklists.py, LocalSettings).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar

from egresswatch.addresses import Nameserver, ProxyRoute
from egresswatch.model import Endpoint, Role, StatusRanges
from egresswatch.wire import FieldProblem, check_fields

__all__ = ["Plan", "PlanDns", "PlanProxy", "PlanTarget"]

# Both ends are this version: an unknown field is a bug, not a newer controller's addition.
# Defaults are required in the served JSON (and so in its schema). pydantic's, read from the
# class; wire.py refuses unknown keys on its own.
_WIRE: dict[str, Any] = {"extra": "forbid", "json_schema_serialization_defaults_required": True}
_SECONDS: dict[str, Any] = {"gt": 0}


def _check(name: str, value: str | None, parse: Any) -> None:
    """`parse(value)` when given; its ValueError names the field."""
    if value is not None:
        try:
            parse(value)
        except ValueError as exc:
            raise FieldProblem(name, str(exc)) from None


@dataclass(frozen=True)
class PlanTarget:
    """One target with every default filled in; durations in seconds."""

    __pydantic_config__: ClassVar[dict[str, Any]] = _WIRE

    name: str
    url: str | None
    address: str | None
    role: Role
    interval_s: float = field(metadata=_SECONDS)
    timeout_s: float = field(metadata={**_SECONDS, "description": "the whole round's budget"})
    step_timeout_s: float = field(metadata=_SECONDS)
    expect_status: StatusRanges = field(metadata={"description": "e.g. 200-399 or 200,204"})
    method: str = field(metadata={"pattern": r"^(GET|HEAD)$"})
    trace_every_s: float = field(metadata=_SECONDS)
    trace_max_hops: int = field(metadata={"ge": 1, "le": 64})
    trace_hop_timeout_s: float = field(metadata=_SECONDS)
    pinned_ips: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...]
    use_proxy: bool
    # An agent traces every round after a failed trace until this many traces worked, so that
    # path_trace recovers as the other steps do (agent/runner.py).
    recover_after: int = field(
        metadata={
            "ge": 1,
            "le": 100,
            "description": "good rounds that recover a step (traced every round until then)",
        }
    )

    def __post_init__(self) -> None:
        check_fields(self)
        _check("url", self.url, Endpoint.parse)
        _check("address", self.address, Endpoint.parse)
        if (self.url is None) == (self.address is None):
            raise FieldProblem("", "give exactly one of url or address")

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint.parse(self.url or self.address or "")


@dataclass(frozen=True)
class PlanDns:
    __pydantic_config__: ClassVar[dict[str, Any]] = _WIRE

    upstream: str | None = field(
        default=None,
        metadata={"description": "the resolver dns_upstream asks; null: that step is skipped"},
    )

    def __post_init__(self) -> None:
        check_fields(self)
        _check("upstream", self.upstream, Nameserver.parse)


@dataclass(frozen=True)
class PlanProxy:
    __pydantic_config__: ClassVar[dict[str, Any]] = _WIRE

    url: str = field(metadata={"description": "without user or password"})
    no_proxy: tuple[str, ...] = ()
    authenticated: bool = field(
        default=False, metadata={"description": "the agent brings its own credentials"}
    )

    def __post_init__(self) -> None:
        check_fields(self)
        try:
            route = ProxyRoute.parse(self.url)
        except ValueError as exc:
            raise FieldProblem("url", str(exc)) from None
        if route.username is not None:
            raise FieldProblem("url", "a plan's proxy URL carries no credentials")


@dataclass(frozen=True)
class Plan:
    """Everything an agent probes and how; see the module docstring."""

    __pydantic_config__: ClassVar[dict[str, Any]] = _WIRE

    source: str
    generated_at: datetime
    targets: tuple[PlanTarget, ...]
    dns: PlanDns = PlanDns()
    proxy: PlanProxy | None = None
    proxy_from_environment: bool = True

    def __post_init__(self) -> None:
        check_fields(self)
        # Served with a `Z`, as every time in the API, whoever built it.
        object.__setattr__(self, "generated_at", self.generated_at.astimezone(UTC))

    def same_work(self, other: Plan | None) -> bool:
        """Whether `other` asks for the same rounds (when and for whom it was made aside)."""
        return other is not None and (
            self.targets,
            self.dns,
            self.proxy,
            self.proxy_from_environment,
        ) == (other.targets, other.dns, other.proxy, other.proxy_from_environment)
