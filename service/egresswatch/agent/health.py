"""The agent's own health: the sink's hooks on its metrics registry, and the /healthz,
/readyz and /metrics endpoints it serves (on agent/listener.py: an agent loads no aiohttp)."""

from __future__ import annotations

import asyncio
import json

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from egresswatch.agent.listener import Answer, Handler, Request, problem_answer
from egresswatch.agent.sink_types import DROP_REASONS, DropReason
from egresswatch.compact_metrics import exposition
from egresswatch.health_answers import (
    HEALTHY,
    NAME_FILTER,
    Readiness,
    bad_metric_names,
    readiness_answer,
)
from egresswatch.metrics import Metrics

__all__ = ["AgentMetrics", "health_handler"]


class AgentMetrics:
    """The sink's hooks on the agent's registry: Metrics' health families, plus rounds dropped
    by reason (a closed vocabulary, every reason present from the start at 0), and what the
    buffer holds: bytes in memory (as counted against --buffer-mib), rounds and bytes in the
    spill file."""

    def __init__(self, metrics: Metrics, registry: CollectorRegistry) -> None:
        self._metrics = metrics
        self._dropped = Counter(
            "egresswatch_agent_rounds_dropped_total",
            "Rounds the agent gave up on, by why: buffer_full, spill_full, spill_failed, "
            "unknown_target, refused, shutdown, unencodable.",
            ("why",),
            registry=registry,
        )
        for why in DROP_REASONS:
            self._dropped.labels(why)
        self._memory_bytes = Gauge(
            "egresswatch_agent_buffer_bytes",
            "Bytes of undelivered rounds held in memory, as counted against --buffer-mib.",
            registry=registry,
        )
        self._spilled_rounds = Gauge(
            "egresswatch_agent_spill_rounds",
            "Undelivered rounds waiting in the spill file.",
            registry=registry,
        )
        self._spill_bytes = Gauge(
            "egresswatch_agent_spill_bytes",
            "Size of the spill file, bounded by --spill-mib.",
            registry=registry,
        )

    def buffer_depth(self, rounds: int) -> None:
        self._metrics.set_buffer_depth(rounds)

    def buffer_state(self, memory_bytes: int, spilled_rounds: int, spill_bytes: int) -> None:
        self._memory_bytes.set(memory_bytes)
        self._spilled_rounds.set(spilled_rounds)
        self._spill_bytes.set(spill_bytes)

    def batch_sent(self, ok: bool, rounds: int) -> None:
        self._metrics.count_ingest_batch("ok" if ok else "error", rounds)

    def rounds_dropped(self, rounds: int, why: DropReason) -> None:
        self._dropped.labels(why).inc(rounds)


def health_handler(registry: CollectorRegistry, readiness: Readiness) -> Handler:
    """/healthz, /readyz and /metrics for the agent, answered as the controller's are
    (health_answers.py): GET or HEAD; any other path 404, any other method 405, a bad
    `name[]=` 400, each a problem document."""

    async def metrics(request: Request) -> Answer:
        names = request.params(NAME_FILTER)
        if (problem := bad_metric_names(names)) is not None:
            return problem_answer(400, problem)
        # Rendered off the event loop, as the controller does: a scrape must not stall rounds.
        body = await asyncio.to_thread(exposition, registry, names)
        return Answer(200, body, CONTENT_TYPE_LATEST)

    async def handle(request: Request) -> Answer:
        if request.path not in ("/healthz", "/readyz", "/metrics"):
            return problem_answer(404, "the agent serves /healthz, /readyz and /metrics")
        if request.method not in ("GET", "HEAD"):
            return problem_answer(405, f"{request.path} answers GET and HEAD only")
        if request.path == "/healthz":
            return _json(200, HEALTHY)
        if request.path == "/readyz":
            return _json(*readiness_answer(readiness(), {}))
        return await metrics(request)

    return handle


def _json(status: int, body: object) -> Answer:
    return Answer(status, json.dumps(body).encode())
