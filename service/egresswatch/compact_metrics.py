"""Labelled metric families kept compact: one array of doubles per family, a slot per series.

prometheus_client keeps every series of a labelled family as objects of its own: a child with
a lock, and a value object with a lock for each number (a histogram of 14 buckets is 17 of
them). With 5,000 targets, 5 steps each, that was about 16 KB a target (tracemalloc, 1,000
against 4,000 targets; docs/performance.md, "How cost grows with targets"). These families
keep one ``array('d')`` each, `size` numbers a series at the series' slot, and a table from
label values to slot; they are rendered by the same library (a custom collector), so /metrics
reads the same. (An array per series was 64 bytes of header for 8 of number: 15 of a target's
20 series are one number.)

Contract: ``labels(*values)`` returns a handle with the family's operation (``observe``,
``inc``, ``set``), good until the series is removed; ``remove(*values)`` forgets a series, and
its slot, zeroed, is the next new series'. The order of a scrape is the order series were
added (a series removed and added again comes last), as prometheus_client's. Writes happen on
the event loop and a scrape may render in another thread: it copies the table, then each
series' numbers as it writes them (C-level copies, whole under the GIL), so a series is never
read half-written; a series removed meanwhile is left out. A scrape is streamed in pieces of
about CHUNK_CHARS characters (:func:`exposition_chunks`), never held whole.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from typing import Generic, TypeVar

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector, RestrictedRegistry
from prometheus_client.utils import floatToGoString

__all__ = [
    "CompactCounter",
    "CompactGauge",
    "CompactHistogram",
    "CompactRegistry",
    "Counting",
    "Family",
    "Observing",
    "exposition",
]

# The text a piece of a streamed scrape holds, at least (it ends with a whole series). Small
# enough that a piece is never a large allocation: the allocator keeps those, one set per
# rendering thread (1 MB pieces left 20 MiB behind after a scrape at 5,000 targets).
CHUNK_CHARS = 64 * 1024

Labels = tuple[str, ...]
H = TypeVar("H")


class Family(Collector, Generic[H]):
    """A labelled family: `size` doubles per series, registered on `registry`; `labels`
    returns a handle of type H."""

    size = 1

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        registry: CollectorRegistry,
    ) -> None:
        self.name, self.documentation = name, documentation
        self.labelnames = tuple(labelnames)
        self._slots: dict[Labels, int] = {}  # a series' label values -> its first number's index
        self._numbers: array[float] = array("d")
        self._free: list[int] = []  # the slots of removed series, zeroed, reused first
        self._zeros = bytes(8 * self.size)
        registry.register(self)

    def _slot(self, values: Labels) -> int:
        """The index of the first number of the series of `values`, made (zero) if new."""
        found = self._slots.get(values)
        if found is None:
            if len(values) != len(self.labelnames):
                raise ValueError(f"{self.name}: expected labels {self.labelnames}, got {values}")
            if self._free:
                found = self._free.pop()
            else:
                found = len(self._numbers)
                self._numbers.frombytes(self._zeros)
            self._slots[values] = found
        return found

    def labels(self, *values: str) -> H:
        return self.handle(values)

    def handle(self, values: Labels) -> H:
        """The series of `values`, made if new; `values` itself is kept as its key (pass
        the tuple an index already holds: one tuple a series, not two)."""
        raise NotImplementedError

    def series(self) -> list[Labels]:
        """The label values of every series, in the order of a scrape (a copy)."""
        return list(self._slots)

    def has(self, values: Labels) -> bool:
        """Whether the series of `values` exists."""
        return values in self._slots

    def remove(self, *values: str) -> None:
        at = self._slots.pop(values, None)
        if at is not None:
            self._numbers[at : at + self.size] = array("d", self._zeros)
            self._free.append(at)

    def _empty(self) -> Metric:
        raise NotImplementedError

    def describe(self) -> Iterator[Metric]:
        yield self._empty()

    def text(self) -> str:
        """The family in the text exposition format, as generate_latest writes it, without
        its objects: a label set is escaped once per series, not once per line."""
        return "".join(self.chunks(CHUNK_CHARS))

    def chunks(self, chars: int) -> Iterator[str]:
        """:meth:`text` in pieces of whole series, each ending once it holds `chars`
        characters or more (the first also holds HELP and TYPE): a scrape streams them, and
        never holds the whole family's text (with 5,000 targets a whole scrape held at once
        raised the RSS by 100 MiB, and kept a quarter of it). The table is copied first; each
        series' numbers when written."""
        kind = self._empty().type
        name = self._exposed_name()
        doc = self.documentation.replace("\\", r"\\").replace("\n", r"\n")
        lines = [f"# HELP {name} {doc}\n# TYPE {name} {kind}\n"]
        order = sorted(range(len(self.labelnames)), key=self.labelnames.__getitem__)
        held = len(lines[0])
        for values, numbers in self._copies():
            # Sorted by label name, as generate_latest writes them.
            pairs = [(self.labelnames[i], _escape(values[i])) for i in order]
            lines.append(self._lines(pairs, numbers))
            held += len(lines[-1])
            if held >= chars:
                yield "".join(lines)
                lines, held = [], 0
        if lines:
            yield "".join(lines)

    def _exposed_name(self) -> str:
        return self.name

    def sample_names(self) -> set[str]:
        """The names its samples carry (what a scrape's `name[]=` selects by)."""
        base = self.name.removesuffix("_total")
        return {base, f"{base}_total", f"{base}_bucket", f"{base}_sum", f"{base}_count"}

    def _lines(self, pairs: list[tuple[str, str]], numbers: array[float]) -> str:
        return f"{self._exposed_name()}{{{_joined(pairs)}}} {_number(numbers[0])}\n"

    def snapshot(self) -> list[tuple[Labels, array[float]]]:
        """Every series with a copy of its numbers (see the module docstring)."""
        return list(self._copies())

    def _copies(self) -> Iterator[tuple[Labels, array[float]]]:
        """Each series of a copy of the table, with a copy of its numbers made when it is
        reached; a series whose slot was given up since the table was copied is left out (the
        copy may be another series' numbers)."""
        size, slots = self.size, self._slots
        for values, at in dict(slots).items():
            numbers = self._numbers[at : at + size]
            if slots.get(values) == at:
                yield values, numbers


