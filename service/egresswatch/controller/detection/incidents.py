"""Incidents: periods in which a target is failing from one or more sources (DESIGN.md §2).

Pure: no I/O, no clock. An `IncidentBook` is fed the `Change`s a `Detector` emits and derives
incidents from them alone, so replaying the stored change log rebuilds the same periods,
sources and first failing steps under the same ids. Two things are injected because they
belong elsewhere: `detector_states(target)` (a snapshot of every step's state, recorded in the
history) and `verdict_for(target, sources)` (the diagnosis: suspect, evidence, next command).

The rules, per target:

- It opens when a reporting source has a step FAILING; never because of UNKNOWN or DEGRADED,
  nor because of path_trace alone (a trace that stops short is evidence, not a failure).
  `started_at` is the earliest `started_at` of the failing changes (the first failed round, not
  the moment of detection) and moves earlier if a source joins whose failure began earlier;
  `detected_at` is when the first of them was detected. The id (a storage primary key) is
  `target@<started_at in UTC>` (e.g. `shop@20240501T120130.250000Z`), fixed at opening, with
  `-2`, `-3`... in the unlikely case that one is taken (among the incidents this book holds).
- Sources join while it is open and never leave (`sources` only grows).
- It closes on a recovery: when a step of a source stops FAILING and no reporting source has a
  FAILING step left. `ended_at` is that recovery change's `started_at` (its first good round).
- Silent (UNKNOWN) sources neither keep it open nor close it alone. A source going silent is not
  a recovery (and a pod whose egress broke may be the very one that stopped reporting), so the
  incident stays open even when its only failing source goes silent, until that source reports
  again and recovers, or is `retire`d. But once the reporting sources have all recovered, a
  silent source's last known failure does not hold the incident open. A source that comes back
  still failing after its incident closed opens a new one starting at its return: what happened
  during the silence is not known.
- First failing step: the first step in table order FAILING for any of its sources (a silent
  source counts with its last known states). Kept at its last value when the incident closes.
- History: one `IncidentUpdate` at opening, whenever the first failing step, the suspect, the
  sources or which of them are silent change, and at closing, with a `note` saying what
  changed. `at` is when the underlying change began (`now` for a verdict that changed on its
  own); `states` is the detector's snapshot when the update was recorded, so a batch that
  carries several changes of one target shows the state after the whole batch.
- A source that no longer exists (a deleted pod) is `retire`d: its last known failure stops
  counting, and an incident left with no failing source closes, noted as such.

Call `apply` after every batch of changes, even an empty one: the verdict is asked again for
every open incident, so the suspect follows evidence that is not a state change.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from types import MappingProxyType

from egresswatch.model import Change, Step, StepState, Suspect, Verdict

StatesOf = Callable[[str], Mapping[str, Mapping[Step, StepState]]]
VerdictFor = Callable[[str, tuple[str, ...]], Verdict]
States = Mapping[str, Mapping[Step, StepState]]


@dataclass(frozen=True)
class IncidentUpdate:
    """One line of an incident's history: how it stood at `at`, and what changed (`note`)."""

    at: datetime
    first_failing_step: Step | None
    suspect: Suspect
    sources: tuple[str, ...]
    states: States  # source -> step -> state, for the incident's sources
    silent: tuple[str, ...] = ()  # those of its sources that were UNKNOWN (not reporting)
    note: str = ""


@dataclass(frozen=True)
class Incident:
    id: str
    target: str
    started_at: datetime
    detected_at: datetime
    ended_at: datetime | None
    sources: tuple[str, ...]
    first_failing_step: Step | None
    suspect: Suspect
    evidence: tuple[str, ...]
    next_command: str | None
    history: tuple[IncidentUpdate, ...]

    @property
    def is_open(self) -> bool:
        return self.ended_at is None


class IncidentEventKind(StrEnum):
    OPENED = "opened"
    UPDATED = "updated"  # any field changed; the history grew if something meaningful did
    CLOSED = "closed"


@dataclass(frozen=True)
class IncidentEvent:
    kind: IncidentEventKind
    incident: Incident  # as it stands after the event


