"""The controller's HTTP application: problem documents for every error, health and metrics.

Errors are `application/problem+json` documents (RFC 9457) that name what was wrong; the v1
API's routes are added by controller/api/routes.py.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CollectorRegistry

from egresswatch.health import Readiness, add_health_routes
from egresswatch.problems import PROBLEM, problem

__all__ = ["PROBLEM", "make_app", "problem", "problems"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def problems(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every HTTP error leaves as a problem document, never as an HTML page or a traceback."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = problem(exc.status, exc.reason, exc.text or exc.reason)
        # Allow (405) and WWW-Authenticate (401) are part of the answer, not of its body.
        for name, value in exc.headers.items():
            if name.lower() not in ("content-type", "content-length"):
                response.headers[name] = value
        return response


def make_app(*, registry: CollectorRegistry, readiness: Readiness) -> web.Application:
    """The application; `readiness()` says which parts are ready (all true: ready)."""
    app = web.Application(middlewares=[problems])
    add_health_routes(app, registry=registry, readiness=readiness)
    return app
