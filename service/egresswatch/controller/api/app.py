"""The controller's HTTP application: problem documents for every error, health and metrics.

Errors are `application/problem+json` documents (RFC 9457) that name what was wrong; the v1
API's routes are added by controller/api/routes.py.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web
from prometheus_client import CollectorRegistry

from egresswatch.controller.api.query import ApiError
from egresswatch.health import Guard, Probe, Readiness, add_health_routes
from egresswatch.problems import PROBLEM, problem

__all__ = ["PROBLEM", "make_app", "problem", "problem_of", "problems"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def problem_of(error: ApiError) -> web.Response:
    """The problem document of an ApiError, with its headers (Retry-After, WWW-Authenticate)."""
    answer = problem(error.status, error.title, error.detail, **error.fields())
    answer.headers.update(error.headers)
    return answer


@web.middleware
async def problems(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every HTTP error leaves as a problem document, never as an HTML page or a traceback."""
    try:
        return await handler(request)
    except ApiError as exc:  # raised outside the API's own handlers (the /metrics guard)
        return problem_of(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = problem(exc.status, exc.reason, exc.text or exc.reason)
        # Allow (405) and WWW-Authenticate (401) are part of the answer, not of its body.
        for name, value in exc.headers.items():
            if name.lower() not in ("content-type", "content-length"):
                response.headers[name] = value
        return response


def make_app(
    *,
    registry: CollectorRegistry,
    readiness: Readiness,
    probes: Mapping[str, Probe] | None = None,
    metrics_guard: Guard | None = None,
) -> web.Application:
    """The application; `readiness()` says which parts are ready (all true: ready), `probes`
    ask (the database); `metrics_guard` checks who reads /metrics."""
    app = web.Application(middlewares=[problems])
    add_health_routes(
        app, registry=registry, readiness=readiness, probes=probes, metrics_guard=metrics_guard
    )
    return app