class Counting:
    """A one-number series' handle: its family's array and its slot."""

    __slots__ = ("_at", "_numbers")

    def __init__(self, numbers: array[float], at: int) -> None:
        self._numbers, self._at = numbers, at

    def inc(self, amount: float = 1.0) -> None:
        self._numbers[self._at] += amount

    def set(self, value: float) -> None:
        self._numbers[self._at] = value


class _OneNumber(Family[Counting]):
    """A family of one number a series (a counter or a gauge)."""

    def handle(self, values: Labels) -> Counting:
        return Counting(self._numbers, self._slot(values))

    def _empty(self) -> CounterMetricFamily | GaugeMetricFamily:
        raise NotImplementedError

    def collect(self) -> Iterator[Metric]:
        family = self._empty()
        for values, numbers in self.snapshot():
            family.add_metric(values, numbers[0])
        yield family


class CompactCounter(_OneNumber):
    """A counter family: ``labels(...).inc()``; rendered with ``_total``."""

    def _exposed_name(self) -> str:
        return self.name.removesuffix("_total") + "_total"

    def _empty(self) -> CounterMetricFamily:
        return CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)


class CompactGauge(_OneNumber):
    """A gauge family: ``labels(...).set(value)``."""

    def _empty(self) -> GaugeMetricFamily:
        return GaugeMetricFamily(self.name, self.documentation, labels=self.labelnames)


class Observing:
    """A histogram series' handle: its family's array, its slot and the bucket bounds."""

    __slots__ = ("_at", "_bounds", "_numbers")

    def __init__(self, bounds: tuple[float, ...], numbers: array[float], at: int) -> None:
        self._bounds, self._numbers, self._at = bounds, numbers, at

    def observe(self, amount: float) -> None:
        # One count per bucket (the first bound >= amount; +Inf last), the sum after them.
        at = self._at
        self._numbers[at + bisect_left(self._bounds, amount)] += 1
        self._numbers[at + len(self._bounds) + 1] += amount


