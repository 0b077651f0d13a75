"""The compact per-pair families: the same exposition as prometheus_client's, written
directly, in a fraction of the memory (docs/performance.md, "How cost grows with targets")."""

from __future__ import annotations

import gc
import tracemalloc

from prometheus_client import CollectorRegistry, Counter, generate_latest

from egresswatch.compact_metrics import (
    CompactCounter,
    CompactGauge,
    CompactHistogram,
    CompactRegistry,
    exposition,
)
from egresswatch.controller.detection.hysteresis import Detector
from egresswatch.metrics import Metrics
from egresswatch.settings import DetectionSettings
from tests.test_metrics import dns_broken, healthy


def families(registry: CollectorRegistry) -> None:
    histogram = CompactHistogram("x_seconds", 'a "doc"\nline', ("a", "b"), (0.1, 1.0), registry)
    histogram.labels("p", 'q"\n\\').observe(0.1)  # on a bound: counted in it (le)
    histogram.labels("p", "z").observe(5.0)
    CompactCounter("y_total", "counted", ("a",), registry).labels("q").inc(2)
    CompactGauge("z", "set", ("a",), registry).labels("q").set(-3.5)


def test_a_filtered_scrape_holds_the_compact_families_asked_for() -> None:
    registry = CompactRegistry()
    families(registry)
    Counter("plain_total", "a plain counter", registry=registry).inc()
    text = exposition(registry, ["y_total", "plain_total"])
    assert b'y_total{a="q"} 2.0' in text and b"plain_total 1.0" in text
    assert b"x_seconds" not in text and b"z{" not in text
    assert b"x_seconds_bucket" in exposition(registry, ["x_seconds_bucket"])


def test_exposition_is_what_generate_latest_writes() -> None:
    registry = CompactRegistry()
    families(registry)
    text = exposition(registry)
    assert text == generate_latest(registry)
    assert b'x_seconds_bucket{a="p",b="q\\"\\n\\\\",le="0.1"} 1.0' in text
    assert b'x_seconds_bucket{a="p",b="z",le="+Inf"} 1.0' in text
    assert b'x_seconds_sum{a="p",b="z"} 5.0' in text
    assert b'y_total{a="q"} 2.0' in text and b'z{a="q"} -3.5' in text
    assert registry.get_sample_value("x_seconds_count", {"a": "p", "b": "z"}) == 1.0


def test_the_service_metrics_read_the_same_on_either_registry() -> None:
    """Metrics on a CompactRegistry (the service's) and on a plain one (tests') agree, and a
    forgotten target leaves the exposition."""
    pages = []
    for registry in (CompactRegistry(), CollectorRegistry()):
        metrics = Metrics(registry, version="1")
        metrics.observe_round(healthy(target="api"))
        metrics.observe_round(dns_broken())
        metrics.observe_round(healthy(target="gone"))
        metrics.forget_target("gone")
        pages.append(sorted(exposition(registry).splitlines()))
        assert exposition(registry) == generate_latest(registry)
    assert pages[0] == pages[1]
    assert not any(b'target="gone"' in line for line in pages[0])
    assert any(b"egresswatch_step_duration_seconds_bucket" in line for line in pages[0])


def _bytes_per_target(build: int) -> float:
    """What `build` targets' series (one source, 5 steps timed) and detection state hold."""
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    metrics = Metrics(CompactRegistry(), version="1")
    detector = Detector(lambda target: DetectionSettings())
    for number in range(build):
        round_ = healthy(source="pod-a", target=f"t{number:05d}")
        metrics.observe_round(round_)
        detector.observe(round_, now=round_.started_at)
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert metrics and detector
    return held / build


def test_memory_per_target_is_small() -> None:
    """One source's series and detection state for a target (5 steps, one healthy round):
    46 KB with prometheus_client's objects (a lock per number), an empty deque per step track
    and a set per target per family; 12.6 KB now."""
    assert _bytes_per_target(1000) < 20_000
