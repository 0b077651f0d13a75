"""/healthz, /readyz and /metrics: the same answers from the controller and from an agent.

A neutral module: the agent must not import the controller, and both serve these.
/healthz and /readyz are always open; /metrics is behind `metrics_guard` when one is given
(the controller's read token). `/metrics?name[]=A&name[]=B` renders only the samples named (as
prometheus_client's own exposition does): only the collectors that own those names are
collected, so a scrape that wants three counters does not pay for thousands of series.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from egresswatch.compact_metrics import exposition_chunks
from egresswatch.health_answers import (
    HEALTHY,
    METRIC_NAME,
    NAME_FILTER,
    Readiness,
    bad_metric_names,
    readiness_answer,
)

__all__ = ["METRIC_NAME", "Guard", "Probe", "Readiness", "add_health_routes", "metric_names"]

log = logging.getLogger(__name__)

# A check that asks something (the database): None when fine, else the reason it is not.
Probe = Callable[[], Awaitable[str | None]]
Guard = Callable[[web.Request], None]  # returns, or raises the refusal


def add_health_routes(
    app: web.Application,
    *,
    registry: CollectorRegistry,
    readiness: Readiness,
    probes: Mapping[str, Probe] | None = None,
    metrics_guard: Guard | None = None,
) -> None:
    """/healthz (the process lives), /readyz (every check true and every probe None, else
    503 with `reasons` naming why), /metrics (behind `metrics_guard`)."""

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response(HEALTHY)

    async def readyz(_: web.Request) -> web.Response:
        checks = dict(readiness())
        reasons = {}
        for name, probe in (probes or {}).items():
            reason = await probe()
            checks[name] = reason is None
            if reason is not None:
                reasons[name] = reason
        status, body = readiness_answer(checks, reasons)
        return web.json_response(body, status=status)

    async def metrics(request: web.Request) -> web.StreamResponse:
        if metrics_guard is not None:
            metrics_guard(request)
        names = metric_names(request)
        # Streamed, each piece rendered off the event loop: thousands of series take long
        # enough to stall rounds, and held whole they cost 100 MiB at 5,000 targets.
        pieces = exposition_chunks(registry, names)
        piece = await asyncio.to_thread(next, pieces, None)
        response = web.StreamResponse(headers={"Content-Type": CONTENT_TYPE_LATEST})
        await response.prepare(request)
        try:
            while piece is not None:
                await response.write(piece)
                piece = await asyncio.to_thread(next, pieces, None)
            await response.write_eof()
        except ConnectionResetError:  # aiohttp's ClientConnectionResetError is one
            # The scraper went away mid-answer (its scrape timeout passed): nobody to answer,
            # and not our error; the rest is not rendered.
            log.info("a /metrics scrape ended by the scraper before its end")
        return response

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)


def metric_names(request: web.Request) -> list[str]:
    """The sample names a scrape asks for with `name[]=` (none: everything); 400 naming the
    parameter when one is not a metric name."""
    names = request.query.getall(NAME_FILTER, [])
    if (problem := bad_metric_names(names)) is not None:
        raise web.HTTPBadRequest(text=problem)
    return names
