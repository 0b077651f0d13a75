"""The HTTP surface: health, readiness, /metrics (and, later, the API of DESIGN.md §4).

Errors are `application/problem+json` documents (RFC 9457) that name what was wrong.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

PROBLEM = "application/problem+json"

Readiness = Callable[[], Mapping[str, bool]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def problem(status: int, title: str, detail: str, **fields: Any) -> web.Response:
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail, **fields}
    return web.Response(status=status, text=json.dumps(body), content_type=PROBLEM)


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

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        parts = dict(readiness())
        ready = all(parts.values())
        return web.json_response(
            {"status": "ready" if ready else "not ready", "checks": parts},
            status=200 if ready else 503,
        )

    async def metrics(_: web.Request) -> web.Response:
        # Rendered off the event loop: thousands of series take long enough to stall rounds.
        body = await asyncio.to_thread(generate_latest, registry)
        response = web.Response(body=body)
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app