@dataclass
class _Memory:
    """What the changes said about one target: its FAILING steps and its silent sources."""

    failing: dict[str, dict[Step, datetime]] = field(default_factory=dict)  # -> started_at
    silent: set[str] = field(default_factory=set)

    def record(self, change: Change) -> bool:
        """Take one change in; True when it is a step recovering (the only closing trigger)."""
        source = change.source
        if change.step is None:
            if change.current is StepState.UNKNOWN:
                self.silent.add(source)
            else:
                self.silent.discard(source)
                if change.current is not StepState.FAILING:
                    self.failing.pop(source, None)
            return False
        self.silent.discard(source)  # it reported a round
        if change.step is Step.PATH_TRACE:
            # A trace that stops short while every other step works is no fault by itself
            # (routers and filters often do not answer traced probes: docs/diagnosis.md,
            # `trace_only`): it neither opens an incident, nor keeps one open, nor is one's
            # first failing step. Where the trace stops is evidence for the diagnosis.
            return False
        if change.current is StepState.FAILING:
            # The earliest start wins: a detector restarted mid-failure reports it again later.
            self.failing.setdefault(source, {}).setdefault(change.step, change.started_at)
            return False
        steps = self.failing.get(source, {})
        if steps.pop(change.step, None) is None:
            return False
        if not steps:
            del self.failing[source]
        return True

    def reporting_failing(self) -> list[str]:
        return sorted(s for s in self.failing if s not in self.silent)

    def first_failing_step(self, sources: Sequence[str]) -> Step | None:
        failing = {step for s in sources for step in self.failing.get(s, {})}
        return next((step for step in Step if step in failing), None)


