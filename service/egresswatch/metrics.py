"""Prometheus metrics (DESIGN.md §4), registered on an injected registry: no global one.

Label values come only from configured names (source, target) and the closed vocabularies of
:mod:`egresswatch.model` (Step, Status, Reason, Suspect), never from exception text.

Decisions:

- ``egresswatch_step_up`` is set by steps that ran to a verdict: 1 for ``ok``, 0 for ``fail``.
  ``skipped`` and ``error`` steps leave it as it was (``path_trace`` is skipped while not due;
  ``error`` is our probe breaking, not the target), and a step that never reached a verdict has
  no series. ``egresswatch_step_results_total`` counts every status.
- ``egresswatch_step_duration_seconds`` observes every step that ran (not ``skipped``).
- ``reason`` is ``"none"`` when a step has no reason (not a member of Reason, and explicit in
  PromQL where ``""`` would mean "label absent").
- ``egresswatch_first_failing_step`` is a state set per (source, target): 1 on the current first
  failing step, 0 on the steps that were first failing before; steps that never were have no
  series, and a healthy pair has only zeros (or nothing). Alert on ``== 1``.
- ``egresswatch_incidents_open`` keeps a (target, suspect) series at 0 once its incidents close.
- :meth:`Metrics.forget_target` / :meth:`Metrics.forget_source` remove every series carrying
  that name, so a target that leaves the config leaves the scrape.
- ``per_source_kind`` (config ``metrics.detail: source_kind``): the duration histogram and the
  results counter carry ``source_kind`` (pod, node, or unknown) instead of ``source``. They are
  most of a scrape (a histogram is 17 lines a step): at 10,000 (source, target) pairs per
  source they made 157 MB and 10 CPU-seconds a scrape. The per-pair gauges stay per source.
- The per-pair families are :mod:`egresswatch.compact_metrics` (an array of doubles per
  series, not prometheus_client's objects and locks): 16 KB a target less with 5,000 targets.
- No ``_created`` series: a counter's or histogram's creation time doubles the lines of the
  families that carry per-pair labels and no alert or dashboard reads it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping
from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)

from egresswatch.compact_metrics import (
    CompactCounter,
    CompactGauge,
    CompactHistogram,
    Family,
)
from egresswatch.model import RoundResult, SourceKind, Status, Step, Suspect

__all__ = ["DURATION_BUCKETS", "LATENESS_BUCKETS", "NO_REASON", "Metrics", "WriterMetrics"]

log = logging.getLogger(__name__)

NO_REASON = "none"
UNKNOWN_KIND = "unknown"  # a source that never said whether it is a pod or a node
# Steps take from about a millisecond (DNS from the node cache) to a 30 s timeout.
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
# Healthy lateness is milliseconds; seconds mean saturation or a stalled loop.
LATENESS_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

_PAIR = ("source", "target", "step")
SOURCE_STATES = ("reporting", "unknown", "missing", "retired")  # controller/designated.py
_H = TypeVar("_H")


class _Tracked(Generic[_H]):
    """A labelled family whose series can be removed by the value of one label.

    No index by target or source: a list of series a target in each family was 370 bytes a
    target (1.9 MB at 5,000 targets, docs/performance.md "Issue 14: 5,000 targets under 150
    MiB") for removals that happen when a reload drops targets or the cluster retires a
    source. A removal is one pass over the family's series for any number of names
    (`Metrics.forget_targets`): linear in the series, never in series x names.
    """

    def __init__(self, family: Family[_H], labelnames: tuple[str, ...]) -> None:
        self.family = family
        self._labelnames = labelnames

    def labels(self, *values: str) -> _H:
        return self.series(values)

    def series(self, values: tuple[str, ...]) -> _H:
        """The handle of the series of `values`; a new series keeps `values` itself (pass one
        tuple to several families: one tuple, not one a family)."""
        return self.family.handle(values)

    def remove_where(self, label: str, names: Collection[str]) -> None:
        """Remove every series whose `label` (source or target) is one of `names`; nothing
        when the family has no such label."""
        if label not in self._labelnames or not names:
            return
        where = self._labelnames.index(label)
        for values in self.family.series():
            if values[where] in names:
                self.family.remove(*values)


class Metrics:
    """Every egresswatch metric family, registered on ``registry`` at construction."""

    def __init__(
        self, registry: CollectorRegistry, *, version: str, per_source_kind: bool = False
    ) -> None:
        r = registry
        self._per_kind = per_source_kind
        # A process-wide switch of the library (it has no per-registry one); every registry
        # of ours wants it.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        detailed = ("source_kind", "target", "step") if per_source_kind else _PAIR
        # The per-pair families are compact (compact_metrics.py): thousands of series each.
        self._step_up = _Tracked(
            CompactGauge(
                "egresswatch_step_up",
                "1 if the step's latest verdict was ok, 0 if fail (skipped and error leave it).",
                _PAIR,
                r,
            ),
            _PAIR,
        )
        self._duration = _Tracked(
            CompactHistogram(
                "egresswatch_step_duration_seconds",
                "How long each step that ran took.",
                detailed,
                DURATION_BUCKETS,
                r,
            ),
            detailed,
        )
        results_labels = (*detailed, "status", "reason")
        self._results = _Tracked(
            CompactCounter(
                "egresswatch_step_results",
                'Step results by status and reason (reason "none" when there is none).',
                results_labels,
                r,
            ),
            results_labels,
        )
        self._first_failing = _Tracked(
            CompactGauge(
                "egresswatch_first_failing_step",
                "1 on the current first failing step of a (source, target), 0 on earlier ones.",
                _PAIR,
                r,
            ),
            _PAIR,
        )
        self._incidents = _Tracked(
            CompactGauge(
                "egresswatch_incidents_open",
                "Open incidents per target and suspect.",
                ("target", "suspect"),
                r,
            ),
            ("target", "suspect"),
        )
        self._last_change = _Tracked(
            CompactGauge(
                "egresswatch_step_last_change_timestamp_seconds",
                "When the step's state last changed (after hysteresis), Unix time.",
                _PAIR,
                r,
            ),
            _PAIR,
        )
        self._first_failing_steps: dict[tuple[str, str], set[str]] = {}  # (source, target)
        self._families: tuple[_Tracked[Any], ...] = (
            self._step_up,
            self._duration,
            self._results,
            self._first_failing,
            self._incidents,
            self._last_change,
        )
        self._health(r, version)

    def _health(self, r: CollectorRegistry, version: str) -> None:
        """The service's own health: no per-target labels."""
        self._registry = r
        self._sources: Gauge | None = None
        self._leader: Gauge | None = None
        self.lateness = Histogram(
            "egresswatch_scheduler_lateness_seconds",
            "How late rounds started: when they got a slot minus when they were due.",
            buckets=LATENESS_BUCKETS,
            registry=r,
        )
        self.round_timeouts = Counter(
            "egresswatch_round_timeouts_total", "Rounds cut at their hard timeout.", registry=r
        )
        self.rounds_skipped = Counter(
            "egresswatch_rounds_skipped_total",
            "Rounds not started because the previous one of the same job was still running.",
            registry=r,
        )
        self.rounds_shed = Counter(
            "egresswatch_rounds_shed_total",
            "Rounds not run because the process is saturated, by why: late (the round got its"
            " slot later than half of min(interval, timeout) after it was due).",
            ("why",),
            registry=r,
        )
        self.rounds_shed.labels("late")
        self.loop_lag = Gauge(
            "egresswatch_event_loop_lag_seconds",
            "The event loop's longest lateness over the last 10 s: how long a ready callback"
            " (an answer, a timer) waited. Seconds mean the process is saturated.",
            registry=r,
        )
        self.buffer_depth = Gauge(
            "egresswatch_buffer_depth", "Rounds waiting to be written or sent.", registry=r
        )
        self.ingest_batches = Counter(
            "egresswatch_ingest_batches_total", "Result batches ingested.", ("outcome",), registry=r
        )
        self.ingested_rounds = Counter(
            "egresswatch_ingested_rounds_total", "Rounds ingested.", registry=r
        )
        self.database_errors = Counter(
            "egresswatch_database_errors_total", "Database operations that failed.", registry=r
        )
        self.config_reloads = Counter(
            "egresswatch_config_reloads_total",
            "Configuration reloads by outcome.",
            ("outcome",),
            registry=r,
        )
        # Known outcomes start at 0, so rate() and alerts see the first error.
        for outcome in ("ok", "error"):
            self.ingest_batches.labels(outcome)
        for outcome in ("ok", "rejected"):
            self.config_reloads.labels(outcome)
        build_info = Gauge(
            "egresswatch_build_info", "Always 1; the version as a label.", ("version",), registry=r
        )
        build_info.labels(version).set(1)

    # Per-step series -------------------------------------------------------------------------

    def observe_round(self, result: RoundResult, kind: SourceKind | None = None) -> None:
        """Count and time every step of a round, and set step_up and first_failing_step.
        `kind`: the source's kind, the label of the detailed families per source kind."""
        source, target = result.source, result.target
        who = (kind.value if kind is not None else UNKNOWN_KIND) if self._per_kind else source
        for step in result.steps:
            pair = (source, target, step.step.value)
            # Per source, the histogram's series and step_up's keep one tuple between them.
            detailed = pair if who is source else (who, target, step.step.value)
            reason = step.reason.value if step.reason is not None else NO_REASON
            self._results.labels(*detailed, step.status.value, reason).inc()
            if step.status is not Status.SKIPPED:
                self._duration.series(detailed).observe(step.duration_s)
            if step.status in (Status.OK, Status.FAIL):
                self._step_up.series(pair).set(1 if step.status is Status.OK else 0)
        self.set_first_failing_step(source, target, result.first_failing_step)

    def set_first_failing_step(self, source: str, target: str, step: Step | None) -> None:
        """Mark ``step`` (None: no step fails) as the first failing step of (source, target)."""
        # An index per pair: this runs for every round, and scanning every series would not do.
        # No set for a pair that never failed: most pairs, and an empty set is 216 bytes.
        steps = self._first_failing_steps.get((source, target), ())
        for other in steps:
            self._first_failing.labels(source, target, other).set(0)
        if step is not None:
            self._first_failing.labels(source, target, step.value).set(1)
            self._first_failing_steps.setdefault((source, target), set()).add(step.value)

    def set_step_last_change(self, source: str, target: str, step: Step, at: datetime) -> None:
        """Record when a step's state last changed (``at`` must be timezone-aware)."""
        self._last_change.labels(source, target, step.value).set(at.timestamp())

    def set_incidents_open(self, target: str, suspect: Suspect, count: int) -> None:
        self._incidents.labels(target, suspect.value).set(count)

    def forget_target(self, target: str) -> None:
        """Remove every series of ``target`` from every labelled family."""
        self.forget_targets({target})

    def forget_targets(self, targets: Collection[str]) -> None:
        """Remove every series of each of ``targets``: one pass over each family, however
        many (a reload that drops targets calls this once)."""
        for family in self._families:
            family.remove_where("target", targets)
        for pair in [p for p in self._first_failing_steps if p[1] in targets]:
            del self._first_failing_steps[pair]

    def forget_source(self, source: str) -> None:
        """Remove every series of ``source`` (incidents_open has no source label: untouched)."""
        for family in self._families:
            family.remove_where("source", {source})
        for pair in [p for p in self._first_failing_steps if p[0] == source]:
            del self._first_failing_steps[pair]

    # The service's own health: methods the scheduler, sink and writer hooks call -------------

    def observe_lateness(self, seconds: float) -> None:
        self.lateness.observe(seconds)

    def count_round_timeout(self) -> None:
        self.round_timeouts.inc()

    def count_round_skipped(self) -> None:
        self.rounds_skipped.inc()

    def count_round_shed(self, why: Literal["late"] = "late") -> None:
        self.rounds_shed.labels(why).inc()

    def watch_loop_lag(self, lag_s: Callable[[], float]) -> None:
        """`egresswatch_event_loop_lag_seconds` reads `lag_s()` at each scrape (looplag.py)."""
        self.loop_lag.set_function(lag_s)

    def set_buffer_depth(self, rounds: int) -> None:
        self.buffer_depth.set(rounds)

    def count_ingest_batch(self, outcome: Literal["ok", "error"], rounds: int = 0) -> None:
        """One ingested batch; ``rounds`` (written rounds) counts only when the outcome is ok."""
        self.ingest_batches.labels(outcome).inc()
        if outcome == "ok" and rounds:
            self.ingested_rounds.inc(rounds)

    def count_database_error(self) -> None:
        self.database_errors.inc()

    def count_config_reload(self, outcome: Literal["ok", "rejected"]) -> None:
        self.config_reloads.labels(outcome).inc()

    def set_designated_sources(self, counts: Mapping[str, int]) -> None:
        """`egresswatch_sources{state}`: designated sources by standing (reporting, unknown,
        missing) and the retired ones; registered on first use (Kubernetes enabled)."""
        if self._sources is None:
            self._sources = Gauge(
                "egresswatch_sources",
                "Designated sources (Kubernetes) by state: reporting, unknown (silent), "
                "missing (never reported), retired (no longer designated).",
                ("state",),
                registry=self._registry,
            )
        for state in SOURCE_STATES:
            self._sources.labels(state).set(counts.get(state, 0))

    def set_leader(self, identity: str, leading: bool) -> None:
        """`egresswatch_leader{identity}`: 1 while this replica holds the Lease, else 0;
        registered on first use (leader election on)."""
        if self._leader is None:
            self._leader = Gauge(
                "egresswatch_leader",
                "1 while this controller replica leads (holds the Lease), else 0.",
                ("identity",),
                registry=self._registry,
            )
        self._leader.labels(identity).set(1 if leading else 0)


class WriterMetrics:
    """The batched writer's hooks (storage's WriterHooks), wired to the service's health
    metrics: buffer depth, ingest batches and database errors. Dropped rounds are logged."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def buffer_depth(self, depth: int) -> None:
        self._metrics.set_buffer_depth(depth)

    def batch_written(self, ok: bool, rounds: int) -> None:
        self._metrics.count_ingest_batch("ok" if ok else "error", rounds if ok else 0)

    def rows_written(self, rounds: int, step_results: int) -> None:
        pass  # counted by batch_written

    def database_error(self, error: BaseException) -> None:
        self._metrics.count_database_error()

    def rounds_dropped(self, rounds: int, why: str) -> None:
        log.error("rounds dropped", extra={"rounds": rounds, "why": why})
