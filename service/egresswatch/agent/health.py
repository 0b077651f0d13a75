"""The agent's own health: the sink's hooks on its metrics registry, and the /healthz,
/readyz and /metrics endpoints it serves."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from egresswatch.agent.sink_types import DROP_REASONS, DropReason
from egresswatch.metrics import Metrics

__all__ = ["AgentMetrics", "health_app"]


class AgentMetrics:
    """The sink's hooks on the agent's registry: Metrics' health families, plus rounds dropped
    by reason (a closed vocabulary, every reason present from the start at 0)."""

    def __init__(self, metrics: Metrics, registry: CollectorRegistry) -> None:
        self._metrics = metrics
        self._dropped = Counter(
            "egresswatch_agent_rounds_dropped_total",
            "Rounds the agent gave up on, by why: buffer_full, unknown_target, refused, "
            "shutdown, unencodable.",
            ("why",),
            registry=registry,
        )
        for why in DROP_REASONS:
            self._dropped.labels(why)

    def buffer_depth(self, rounds: int) -> None:
        self._metrics.set_buffer_depth(rounds)

    def batch_sent(self, ok: bool, rounds: int) -> None:
        self._metrics.count_ingest_batch("ok" if ok else "error", rounds)

    def rounds_dropped(self, rounds: int, why: DropReason) -> None:
        self._dropped.labels(why).inc(rounds)


def health_app(
    registry: CollectorRegistry, readiness: Callable[[], Mapping[str, bool]]
) -> web.Application:
    """/healthz (the process lives), /readyz (every check true, else 503), /metrics.

    The same answers as the controller's (controller/api.py), written again because the agent
    must not import the controller.
    """
    app = web.Application()

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        checks = dict(readiness())
        ready = all(checks.values())
        return web.json_response(
            {"status": "ready" if ready else "not ready", "checks": checks},
            status=200 if ready else 503,
        )

    async def metrics(_: web.Request) -> web.Response:
        body = await asyncio.to_thread(generate_latest, registry)
        response = web.Response(body=body)
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app
