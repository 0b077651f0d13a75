"""The agent's own health: the sink's hooks on its metrics registry, and the /healthz,
/readyz and /metrics endpoints it serves."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge

from egresswatch.agent.sink_types import DROP_REASONS, DropReason
from egresswatch.health import Readiness, add_health_routes
from egresswatch.metrics import Metrics

__all__ = ["AgentMetrics", "health_app"]


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


def health_app(registry: CollectorRegistry, readiness: Readiness) -> web.Application:
    """/healthz, /readyz and /metrics for the agent (egresswatch.health, as the controller)."""
    app = web.Application()
    add_health_routes(app, registry=registry, readiness=readiness)
    return app
