"""Rounds in; changes, incidents, stored history and metrics out.

The detector and the incident book are pure and synchronous: every round is judged the moment
it arrives. What they produce is written by `flush()`; while the database is away it stays
pending here and is written later (buffering, not loss).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import fields
from datetime import datetime, timedelta
from typing import Any

from egresswatch.controller.detection.hysteresis import Detector
from egresswatch.controller.detection.incidents import (
    Incident,
    IncidentBook,
    IncidentEvent,
    IncidentEventKind,
)
from egresswatch.controller.detection.restart import (
    RESTORE_ROUNDS,
    failing_steps,
    incident_from_record,
    saved_states,
)
from egresswatch.controller.diagnosis.rules import Context, Observation, diagnose
from egresswatch.kube.netpol import PolicyView
from egresswatch.metrics import Metrics
from egresswatch.model import (
    Change,
    Role,
    RoundResult,
    SourceKind,
    Step,
    StepState,
    Suspect,
    Verdict,
)
from egresswatch.settings import DetectionSettings, Settings
from egresswatch.storage import History, IncidentRecord, Outage, is_unavailable

log = logging.getLogger(__name__)

MAX_PENDING_CHANGES = 1_000_000  # memory bound while the database is away; oldest go first
FLUSH_BATCH = 5000  # changes (or states) written in one transaction


class Pipeline:
    """Judges rounds as they come, keeps the latest round of every (source, target)."""

    def __init__(
        self,
        *,
        settings: Callable[[], Settings],
        history: History,
        metrics: Metrics,
        clock: Callable[[], datetime],
        on_incident: Callable[[IncidentEvent], None] | None = None,
        outage: Outage | None = None,
        policies: PolicyView | None = None,
    ) -> None:
        """`policies` is the cluster's NetworkPolicy view (the Kubernetes watch cache), for the
        network_policy step of pod sources' verdicts; None judges without it."""
        self._settings = settings
        self._outage = outage or Outage()
        self._policies = policies
        self._on_incident = on_incident
        self._history = history
        self._metrics = metrics
        self._clock = clock
        self.detector = Detector(self._policy)
        self.book = IncidentBook(verdict_hold=self._verdict_hold)
        self._latest: dict[tuple[str, str], RoundResult] = {}
        # The last round that failed, per (source, target): while an incident recovers under
        # hysteresis the latest round is already good, yet the verdict is about the failure.
        self._last_failing: dict[tuple[str, str], RoundResult] = {}
        # The last round that failed first at each step, per (source, target): what stands for
        # a FAILING step in the diagnosis (`_judged_round`).
        self._failed_at: dict[tuple[str, str, Step], RoundResult] = {}
        self._kinds: dict[str, SourceKind] = {}
        self._nodes: dict[str, str] = {}  # source -> the node it runs on (its agent's word)
        # Sources retired by the cluster (kube/discovery.py) and forgotten here when silent:
        # the status leaves them out until one reports again.
        self.retired: set[str] = set()
        self._pending_changes: list[Change] = []
        self._pending_states: list[Change] = []  # first judgements: states, not changes
        self._pending_incidents: dict[str, IncidentRecord] = {}
        self._suspects_seen: set[tuple[str, Suspect]] = set()
        self._flush_lock = asyncio.Lock()
        self._flusher: asyncio.Task[None] | None = None

    # -- in ----------------------------------------------------------------------------------

    def set_source_kind(self, source: str, kind: SourceKind, node: str | None = None) -> None:
        """What `source` is, and the node it runs on when its agent said (a pod is compared
        with its own node first)."""
        self._kinds[source] = kind
        if node is not None:
            self._nodes[source] = node

    def source_kind(self, source: str) -> SourceKind | None:
        return self._kinds.get(source)

    def observe(self, rounds: Iterable[RoundResult]) -> list[Change]:
        """Judge rounds (of any sources), oldest first; returns the changes they caused."""
        now = self._clock()
        changes: list[Change] = []
        for result in sorted(rounds, key=lambda r: r.started_at):
            if self._settings().target(result.target) is None:
                continue  # a target that left the config: stored, but no longer judged
            latest = self._latest.get((result.source, result.target))
            # A round read again (a new leader re-reads the rounds table from before its
            # restore) is not the latest: the detector ignores it, and so do these.
            if latest is None or result.started_at > latest.started_at:
                self._latest[(result.source, result.target)] = result
                if result.first_failing_step is not None:
                    key = (result.source, result.target, result.first_failing_step)
                    self._last_failing[(result.source, result.target)] = result
                    self._failed_at[key] = result
            self.retired.discard(result.source)
            changes += self.detector.observe(result, now=now)
        # the oldest first judgements dropped stay "unknown" in the status until a change
        _queue(self._pending_states, self.detector.take_baselines(), "first judgements")
        self._after(changes, now)
        return changes

    async def restore(self) -> list[IncidentEvent]:
        """Rebuild detection from the database, once, before the first round is judged.

        The step states become the detector's, the latest stored rounds of every pair are
        judged again from where those states left off (rebuilding the runs hysteresis counts,
        and any change the previous run judged but did not store), the open incidents are held
        again under their ids and starts, and the latest rounds are what the diagnosis
        compares. Raises the database's errors: a controller that cannot read its past must
        not start judging as if it had none.
        """
        now = self._clock()
        settings = self._settings()
        targets = {t.name for t in settings.targets}
        saved = saved_states(await self._history.states(), targets)
        longest = max((settings.timing(t)[0] for t in settings.targets), default=60.0)
        windows = [settings.detection_for(t).fail_window for t in settings.targets]
        per_pair = max([RESTORE_ROUNDS] + [w[1] for w in windows if w is not None])
        since = now - timedelta(seconds=max(3600.0, longest * per_pair))
        rounds = [
            r
            for r in await self._history.recent_rounds(per_pair=per_pair, since=since)
            if r.target in targets and r.started_at <= now
        ]
        incidents = [incident_from_record(r) for r in await self._open_incidents()]
        gone = [i for i in incidents if i.target not in targets]
        for result in rounds:
            self._latest[(result.source, result.target)] = result
            if result.first_failing_step is not None:
                self._last_failing[(result.source, result.target)] = result
                self._failed_at[(result.source, result.target, result.first_failing_step)] = result
        changes = self.detector.restore(saved, rounds, now=now)
        silent: dict[str, set[str]] = {}
        for state in saved:
            if state.step is None and state.state is StepState.UNKNOWN:
                silent.setdefault(state.target, set()).add(state.source)
        self.book.restore(
            [i for i in incidents if i.target in targets],
            failing=failing_steps(saved),
            silent=silent,
        )
        _queue(self._pending_states, self.detector.take_baselines(), "first judgements")
        events = self._after(changes, now)
        reconciled = self.book.reconcile(
            now=now,
            recovered_at=self._recovered_at,
            detector_states=self.detector.states,
            verdict_for=self.verdict_for,
        )
        self._publish(reconciled)
        for incident in gone:  # its target left the config while this controller was away
            note = "closed: the target is no longer configured"
            update = dataclasses.replace(incident.history[-1], at=now, note=note)
            closed = dataclasses.replace(
                incident, ended_at=now, history=(*incident.history, update)
            )
            self._publish([IncidentEvent(IncidentEventKind.CLOSED, closed)])
        log.info(
            "detection restored",
            extra={
                "states": len(saved),
                "rounds": len(rounds),
                "open_incidents": len(self.book.open_incidents()),
                "changes_not_stored_before": len(changes),
            },
        )
        return [*events, *reconciled]

    async def _open_incidents(self) -> list[IncidentRecord]:
        found: list[IncidentRecord] = []
        cursor: str | None = None
        while True:
            page = await self._history.incidents(open=True, limit=1000, cursor=cursor)
            found += page.items
            cursor = page.next_cursor
            if cursor is None or not page.items:
                return found

    def _recovered_at(self, target: str, sources: tuple[str, ...]) -> datetime:
        """When the last of these sources' steps came back to OK (a restored incident's end)."""
        times = [
            since
            for source in sources
            for step in Step
            if (since := self.detector.since(source, target, step)) is not None
        ]
        return max(times, default=self._clock())

    def tick(self, retired: Callable[[str], bool] | None = None) -> list[Change]:
        """Time passing: sources that stopped reporting become unknown.

        A source for which `retired(source)` holds (no longer designated: its node left) and
        that has been silent for its stale window is forgotten instead: no unknown change, no
        place in the status any more. The restart grace does not hold it back: its agent's
        buffered rounds have nowhere to come from.
        """
        now = self._clock()
        if retired is not None:
            for source in self._silent_sources(now):
                if retired(source):
                    self.forget_source(source)
        changes = self.detector.stale(now, self._interval_of)
        self._after(changes, now)
        return changes

    def _silent_sources(self, now: datetime) -> set[str]:
        """The sources whose latest round, towards every target, is older than its stale
        window."""
        heard: set[str] = set()
        silent: set[str] = set()
        for (source, target), result in self._latest.items():
            window = timedelta(seconds=self._interval_of(target)) * self._policy(target).stale_after
            (silent if now - result.started_at > window else heard).add(source)
        return silent - heard

    def forget_source(self, source: str) -> None:
        """Drop what detection holds about a retired source; the status hides it."""
        self.detector.forget(source=source)
        self.retired.add(source)
        for table in (self._latest, self._last_failing):
            for key in [k for k in table if k[0] == source]:
                del table[key]
        for step_key in [k for k in self._failed_at if k[0] == source]:
            del self._failed_at[step_key]

    def forget_target(self, target: str) -> None:
        self.detector.forget(target=target)
        for key in [k for k in self._latest if k[1] == target]:
            del self._latest[key]
        for key in [k for k in self._last_failing if k[1] == target]:
            del self._last_failing[key]
        for step_key in [k for k in self._failed_at if k[1] == target]:
            del self._failed_at[step_key]

    def _after(self, changes: list[Change], now: datetime) -> list[IncidentEvent]:
        events = self.book.apply(
            changes, now=now, detector_states=self.detector.states, verdict_for=self.verdict_for
        )
        for change in changes:
            if change.step is not None:
                self._metrics.set_step_last_change(
                    change.source, change.target, change.step, change.detected_at
                )
            log.info(
                "change",
                extra={
                    "source": change.source,
                    "target": change.target,
                    "step": change.step.value if change.step else None,
                    "from": change.previous.value,
                    "to": change.current.value,
                    "since": change.started_at.isoformat(),
                },
            )
        _queue(self._pending_changes, changes, "changes")
        self._publish(events)
        return events

    def _publish(self, events: Iterable[IncidentEvent]) -> None:
        """Queue the incidents for storage, log them, tell the observer, export the gauge."""
        for event in events:
            self._pending_incidents[event.incident.id] = incident_record(event.incident)
            _log_event(event)
            if self._on_incident is not None:
                try:
                    self._on_incident(event)
                except Exception:  # an observer's bug must not cost the incident
                    log.exception("incident observer failed")
        self._export_incidents()

    # -- out ---------------------------------------------------------------------------------

    def flush_soon(self) -> None:
        """Write what is pending now, not at the next tick: a change detected reaches the API
        and the incident log within the write's own time. One flush at a time (`flush` holds
        a lock); one waiting is enough, as it writes all that is pending when it runs."""
        if self.pending and (self._flusher is None or self._flusher.done()):
            self._flusher = asyncio.get_running_loop().create_task(
                self.flush(), name="egresswatch-detection-flush"
            )

    async def flush(self) -> None:
        """Write pending changes and incidents; on failure keep them for the next flush."""
        async with self._flush_lock:  # two flushes at once would write the same batch twice
            await self._flush()

    async def _flush(self) -> None:
        for pending, save, what in (
            (self._pending_changes, self._history.save_changes, "changes"),
            (self._pending_states, self._history.save_states, "step states"),
        ):
            if not pending:
                continue
            batch = pending[:FLUSH_BATCH]
            try:
                await save(batch)
            except Exception as error:
                self._write_failed(error, what)
                return
            self._outage.recovered()
            del pending[: len(batch)]
        for incident_id, record in list(self._pending_incidents.items()):
            try:
                await self._history.save_incident(record)
            except Exception as error:
                self._write_failed(error, "an incident")
                return
            self._outage.recovered()
            if self._pending_incidents.get(incident_id) is record:
                del self._pending_incidents[incident_id]

    def _write_failed(self, error: Exception, what: str) -> None:
        """Counted; an outage is logged once by the Outage, anything else with its traceback.
        What was not written stays pending for the next flush."""
        self._metrics.count_database_error()
        if is_unavailable(error):
            self._outage.failed(error, "detection")
        else:
            log.exception(f"could not store {what}; kept for the next try")

    @property
    def pending(self) -> int:
        return len(self._pending_changes) + len(self._pending_states) + len(self._pending_incidents)

    def _export_incidents(self) -> None:
        counts: dict[tuple[str, Suspect], int] = {}
        for incident in self.book.open_incidents():
            key = (incident.target, incident.suspect)
            counts[key] = counts.get(key, 0) + 1
        for key in self._suspects_seen | set(counts):
            self._metrics.set_incidents_open(key[0], key[1], counts.get(key, 0))
        self._suspects_seen |= set(counts)

    # -- diagnosis ---------------------------------------------------------------------------

    def verdict_for(self, target: str, sources: tuple[str, ...]) -> Verdict:
        """The verdict for a target failing from `sources`: diagnose the first of them that
        has a failing round, against its control targets and the target's other sources."""
        settings = self._settings()
        latest = [(s, self._latest.get((s, target))) for s in sources]
        rounds = [self._judged_round(s, target, r) for s, r in latest if r is not None]
        failing = [r for r in rounds if r.first_failing_step is not None]
        if not failing:  # recovering: judge the failure it recovers from, not the good round
            found = (self._last_failing.get((s, target)) for s in sources)
            failing = [r for r in found if r is not None]
        if not failing:
            return Verdict(Suspect.UNKNOWN, None, ("no failing round at hand",))
        this = self._observation(settings, failing[0])
        controls = [
            self._observation(settings, self._judged_round(source, name, result))
            for (source, name), result in self._latest.items()
            if source == this.source and _role(settings, name) is Role.CONTROL
        ]
        peers = [
            self._observation(settings, self._judged_round(source, name, result))
            for (source, name), result in self._latest.items()
            if name == target and source != this.source
        ]
        context = Context(
            egress_devices=tuple(settings.egress_devices),
            upstream=settings.dns.upstream,
            proxy=settings.proxy.url if settings.proxy else None,
            policies=self._policies,
        )
        return diagnose(this, controls=controls, peers=peers, context=context)

    def _judged_round(self, source: str, target: str, latest: RoundResult) -> RoundResult:
        """The round that stands for a pair as hysteresis judges it: while a step is FAILING,
        the last round that failed first at that step (the first FAILING one in checklist
        order). Neither a good round (a recovery not yet confirmed: a source one round ahead
        of another must not look like "only the other fails") nor a round that failed some
        other way once (a proxy's restart resetting one connection) speaks for the failure
        until hysteresis confirms it."""
        states = self.detector.states(target).get(source, {})
        first = next((step for step in Step if states.get(step) is StepState.FAILING), None)
        if first is None or latest.first_failing_step is first:
            return latest
        return self._failed_at.get((source, target, first), latest)

    def _observation(self, settings: Settings, result: RoundResult) -> Observation:
        target = settings.target(result.target)
        assert target is not None  # only configured targets are kept in _latest
        return Observation(
            source=result.source,
            source_kind=self._kinds.get(result.source, SourceKind.NODE),
            target=result.target,
            role=target.role,
            endpoint=target.endpoint,
            round=result,
            node=self._nodes.get(result.source),
        )

    def _policy(self, target: str) -> DetectionSettings:
        settings = self._settings()
        found = settings.target(target)
        return settings.detection_for(found) if found is not None else settings.detection

    def _verdict_hold(self, target: str) -> timedelta:
        """A new suspect holds as long as a failure takes to be confirmed: fail_after rounds."""
        return timedelta(seconds=self._policy(target).fail_after * self._interval_of(target))

    def _interval_of(self, target: str) -> float:
        settings = self._settings()
        found = settings.target(target)
        return settings.timing(found)[0] if found is not None else settings.probes.interval


