"""/metrics with `name[]=` filters, against the real route on loopback (egresswatch.health).

A scrape that names its series gets those samples and no other, and collects only the
collectors that own them: a benchmark reading three counters must not pay for the whole
registry (service/egresswatch/bench/ours.py).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from collections.abc import Iterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families

from egresswatch.compact_metrics import (
    CHUNK_CHARS,
    CompactHistogram,
    CompactRegistry,
    exposition,
    exposition_chunks,
)
from egresswatch.controller.api.app import PROBLEM, make_app
from egresswatch.health import add_health_routes


class Expensive:
    """A collector that counts how often it is collected: the many series a filter skips."""

    def __init__(self) -> None:
        self.collected = 0

    def describe(self) -> list[Metric]:
        return [GaugeMetricFamily("egresswatch_expensive", "many series")]

    def collect(self) -> Iterator[Metric]:
        self.collected += 1
        family = GaugeMetricFamily("egresswatch_expensive", "many series", labels=["n"])
        for n in range(100):
            family.add_metric([str(n)], n)
        yield family


def _app(registry: CollectorRegistry) -> web.Application:
    app = web.Application()
    add_health_routes(app, registry=registry, readiness=dict)
    return app


def _samples(text: str) -> dict[str, float]:
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_a_filtered_scrape_renders_only_the_named_samples() -> None:
    registry = CollectorRegistry()
    shed = Counter("egresswatch_shed", "shed", registry=registry)
    late = Histogram("egresswatch_late_seconds", "late", registry=registry)
    expensive = Expensive()
    registry.register(expensive)
    shed.inc(3)
    late.observe(0.5)
    async with TestClient(TestServer(_app(registry), host="127.0.0.1")) as client:
        names = ["egresswatch_shed_total", "egresswatch_late_seconds_count"]
        answer = await client.get("/metrics", params=[("name[]", n) for n in names])
        assert answer.status == 200
        assert _samples(await answer.text()) == {
            "egresswatch_shed_total": 3.0,
            "egresswatch_late_seconds_count": 1.0,
        }
        assert expensive.collected == 0  # the filter collected only the owners of the names

        whole = await client.get("/metrics")
        assert whole.status == 200
        assert "egresswatch_expensive" in _samples(await whole.text())
        assert expensive.collected == 1


async def test_a_filter_that_is_not_a_metric_name_is_refused_naming_the_parameter() -> None:
    async with TestClient(TestServer(_app(CollectorRegistry()), host="127.0.0.1")) as client:
        answer = await client.get("/metrics", params={"name[]": "up{job}"})
        assert answer.status == 400
        assert "name[]" in await answer.text()


async def test_the_controller_refuses_a_bad_filter_with_a_problem_document() -> None:
    # The controller's application (make_app) answers every error as a problem document, as
    # an agent's own listener does (tests/test_agent_http.py): the same refusal from both.
    app = make_app(registry=CollectorRegistry(), readiness=dict)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        answer = await client.get("/metrics", params={"name[]": "up{job}"})
        assert answer.status == 400
        assert answer.content_type == PROBLEM
        document = await answer.json(content_type=PROBLEM)
        assert document["status"] == 400
        assert document["detail"].startswith("name[]: 'up{job}' is not a metric name")


async def test_a_large_scrape_is_streamed_in_pieces_and_reads_as_the_whole() -> None:
    # Held whole, a 5,000-target scrape raised the RSS by 100 MiB (docs/performance.md, "How
    # cost grows with targets"): the route writes it in pieces of about CHUNK_CHARS.
    registry = CompactRegistry()
    histogram = CompactHistogram("egresswatch_x_seconds", "x", ("target",), (0.1, 1.0), registry)
    for n in range(3000):  # about 300 characters a series: 14 pieces
        histogram.labels(f"t{n}").observe(n / 1000)
    Counter("egresswatch_plain", "a plain counter", registry=registry).inc()
    pieces = list(exposition_chunks(registry))
    assert len(pieces) > 3  # the collectors' samples, then the family in pieces
    assert max(len(piece) for piece in pieces) < CHUNK_CHARS + 1000  # + one series at most
    async with TestClient(TestServer(_app(registry), host="127.0.0.1")) as client:
        response = await client.get("/metrics")
        body = await response.read()
    assert response.status == 200
    assert response.headers["Transfer-Encoding"] == "chunked"
    assert "Content-Length" not in response.headers
    assert body == b"".join(pieces) == exposition(registry)
    assert _samples(body.decode())["egresswatch_x_seconds_count"] == 1.0


async def test_a_scraper_gone_mid_answer_is_no_error(caplog: pytest.LogCaptureFixture) -> None:
    # Prometheus closes a scrape at its scrape_timeout: the route's next write finds the
    # connection reset. That is the scraper's doing: logged as info, never a traceback.
    registry = CompactRegistry()
    histogram = CompactHistogram("egresswatch_x_seconds", "x", ("target",), (0.1, 1.0), registry)
    for n in range(30_000):  # about 9 MB: far more than the socket buffers hold
        histogram.labels(f"t{n}").observe(n / 1000)
    app = web.Application()
    add_health_routes(app, registry=registry, readiness=dict)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        caplog.set_level(logging.INFO)
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        async with asyncio.timeout(10):
            assert (await reader.read(1024)).startswith(b"HTTP/1.1 200")
        # Closed with a reset (SO_LINGER 0), as a client that gives up does.
        scraper = writer.get_extra_info("socket")
        scraper.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.close()
        for _ in range(60):  # bounded: until the route saw the reset (3 s at most)
            if "ended by the scraper" in caplog.text or "Error handling" in caplog.text:
                break
            await asyncio.sleep(0.05)
    finally:
        await server.close()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