class IncidentBook:
    """Open incidents per target and the recently closed ones (at most `keep_closed`)."""

    def __init__(
        self,
        *,
        keep_closed: int = 1000,
        verdict_hold: Callable[[str], timedelta] | None = None,
    ) -> None:
        self._memory: dict[str, _Memory] = {}
        self._open: dict[str, Incident] = {}  # target -> its open incident
        self._closed: OrderedDict[str, Incident] = OrderedDict()
        self._keep_closed = keep_closed
        # Targets whose open incident has begun to recover: its verdict is kept (see `_update`).
        self._recovering: set[str] = set()
        # How long a new suspect must hold before an incident takes it (see `_steady`), and
        # the one each target's incident is waiting on, since when.
        self._verdict_hold = verdict_hold or (lambda _: timedelta(0))
        self._candidates: dict[str, tuple[Suspect, datetime]] = {}

    def open_incidents(self) -> tuple[Incident, ...]:
        return tuple(self._open.values())

    def open_for(self, target: str) -> Incident | None:
        return self._open.get(target)

    def get(self, incident_id: str) -> Incident | None:
        found = next((i for i in self._open.values() if i.id == incident_id), None)
        return found or self._closed.get(incident_id)

    def apply(
        self,
        changes: Sequence[Change],
        *,
        now: datetime,
        detector_states: StatesOf,
        verdict_for: VerdictFor,
    ) -> list[IncidentEvent]:
        """Take changes in (in the order they were emitted); the incident events they cause."""
        ctx = _Context(detector_states, verdict_for)
        events: list[IncidentEvent] = []
        asked: set[str] = set()
        for change in changes:
            memory = self._memory.setdefault(change.target, _Memory())
            incident = self._open.get(change.target)
            back_failing = change.step is None and change.current is StepState.FAILING
            if back_failing and (incident is None or change.source not in incident.sources):
                # Back from a silence still failing, after its incident closed: the failure
                # seen now is a new episode (see the module docstring).
                steps = memory.failing.get(change.source, {})
                memory.failing[change.source] = dict.fromkeys(steps, change.started_at)
            recovered = memory.record(change)
            if recovered:
                self._recovering.add(change.target)
            elif change.current is StepState.FAILING:
                self._recovering.discard(change.target)  # a new failure: the verdict may move
            events.extend(self._settle(change, recovered, ctx, now))
            asked.add(change.target)
        for target in [t for t in self._open if t not in asked]:
            events.extend(self._update(target, now, ctx, now=now))
        return events

    def restore(
        self,
        incidents: Iterable[Incident],
        *,
        failing: Mapping[str, Mapping[str, Mapping[Step, datetime]]],
        silent: Mapping[str, Iterable[str]],
    ) -> None:
        """What a previous run left: its open incidents (as stored, ids and starts kept), and
        per target the FAILING steps of each source with their starts, and its silent sources
        (as the restored detector holds them). Call once, at startup, before `apply`."""
        for target, sources in failing.items():
            memory = self._memory.setdefault(target, _Memory())
            memory.failing = {s: dict(steps) for s, steps in sources.items() if steps}
        for target, names in silent.items():
            self._memory.setdefault(target, _Memory()).silent = set(names)
        for incident in incidents:
            if incident.is_open:
                self._open[incident.target] = incident
                memory = self._memory.setdefault(incident.target, _Memory())
                if _recovered_since(incident, memory):
                    self._recovering.add(incident.target)

    def reconcile(
        self,
        *,
        now: datetime,
        recovered_at: Callable[[str, tuple[str, ...]], datetime],
        detector_states: StatesOf,
        verdict_for: VerdictFor,
    ) -> list[IncidentEvent]:
        """After `restore` (and the replayed changes' `apply`): close each open incident that no
        reporting source fails any more, at `recovered_at(target, sources)` (its recovery was
        judged but its closing not stored before the stop), and open one for each target that
        fails with none open (its opening was not stored), detected `now`."""
        ctx = _Context(detector_states, verdict_for)
        events: list[IncidentEvent] = []
        for target, incident in list(self._open.items()):
            if not self._memory[target].reporting_failing():
                at = max(recovered_at(target, incident.sources), incident.started_at)
                note = "closed: all sources had recovered when the controller restarted"
                events.append(self._close(incident, at, note, ctx))
        for target, memory in self._memory.items():
            if target not in self._open and memory.reporting_failing():
                source = memory.reporting_failing()[0]
                step = memory.first_failing_step([source]) or Step.DNS_CLUSTER
                since = memory.failing[source][step]
                opening = Change(
                    source=source,
                    target=target,
                    step=step,
                    previous=StepState.UNKNOWN,
                    current=StepState.FAILING,
                    started_at=since,
                    detected_at=now,
                )
                events.append(self._opened(target, opening, ctx))
        return events

    def retire(
        self,
        source: str,
        *,
        at: datetime,
        detector_states: StatesOf,
        verdict_for: VerdictFor,
    ) -> list[IncidentEvent]:
        """Forget a source that no longer exists (a deleted pod), as of `at`. An incident it
        was failing in and that has no reporting failing source left closes at `at`, noted as
        a retirement, not a recovery."""
        ctx = _Context(detector_states, verdict_for)
        events: list[IncidentEvent] = []
        for target, memory in self._memory.items():
            was_failing = memory.failing.pop(source, None) is not None
            memory.silent.discard(source)
            incident = self._open.get(target)
            if incident is None or not was_failing:
                continue
            if memory.reporting_failing():
                events.extend(self._update(target, at, ctx, now=at, retired=source))
            else:
                note = f"closed: {source} retired while failing; recovery not observed"
                events.append(self._close(incident, at, note, ctx))
        return events

    # -- the rules ------------------------------------------------------------------------

    def _settle(
        self, change: Change, recovered: bool, ctx: _Context, now: datetime
    ) -> list[IncidentEvent]:
        target = change.target
        memory = self._memory[target]
        incident = self._open.get(target)
        if incident is None:
            if not memory.reporting_failing():
                return []
            return [self._opened(target, change, ctx)]
        if recovered and not memory.reporting_failing():
            return [self._close(incident, change.started_at, "closed: all sources recovered", ctx)]
        fresh = change.current is StepState.FAILING
        return self._update(target, change.started_at, ctx, now=now, fresh=fresh)

    def _opened(self, target: str, change: Change, ctx: _Context) -> IncidentEvent:
        memory = self._memory[target]
        sources = tuple(memory.reporting_failing())
        started_at = min(when for s in sources for when in memory.failing[s].values())
        verdict = ctx.verdict_for(target, sources)
        first = memory.first_failing_step(sources)
        states = ctx.snapshot(target, sources)
        history = (
            IncidentUpdate(started_at, first, verdict.suspect, sources, states, note="opened"),
        )
        incident = Incident(
            id=self._new_id(target, started_at),
            target=target,
            started_at=started_at,
            detected_at=change.detected_at,
            ended_at=None,
            sources=sources,
            first_failing_step=first,
            suspect=verdict.suspect,
            evidence=verdict.evidence,
            next_command=verdict.next_command,
            history=history,
        )
        self._open[target] = incident
        return IncidentEvent(IncidentEventKind.OPENED, incident)

    def _update(
        self,
        target: str,
        at: datetime,
        ctx: _Context,
        *,
        now: datetime,
        fresh: bool = False,
        retired: str | None = None,
    ) -> list[IncidentEvent]:
        incident = self._open[target]
        memory = self._memory[target]
        joining = [s for s in memory.reporting_failing() if s not in incident.sources]
        sources = incident.sources + tuple(joining)
        last = incident.history[-1]
        first = memory.first_failing_step(sources) or last.first_failing_step
        verdict = self._steady(
            incident, ctx.verdict_for(target, sources), now, fresh or bool(joining)
        )
        started_at = min(
            [incident.started_at]
            + [when for s in joining for when in memory.failing.get(s, {}).values()]
        )
        notes = _differences(last, first, verdict.suspect, joining)
        # The verdict of the failure, not of its recovery: once part of it recovered, what is
        # still failing (the trace that recovers last, the one source a round behind the
        # others) says how it ends, not why it broke. The history records it; the incident
        # keeps its verdict until a new failure arrives.
        kept = target in self._recovering
        if kept and notes:
            notes = [f"recovering: {note}" for note in notes]
        was_silent = set(incident.history[-1].silent) - {retired}
        silent = tuple(s for s in sources if s in memory.silent)
        notes += [f"{s} silent" for s in silent if s not in was_silent]
        notes += [f"{s} reporting again" for s in sorted(was_silent - set(silent))]
        notes += [f"{retired} retired"] if retired else []
        history = incident.history
        if notes:
            states = ctx.snapshot(target, sources)
            history += (
                IncidentUpdate(
                    at, first, verdict.suspect, sources, states, silent, note="; ".join(notes)
                ),
            )
        updated = dataclasses.replace(
            incident, started_at=started_at, sources=sources, history=history
        )
        if not kept:
            updated = dataclasses.replace(
                updated,
                first_failing_step=first,
                suspect=verdict.suspect,
                evidence=verdict.evidence,
                next_command=verdict.next_command,
            )
        if updated == incident:
            return []
        self._open[target] = updated
        return [IncidentEvent(IncidentEventKind.UPDATED, updated)]

    def _steady(self, incident: Incident, verdict: Verdict, now: datetime, fresh: bool) -> Verdict:
        """The verdict an update may take. A new failure (`fresh`: a step or a source turning
        FAILING, hysteresis-confirmed) moves it at once. Otherwise a different suspect must
        hold for `verdict_hold(target)` (the time hysteresis takes to confirm a failure) before
        the incident takes it: the evidence of a few rounds, most often the repair itself
        under way (the path back while DNS still fails, say), does not rewrite why it broke."""
        target = incident.target
        if fresh or verdict.suspect is incident.suspect:
            self._candidates.pop(target, None)
            return verdict
        seen = self._candidates.get(target)
        if seen is None or seen[0] is not verdict.suspect:
            seen = self._candidates[target] = (verdict.suspect, now)
        if now - seen[1] >= self._verdict_hold(target):
            del self._candidates[target]
            return verdict
        return Verdict(
            suspect=incident.suspect,
            first_failing_step=incident.first_failing_step,
            evidence=incident.evidence,
            next_command=incident.next_command,
        )

    def _close(self, incident: Incident, at: datetime, note: str, ctx: _Context) -> IncidentEvent:
        memory = self._memory[incident.target]
        states = ctx.snapshot(incident.target, incident.sources)
        entry = IncidentUpdate(
            at,
            memory.first_failing_step(incident.sources),
            incident.suspect,
            incident.sources,
            states,
            tuple(s for s in incident.sources if s in memory.silent),
            note=note,
        )
        closed = dataclasses.replace(incident, ended_at=at, history=(*incident.history, entry))
        del self._open[incident.target]
        self._recovering.discard(incident.target)
        self._candidates.pop(incident.target, None)
        self._closed[closed.id] = closed
        while len(self._closed) > self._keep_closed:
            self._closed.popitem(last=False)
        return IncidentEvent(IncidentEventKind.CLOSED, closed)

    def _new_id(self, target: str, started_at: datetime) -> str:
        base = f"{target}@{_stamp(started_at)}"
        taken = {i.id for i in self._open.values()} | set(self._closed)
        candidate, n = base, 1
        while candidate in taken:
            n += 1
            candidate = f"{base}-{n}"
        return candidate


