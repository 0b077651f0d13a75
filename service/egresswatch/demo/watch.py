"""What egresswatch saw, and how that compares with the faults. Pure.

Two views, on purpose:

- `observe` follows one target's rounds as they come, without hysteresis: the first round,
  ok -> failing, failing at one step -> another, failing -> ok. It gives the per-round lines
  (the failing round's checklist) and counts the failed rounds in a row.
- `Scoreboard` takes the service's own incident events (its change detection, with the demo
  config's `fail_after` and `recover_after`) and ties each incident to the fault of its target
  that was injected last. That is what the demo is judged by: every fault opened exactly one
  incident, at the expected first failing step, and it closed after the repair.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from egresswatch.controller.detection.incidents import Incident, IncidentEvent, IncidentEventKind
from egresswatch.demo.scenario import Fault
from egresswatch.model import Reason, RoundResult, Step


class SeenKind(StrEnum):
    FIRST = "first"  # the target's first round (ok or not)
    FAILING = "failing"  # was ok, now a step fails
    MOVED = "moved"  # still failing, but the first failing step is another one
    RECOVERED = "recovered"  # was failing, now no step fails


@dataclass(frozen=True)
class View:
    """One target as the rounds so far show it."""

    rounds: int = 0
    step: Step | None = None  # the first failing step of the last round; None: no step failed
    reason: Reason | None = None
    since: datetime | None = None  # start of the first round of the current failing run
    failed_rounds: int = 0  # rounds in a row with a failing step, up to the last one


@dataclass(frozen=True)
class Seen:
    """A flip in a target's first failing step, as of one round."""

    kind: SeenKind
    result: RoundResult  # the round that showed it
    step: Step | None
    reason: Reason | None
    since: datetime | None  # failing since (the first failed round); None when ok
    failed_for_s: float | None = None  # RECOVERED: from the first failed round to this one


def observe(view: View, result: RoundResult) -> tuple[View, Seen | None]:
    """The target's view after `result`, and the flip it shows, if any."""
    step = result.first_failing_step
    found = result.step(step) if step is not None else None
    reason = found.reason if found is not None else None
    at = result.started_at
    rounds = view.rounds + 1
    if step is None:
        new = View(rounds)
        if view.rounds == 0:
            return new, Seen(SeenKind.FIRST, result, None, None, None)
        if view.step is not None:
            since = view.since or at
            failed = (at - since).total_seconds()
            return new, Seen(SeenKind.RECOVERED, result, None, None, since, failed)
        return new, None
    since = view.since if view.step is not None and view.since is not None else at
    new = View(rounds, step, reason, since, view.failed_rounds + 1)
    if view.rounds == 0:
        return new, Seen(SeenKind.FIRST, result, step, reason, since)
    if view.step is None:
        return new, Seen(SeenKind.FAILING, result, step, reason, since)
    if view.step is not step:
        return new, Seen(SeenKind.MOVED, result, step, reason, since)
    return new, None


def with_round(views: dict[str, View], result: RoundResult) -> Seen | None:
    """Update `views` (target -> View) with one round; the flip it shows, if any."""
    view, seen = observe(views.get(result.target, View()), result)
    views[result.target] = view
    return seen


# -- incidents ------------------------------------------------------------------------------


@dataclass
class IncidentSeen:
    """One incident as the service's events told it."""

    opened: Incident  # as it opened: the first failing step and suspect the demo is judged by
    latest: Incident  # as the last event left it (what the API and the database hold)
    closed_seen_at: datetime | None = None  # when its CLOSED event came, by the demo's clock

    @property
    def id(self) -> str:
        return self.opened.id

    @property
    def step(self) -> Step | None:
        return self.opened.first_failing_step


@dataclass
class FaultRecord:
    """One fault of the scenario, and the incidents egresswatch opened for it."""

    fault: Fault
    injected_at: datetime | None = None
    repaired_at: datetime | None = None
    incidents: list[IncidentSeen] = field(default_factory=list)

    @property
    def closed_early(self) -> bool:
        """An incident of this fault closed while the fault was still in place."""
        return any(
            seen.closed_seen_at is not None
            and (self.repaired_at is None or seen.closed_seen_at < self.repaired_at)
            for seen in self.incidents
        )

    @property
    def wrong(self) -> bool:
        """Seen, but not as expected: more than one incident, another first failing step, or
        closed before the repair. (Not merely: not seen yet.)"""
        other_step = any(seen.step is not self.fault.expect_step for seen in self.incidents)
        return len(self.incidents) > 1 or other_step or self.closed_early

    @property
    def as_expected(self) -> bool:
        return (
            len(self.incidents) == 1
            and self.incidents[0].closed_seen_at is not None
            and not self.wrong
        )


@dataclass
class Scoreboard:
    """Faults injected and repaired, the incidents the service opened, and anything else."""

    faults: Sequence[Fault]
    records: list[FaultRecord] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)  # sentences a person reads
    _incidents: dict[str, IncidentSeen] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.records = [FaultRecord(fault) for fault in self.faults]

    def injected(self, fault: Fault, at: datetime) -> None:
        self._record(fault).injected_at = at

    def repaired(self, fault: Fault, at: datetime) -> None:
        self._record(fault).repaired_at = at

    def latest(self, incident_id: str) -> Incident | None:
        """The incident as the events before this one left it, if it was seen."""
        seen = self._incidents.get(incident_id)
        return seen.latest if seen is not None else None

    def open_targets(self) -> set[str]:
        return {s.latest.target for s in self._incidents.values() if s.closed_seen_at is None}

    def incident(self, event: IncidentEvent, at: datetime) -> IncidentSeen:
        """Account for one incident event, which came at `at` (the demo's clock)."""
        incident = event.incident
        seen = self._incidents.get(incident.id)
        if seen is None:  # OPENED (or the first event the demo saw of it)
            seen = self._incidents[incident.id] = IncidentSeen(incident, incident)
            record = self._fault_of(incident.target)
            if record is None:
                self.unexpected.append(
                    f"incident {incident.id} opened at {incident.first_failing_step} "
                    "with no fault injected"
                )
            else:
                record.incidents.append(seen)
        seen.latest = incident
        if event.kind is IncidentEventKind.CLOSED:
            seen.closed_seen_at = at
        return seen

    @property
    def wrong(self) -> bool:
        """Something was seen that contradicts the scenario (not merely not seen yet)."""
        return bool(self.unexpected) or any(r.wrong for r in self.records)

    @property
    def complete(self) -> bool:
        """Every fault opened one incident as expected, closed after its repair; no other."""
        return not self.unexpected and all(r.as_expected for r in self.records)

    def _fault_of(self, target: str) -> FaultRecord | None:
        """The fault of `target` injected last: an incident that opens after its repair is
        still its doing, and judged as such (a second one, as a flap)."""
        injected = [r for r in self.records if r.fault.target == target and r.injected_at]
        return max(injected, key=lambda r: r.fault.break_at_s, default=None)

    def _record(self, fault: Fault) -> FaultRecord:
        return next(r for r in self.records if r.fault == fault)


def new_notes(before: Incident | None, after: Incident) -> list[str]:
    """What the incident's history says changed since `before`: "suspect a -> b", "first
    failing step a -> b"... Its opening and closing entries are not among them."""
    entries = after.history[len(before.history) :] if before is not None else after.history
    return [
        entry.note
        for entry in entries
        if entry.note and entry.note != "opened" and not entry.note.startswith("closed")
    ]
