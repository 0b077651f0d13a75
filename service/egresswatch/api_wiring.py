"""The controller's HTTP application as wiring.py serves it: the parts it reads, connected.

:func:`controller_app` is the API (controller/api/), /healthz, /readyz with a database probe,
and /metrics behind the read token; :class:`OnDemand` runs `POST /api/v1/targets/{t}/run`
through the scheduler; :func:`access` says, for the start-up line, who may do what (never the
tokens themselves).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CollectorRegistry

from egresswatch.controller.api.agent_identity import AgentIdentities
from egresswatch.controller.api.app import Handler, make_app
from egresswatch.controller.api.auth import Right, Tokens, authorize
from egresswatch.controller.api.query import ApiError
from egresswatch.controller.api.ratelimit import RateLimiter
from egresswatch.controller.api.routes import ApiDeps, add_api_routes
from egresswatch.controller.designated import Designated
from egresswatch.controller.ingest.intake import Ingest
from egresswatch.kube.policy_view import ClusterPolicies, CurrentPolicies
from egresswatch.model import RoundResult
from egresswatch.parts import Core
from egresswatch.schedule import RoundScheduler
from egresswatch.settings import Settings
from egresswatch.storage import DatabaseProbe


@dataclass(frozen=True)
class AppParts:
    """What the HTTP application reads, as the Service made it."""

    core: Core
    registry: CollectorRegistry
    readiness: Callable[[], Mapping[str, bool]]
    ingest: Ingest  # its `accept`: agents' batches
    run_now: Callable[[str], Awaitable[RoundResult]]
    designated: Designated | None
    agents: AgentIdentities | None
    policies: Callable[[], ClusterPolicies | None]  # whichever discovery runs now
    hidden: Callable[[str], bool]  # a retired source
    # Called once an answer that allocated a lot (status, /metrics) is done: heaptrim.py.
    after_large_answer: Callable[[], None] = lambda: None


# Answers that allocate megabytes at 5,000 targets (the status document, a scrape): the C heap
# is trimmed after them (heaptrim.py), or glibc keeps what they freed.
LARGE_ANSWERS = frozenset({"/api/v1/status", "/metrics"})


def controller_app(parts: AppParts) -> web.Application:
    """The API, /healthz, /readyz (with a database probe) and /metrics (behind the read
    token), with the tokens and the on-demand rate limit of the settings at start."""
    core = parts.core
    settings = core.settings()
    tokens = Tokens(
        agent=settings.agent_token(), read=settings.read_token(), run=settings.run_token()
    )
    app = make_app(
        registry=parts.registry,
        readiness=parts.readiness,
        probes={"database": DatabaseProbe(lambda: core.store.engine, outage=core.outage)},
        metrics_guard=lambda request: authorize(request, Right.READ, tokens),
    )
    add_api_routes(
        app,
        ApiDeps(
            store=core.store,
            history=core.history,
            settings=core.settings,
            ingest=parts.ingest.accept,
            run_now=parts.run_now,
            tokens=tokens,
            run_limit=RateLimiter(burst=settings.run_limit.burst, every_s=settings.run_limit.every),
            clock=core.clock,
            outage=core.outage,
            designated=parts.designated,
            agents=parts.agents,
            # The view of whichever discovery runs now (a replica leads, or not, later).
            policies=CurrentPolicies(parts.policies),
            hidden=parts.hidden,
        ),
    )
    app.middlewares.append(_after_large_answers(parts.after_large_answer))
    return app


def _after_large_answers(done: Callable[[], None]) -> Callable[..., Awaitable[web.StreamResponse]]:
    """A middleware that calls `done()` after each request for one of LARGE_ANSWERS, however
    it ended (a streamed scrape has been written by then)."""

    @web.middleware
    async def after(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        finally:
            if request.path in LARGE_ANSWERS:
                done()

    return after


class OnDemand:
    """On-demand rounds of configured targets, from `source` (None: a controller alone, which
    runs no rounds and answers 409)."""

    def __init__(self, scheduler: Callable[[], RoundScheduler], source: str | None) -> None:
        self._scheduler = scheduler
        self._source = source

    async def run_now(self, target: str) -> RoundResult:
        """The round's result, or ApiError: 409 (no source here), 404 (a reload removed the
        target meanwhile), 504 (the round was cut at its timeout or the probe broke)."""
        if self._source is None:
            # The route answered 404 already for a target that is not configured; this one
            # is, but no source here can run it (ApiError: the route's problem document).
            raise ApiError(
                409,
                "Conflict",
                f"{target!r} is configured, but this controller runs no rounds itself: "
                "its agents run them on their timers",
            )
        # Through the scheduler: the round takes a slot of max_concurrent_rounds like any, and
        # joins this target's round in flight (scheduled or on demand) instead of a second one.
        task = self._scheduler().run_now(f"{self._source}/{target}")
        if task is None:  # a reload removed it while the request was on its way
            raise ApiError(404, "Not Found", f"target {target!r} is not configured")
        result = await asyncio.shield(task)
        if not isinstance(result, RoundResult):  # cut at its timeout, or the probe broke
            raise ApiError(
                504,
                "Gateway Timeout",
                f"the round of {target!r} did not finish within its timeout: see the log",
            )
        return result


def access(settings: Settings) -> dict[str, str]:
    """What the API lets whom do, for the start-up line (never the tokens themselves)."""
    return {
        "read": "read or run token" if settings.read_token() else "open",
        "run": "run token" if settings.run_token() else "closed",
        "ingest_and_plan": " or ".join(_agents_access(settings)) or "closed",
    }


def _agents_access(settings: Settings) -> list[str]:
    ways = ["agents' token"] if settings.agent_token() else []
    if settings.kubernetes.enabled:
        ways.append("projected service-account token (TokenReview, own source only)")
    return ways
