"""The compact per-pair families: the same exposition as prometheus_client's, written
directly, in a fraction of the memory (docs/performance.md, "How cost grows with targets")."""

from __future__ import annotations

import gc
import tracemalloc
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

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
    and a set per target per family; 8.8 KB with an array per series; 7.2 KB with one array a
    family, the latency detector slotted and one label tuple shared by step_up and the
    histogram; 6.7 KB with no index of the series by target."""
    assert _bytes_per_target(1000) < 7_000


def _both(registry: CollectorRegistry, compact: bool) -> tuple[object, object, object]:
    """A histogram, a counter and a gauge on `registry`: compact, or prometheus_client's."""
    if compact:
        return (
            CompactHistogram("h_seconds", "timed", ("a", "b"), (0.1, 1.0), registry),
            CompactCounter("c_total", "counted", ("a",), registry),
            CompactGauge("g", "set", ("a", "b"), registry),
        )
    return (
        Histogram("h_seconds", "timed", ("a", "b"), buckets=(0.1, 1.0), registry=registry),
        Counter("c_total", "counted", ("a",), registry=registry),
        Gauge("g", "set", ("a", "b"), registry=registry),
    )


def _churn(histogram: Any, counter: Any, gauge: Any) -> None:
    """Series added, removed (their slots freed), added in their place and added again."""
    for name in ("x", "y", "z"):
        histogram.labels(name, "1").observe(0.5)
        counter.labels(name).inc(3)
        gauge.labels(name, "1").set(7)
    histogram.remove("x", "1")  # the first slot, freed
    counter.remove("y")
    gauge.remove("z", "1")
    histogram.labels("w", "1").observe(0.05)  # takes the freed slot: starts at zero
    counter.labels("w").inc()
    gauge.labels("w", "1").set(2)
    histogram.labels("x", "1").observe(2.0)  # back, last, from zero
    counter.labels("y").inc(0.5)
    gauge.labels("z", "1").set(-1)


def test_one_array_a_family_reads_as_prometheus_client_through_removals() -> None:
    """Series added, removed, slots reused and series added again: the same bytes, in the same
    order, as prometheus_client's own families given the same calls."""
    disable_created_metrics()  # type: ignore[no-untyped-call]
    pages = []
    for compact in (True, False):
        registry = CompactRegistry() if compact else CollectorRegistry()
        _churn(*_both(registry, compact))
        pages.append(exposition(registry) if compact else generate_latest(registry))
    assert pages[0] == pages[1]
    assert b'h_seconds_bucket{a="w",b="1",le="0.1"} 1.0' in pages[0]
    assert b'h_seconds_sum{a="x",b="1"} 2.0' in pages[0]
    assert b'c_total{a="y"} 0.5' in pages[0] and b'g{a="z",b="1"} -1.0' in pages[0]


def test_a_reused_slot_starts_at_zero_and_keeps_the_array() -> None:
    registry = CompactRegistry()
    counter = CompactCounter("c_total", "counted", ("a",), registry)
    for name in "abc":
        counter.labels(name).inc(5)
    counter.remove("b")
    counter.labels("d").inc()  # the slot "b" had
    counter.labels("b").inc(2)  # a new slot at the end
    assert registry.get_sample_value("c_total", {"a": "d"}) == 1.0
    assert registry.get_sample_value("c_total", {"a": "b"}) == 2.0
    assert len(counter._numbers) == 4  # one slot reused, one added


def test_a_series_removed_while_a_scrape_renders_is_left_out() -> None:
    """A scrape copies the table first: a series removed after that, its slot given to another,
    is not written under its old labels with the new series' numbers."""
    registry = CompactRegistry()
    gauge = CompactGauge("g", "set", ("a",), registry)
    for number in range(3000):  # more than a piece of CHUNK_CHARS
        gauge.labels(f"s{number}").set(number)
    pieces = gauge.chunks(1024)
    first = next(pieces)
    gauge.remove("s2999")
    gauge.labels("new").set(-1)  # reuses the slot of s2999
    rest = "".join(pieces)
    assert 'g{a="s0"} 0.0' in first
    assert 's2999"' not in rest and 'a="new"' not in rest  # new: after the table was copied
    assert 'g{a="s2998"} 2998.0' in rest