def _role(settings: Settings, target: str) -> Role | None:
    found = settings.target(target)
    return found.role if found is not None else None


def _queue(pending: list[Change], more: list[Change], what: str) -> None:
    """Append `more` to `pending`, dropping the oldest beyond MAX_PENDING_CHANGES (logged)."""
    pending += more
    if len(pending) > MAX_PENDING_CHANGES:
        dropped = len(pending) - MAX_PENDING_CHANGES
        del pending[:dropped]
        log.error(f"{what} dropped while the database is away", extra={"dropped": dropped})


def incident_record(incident: Incident) -> IncidentRecord:
    """The stored form of an incident: its history as JSON-able updates."""
    return IncidentRecord(
        id=incident.id,
        target=incident.target,
        started_at=incident.started_at,
        detected_at=incident.detected_at,
        ended_at=incident.ended_at,
        sources=incident.sources,
        first_failing_step=incident.first_failing_step,
        suspect=incident.suspect,
        evidence=incident.evidence,
        next_command=incident.next_command,
        history=tuple(
            _jsonable({f.name: getattr(update, f.name) for f in fields(update)})
            for update in incident.history
        ),
    )


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, Mapping):
        return {str(_jsonable(k)): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if hasattr(value, "value") and isinstance(value.value, str):  # StrEnum
        return value.value
    return value


def _log_event(event: IncidentEvent) -> None:
    incident = event.incident
    log.warning(
        f"incident {event.kind.value}",
        extra={
            "incident": incident.id,
            "target": incident.target,
            "first_failing_step": (
                incident.first_failing_step.value if incident.first_failing_step else None
            ),
            "suspect": incident.suspect.value,
            "sources": list(incident.sources),
            "started_at": incident.started_at.isoformat(),
        },
    )
