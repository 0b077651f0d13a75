"""What an agent probes: the controller's plan (`GET /api/v1/plan?source=`) as a `Settings`.

The controller decides the targets and how to probe them (interval, timeouts, expected status,
method, pinned IPs, traceroute, the upstream resolver, the proxy's address). The agent decides
what only it can know or must keep: its identity, its resolv.conf, its CA bundle and its proxy
credentials (`LocalSettings`); the controller never sends a secret.

:class:`PlanFollower` fetches the plan until the controller answers (backoff, logged), then
again every `refresh_s`, and hands each plan that differs from the last to `on_plan`. A plan
that cannot be fetched or used is logged, and the last good one stays.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from egresswatch.model import SourceKind
from egresswatch.settings import ConfigError, Settings, format_duration, settings_from_dict

__all__ = [
    "PLAN_PATH",
    "LocalSettings",
    "PlanError",
    "PlanFollower",
    "settings_from_plan",
]

log = logging.getLogger(__name__)

PLAN_PATH = "/api/v1/plan"
TASK_NAME = "egresswatch-plan"
_PLAN_MAX = 16 * 1024 * 1024  # bytes; 10,000 targets are about 5 MB


class PlanError(ValueError):
    """A plan that cannot be fetched or used; the message says why."""


@dataclass(frozen=True)
class LocalSettings:
    """What the agent sets for itself, never taken from the controller."""

    source: str
    source_kind: SourceKind
    listen: str = "127.0.0.1:9109"
    resolv_conf: Path = Path("/etc/resolv.conf")
    ca_file: Path | None = None
    proxy_username: str | None = None
    # The name of the environment variable holding the proxy password (settings.ProxySettings).
    proxy_password_env: str | None = None
    max_concurrent_rounds: int = 64


# The plan document (controller/documents.py, plan_document). Unknown fields are ignored, so
# that a newer controller's additions do not stop an older agent.


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class _PlanTarget(_Lenient):
    name: str
    url: str | None = None
    address: str | None = None
    role: str
    interval_s: float = Field(gt=0)
    timeout_s: float = Field(gt=0)
    step_timeout_s: float = Field(gt=0)
    expect_status: str
    method: str
    trace_every_s: float = Field(gt=0)
    trace_max_hops: int
    trace_hop_timeout_s: float = Field(gt=0)
    pinned_ips: list[str] = Field(default_factory=list)
    use_proxy: bool = True
    recover_after: int = Field(2, ge=1, le=100)  # absent from an older controller's plan


class _PlanDns(_Lenient):
    upstream: str | None = None


class _PlanProxy(_Lenient):
    url: str
    no_proxy: list[str] = Field(default_factory=list)
    authenticated: bool = False


class _Plan(_Lenient):
    targets: list[_PlanTarget]
    dns: _PlanDns = Field(default_factory=_PlanDns)
    proxy: _PlanProxy | None = None
    proxy_from_environment: bool = True


def settings_from_plan(document: Any, local: LocalSettings) -> Settings:
    """The agent's `Settings` from a plan document and its own `local` settings.

    The trace settings are global in the controller's config and repeated per target in the
    plan: the first target's are taken. PlanError names the field when the plan is not usable.
    """
    try:
        plan = _Plan.model_validate(document)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'plan'}: {e['msg']}"
            for e in exc.errors(include_url=False)[:10]
        )
        raise PlanError(f"the controller's plan is not usable: {problems}") from None
    probes: dict[str, Any] = {}
    if plan.targets:
        first = plan.targets[0]
        probes = {
            "trace_every": format_duration(first.trace_every_s),
            "trace_max_hops": first.trace_max_hops,
            "trace_hop_timeout": format_duration(first.trace_hop_timeout_s),
        }
    if local.ca_file is not None:
        probes["ca_file"] = str(local.ca_file)
    data: dict[str, Any] = {
        "source": {"name": local.source, "kind": local.source_kind.value},
        "listen": local.listen,
        "dns": {"resolv_conf": str(local.resolv_conf), "upstream": plan.dns.upstream},
        "proxy": _proxy(plan.proxy, local),
        "proxy_from_environment": plan.proxy_from_environment,
        "probes": probes,
        "max_concurrent_rounds": local.max_concurrent_rounds,
        "targets": [_target(t) for t in plan.targets],
    }
    try:
        return settings_from_dict(data, origin="plan")
    except ConfigError as exc:
        raise PlanError(
            "the controller's plan is not usable: " + "; ".join(exc.problems[:10])
        ) from None


def _target(target: _PlanTarget) -> dict[str, Any]:
    found: dict[str, Any] = {
        "name": target.name,
        "role": target.role,
        "interval": format_duration(target.interval_s),
        "timeout": format_duration(target.timeout_s),
        "step_timeout": format_duration(target.step_timeout_s),
        "expect_status": target.expect_status,
        "method": target.method,
        "pinned_ips": target.pinned_ips,
        "use_proxy": target.use_proxy,
        "detection": {"recover_after": target.recover_after},
    }
    if target.url is not None:
        found["url"] = target.url
    if target.address is not None:
        found["address"] = target.address
    return found


def _proxy(proxy: _PlanProxy | None, local: LocalSettings) -> dict[str, Any] | None:
    if proxy is None:
        return None
    if proxy.authenticated and local.proxy_username is None:
        log.warning(
            "the proxy wants credentials and this agent has none: set "
            "EGRESSWATCH_PROXY_USERNAME and EGRESSWATCH_PROXY_PASSWORD",
            extra={"proxy": proxy.url},
        )
    return {
        "url": proxy.url,
        "no_proxy": proxy.no_proxy,
        "username": local.proxy_username,
        "password_env": local.proxy_password_env,
    }


class PlanFollower:
    """Keeps the agent's plan current; see the module docstring.

    `on_plan(settings)` is called on the loop for the first plan and for every plan that
    differs from the one before; an exception from it is logged and the plan counts as
    applied. `session` is the caller's and is not closed here. `ready` is set once a first
    plan was applied.
    """

    def __init__(
        self,
        controller: str,
        *,
        local: LocalSettings,
        session: aiohttp.ClientSession,
        token: Callable[[], str | None],
        on_plan: Callable[[Settings], None],
        refresh_s: float = 30.0,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
        request_timeout_s: float = 10.0,
    ) -> None:
        self._url = controller.rstrip("/") + PLAN_PATH
        self._local = local
        self._session = session
        self._token = token
        self._on_plan = on_plan
        self._refresh_s = refresh_s
        self._backoff = (backoff_initial_s, backoff_max_s)
        self._timeout = aiohttp.ClientTimeout(total=request_timeout_s)
        self._task: asyncio.Task[None] | None = None
        self.current: Settings | None = None
        self.ready = asyncio.Event()

    def start(self) -> None:
        if self._task is not None:
            raise RuntimeError("the plan follower was already started")
        self._task = asyncio.get_running_loop().create_task(self._follow(), name=TASK_NAME)

    async def stop(self) -> None:
        """Stop fetching (cancels a fetch in progress). Idempotent."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def fetch(self) -> Settings:
        """The controller's plan for this source now; PlanError says why not."""
        headers = {"Accept": "application/json"}
        token = self._token()
        if token:  # the controller does not ask for it today; it may tomorrow
            headers["Authorization"] = f"Bearer {token}"
        try:
            async with self._session.get(
                self._url,
                params={"source": self._local.source},
                headers=headers,
                timeout=self._timeout,
            ) as response:
                body = await response.content.read(_PLAN_MAX)
                if response.status != 200:
                    raise PlanError(f"GET {self._url} answered {response.status}: {_detail(body)}")
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise PlanError(
                f"cannot reach the controller at {self._url}: {_describe(exc)}"
            ) from None
        try:
            document = json.loads(body)
        except ValueError:
            raise PlanError(f"GET {self._url} answered with something that is not JSON") from None
        return settings_from_plan(document, self._local)

    async def _follow(self) -> None:
        """The first plan, retried until it comes, then a refresh every `refresh_s`."""
        attempt = 0
        initial, cap = self._backoff
        while self.current is None:
            try:
                self._apply(await self.fetch())
            except PlanError as exc:
                delay = min(cap, initial * 2.0**attempt)
                attempt += 1
                log.warning(
                    "no plan yet: retrying",
                    extra={"problem": str(exc), "attempt": attempt, "in_s": delay},
                )
                await asyncio.sleep(delay)
        while True:
            await asyncio.sleep(self._refresh_s)
            try:
                self._apply(await self.fetch())
            except PlanError as exc:
                log.warning("plan not refreshed: the last one stays", extra={"problem": str(exc)})

    def _apply(self, settings: Settings) -> None:
        if settings == self.current:
            return
        first = self.current is None
        self.current = settings
        try:
            self._on_plan(settings)
        except Exception:  # a bug applying one plan must not stop the next ones
            log.exception("applying the plan failed")
        self.ready.set()
        log.info(
            "plan received" if first else "plan changed",
            extra={"targets": [t.name for t in settings.targets]},
        )


def _detail(body: bytes) -> str:
    """The problem document's detail, or the start of the body."""
    try:
        document = json.loads(body)
    except ValueError:
        return body[:200].decode(errors="replace")
    if isinstance(document, Mapping) and isinstance(document.get("detail"), str):
        return str(document["detail"])[:500]
    return body[:200].decode(errors="replace")


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