class CompactHistogram(Family[Observing]):
    """A histogram family over `buckets` (upper bounds, ascending; +Inf is added)."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        buckets: Sequence[float],
        registry: CollectorRegistry,
    ) -> None:
        self._bounds = tuple(float(b) for b in buckets)
        self._le = [floatToGoString(b) for b in self._bounds] + ["+Inf"]  # type: ignore[no-untyped-call]
        self.size = len(self._bounds) + 2  # the buckets, +Inf, the sum
        super().__init__(name, documentation, labelnames, registry)

    def handle(self, values: Labels) -> Observing:
        return Observing(self._bounds, self._numbers, self._slot(values))

    def _lines(self, pairs: list[tuple[str, str]], numbers: array[float]) -> str:
        name, total, lines = self.name, 0.0, []
        labels = _joined(pairs)
        # `le` takes its place in the sorted label names, as generate_latest writes it.
        before = "".join(f'{key}="{value}",' for key, value in pairs if key < "le")
        after = "".join(f',{key}="{value}"' for key, value in pairs if key > "le")
        for le, count in zip(self._le, numbers[:-1], strict=True):
            total += count
            lines.append(f'{name}_bucket{{{before}le="{le}"{after}}} {_number(total)}\n')
        lines.append(f"{name}_count{{{labels}}} {_number(total)}\n")
        lines.append(f"{name}_sum{{{labels}}} {_number(numbers[-1])}\n")
        return "".join(lines)

    def _empty(self) -> HistogramMetricFamily:
        return HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def collect(self) -> Iterator[Metric]:
        family = self._empty()
        for values, numbers in self.snapshot():
            total, cumulative = 0.0, []
            for le, count in zip(self._le, numbers[:-1], strict=True):
                total += count
                cumulative.append((le, total))
            family.add_metric(values, cumulative, numbers[-1])
        yield family


def _joined(pairs: list[tuple[str, str]]) -> str:
    return ",".join(f'{key}="{value}"' for key, value in pairs)


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _number(value: float) -> str:
    return floatToGoString(value)  # type: ignore[no-untyped-call,no-any-return]


class CompactRegistry(CollectorRegistry):
    """A registry that keeps compact families beside its collectors: `collect()` (and so
    generate_latest, get_sample_value) sees them all; :func:`exposition` writes the compact
    ones without building a sample object per line."""

    def __init__(self) -> None:
        super().__init__()
        self.compact: list[Family[object]] = []

    def register(self, collector: Collector) -> None:
        if isinstance(collector, Family):
            self.compact.append(collector)
        else:
            super().register(collector)

    def collect(self) -> Iterator[Metric]:
        yield from super().collect()
        for family in self.compact:
            yield from family.collect()

    def _others(self) -> Iterator[Metric]:
        yield from super().collect()


class _Others:
    def __init__(self, registry: CompactRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterator[Metric]:
        return self._registry._others()


def exposition(registry: CollectorRegistry, names: Sequence[str] = ()) -> bytes:
    """/metrics' body whole: :func:`exposition_chunks` joined."""
    return b"".join(exposition_chunks(registry, names))


def exposition_chunks(registry: CollectorRegistry, names: Sequence[str] = ()) -> Iterator[bytes]:
    """/metrics' body in pieces (the collectors' samples, then each compact family in pieces
    of about CHUNK_CHARS characters): generate_latest, with a CompactRegistry's families written
    directly (a 5,000-target scrape took 1.3 CPU-seconds, most of it formatting their
    samples). Each piece may be made in another thread than the one before it.

    With `names` (`name[]=` of a scrape), only the samples so named, as prometheus_client's
    `restricted_registry` gives them; a compact family is written whole when one of its
    sample names (`NAME`, `NAME_total`, `NAME_bucket`, ...) is asked for.
    """
    if not isinstance(registry, CompactRegistry):
        yield generate_latest(registry.restricted_registry(names) if names else registry)
        return
    others: _Others | RestrictedRegistry = _Others(registry)
    compact = registry.compact
    if names:
        others = registry.restricted_registry(names)
        asked = set(names)
        compact = [f for f in compact if asked & f.sample_names()]
    yield generate_latest(others)
    for family in compact:
        for text in family.chunks(CHUNK_CHARS):
            yield text.encode()