@dataclass(frozen=True)
class _Context:
    detector_states: StatesOf
    verdict_for: VerdictFor

    def snapshot(self, target: str, sources: Sequence[str]) -> States:
        """The detector's states for `sources`, frozen (a silent source's steps are UNKNOWN)."""
        states = self.detector_states(target)
        return MappingProxyType({s: MappingProxyType(dict(states.get(s, {}))) for s in sources})


def _recovered_since(incident: Incident, memory: _Memory) -> bool:
    """Whether a step its history saw FAILING fails no more (its verdict is then kept)."""
    return any(
        state is StepState.FAILING and step not in memory.failing.get(source, {})
        for update in incident.history
        for source, steps in update.states.items()
        for step, state in steps.items()
    )


def _differences(
    last: IncidentUpdate, first: Step | None, suspect: Suspect, joining: Sequence[str]
) -> list[str]:
    """What changed since the history's last line."""
    notes = []
    if first != last.first_failing_step:
        notes.append(f"first failing step {last.first_failing_step} -> {first}")
    if suspect != last.suspect:
        notes.append(f"suspect {last.suspect} -> {suspect}")
    notes += [f"{s} failing too" for s in joining]
    return notes


def _stamp(when: datetime) -> str:
    """A compact UTC timestamp for ids: 20240501T120000Z, with microseconds when there are."""
    utc = when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
    fraction = f".{utc.microsecond:06d}" if utc.microsecond else ""
    return f"{utc:%Y%m%dT%H%M%S}{fraction}Z"
