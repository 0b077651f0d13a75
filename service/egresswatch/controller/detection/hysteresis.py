"""Hysteresis: round results in, per-step states and their `Change`s out (DESIGN.md §2 "change").

Pure: no I/O and no clock of its own (the caller passes `now`). One `Detector` holds, per
(source, target, step), a few counters, the last K judgements of the M-of-K window and one
latency change-point detector, so memory is bounded per key whatever the history.

The rules, per step of a (source, target):

- `fail` is a failed round, `ok` a good one. `skipped` and `error` are neither and leave every
  counter where it was: `skipped` means an earlier step failed, so this step was not tried and
  says nothing about itself (counting it as failed would blame tcp_connect for a DNS outage;
  counting it as good would "recover" a step nobody tested); `error` means our probe broke, and
  the target must not be judged by our own bugs.
- The step turns FAILING after `fail_after` failed rounds in a row, or when `fail_window` is set
  and M of the last K judged rounds failed (flapping). `started_at` of the change is the first
  failed round of the run, or the first failed round inside the window, whichever is earlier.
- A FAILING step recovers to OK after `recover_after` good rounds in a row; `started_at` is the
  first good round of that run. Both flips clear the M-of-K window, so old failures cannot
  re-fail a step that just recovered.
- A step starts UNKNOWN (never judged). Its first good round makes it OK without a change: a
  baseline is not news. A step failing from its very first round counts towards FAILING as
  usual and flips UNKNOWN -> FAILING.
- Latency: the durations of `ok` results (all probe steps but path_trace, whose duration is
  hop timeouts, not latency) feed a `LatencyShiftDetector`. An upward shift of at least
  `latency_min_change` (absolute) turns OK into DEGRADED (`started_at`: the round where the
  shift began); a further such rise while DEGRADED is a DEGRADED -> DEGRADED change, so a
  real regression after a small one is still said. DEGRADED turns back into OK once
  the latency shifted down and its level is again less than `min_shift` above the level before
  the rise (`started_at`: where it came down), or, if it drifted back without a shift, less
  than half that. A shift down while OK is just a new normal.
  FAILING wins over DEGRADED: a step going FAILING forgets its latency history and learns it
  again after it recovers.
- Staleness: see `Detector.stale`. A silence breaks runs (counting restarts when the source
  reports again), so rounds before and after a gap never add up to a failure.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from egresswatch.controller.detection.latency import (
    Direction,
    LatencyShiftDetector,
    ShiftParams,
)
from egresswatch.controller.detection.step_rules import (
    UNJUDGED,
    StepTrack,
    fit_window,
    on_failed,
    on_good,
    on_latency,
)
from egresswatch.model import (
    PROBE_STEPS,
    Change,
    Reason,
    RoundResult,
    Status,
    Step,
    StepResult,
    StepState,
)

# An agent retries a failed upload after at most this long (agent/sink_types.py,
# SinkTuning.backoff_max_s): after a restart its buffered rounds may take that long to come.
AGENT_RETRY_MAX = timedelta(seconds=30)
_TICK = timedelta(microseconds=1)  # "just before": a replayed round is newer than its track


@dataclass(frozen=True)
class SavedState:
    """A step state as stored (DESIGN.md §4 step_states): what `Detector.restore` starts from."""

    source: str
    target: str
    step: Step | None  # None: the whole pair (silent or reporting)
    state: StepState
    since: datetime
    reason: Reason | None = None


if TYPE_CHECKING:  # settings imports pydantic and YAML; the rules only read four fields
    from egresswatch.settings import DetectionSettings

Policy = Callable[[str], "DetectionSettings"]
LATENCY_STEPS = frozenset(PROBE_STEPS) - {Step.PATH_TRACE}
_DETAIL_MAX = 200


@dataclass(slots=True)  # one a (source, target)
class _SourceTrack:
    last_round_at: datetime
    steps: dict[Step, StepTrack] = field(default_factory=dict)
    stale: bool = False
    lost: StepState | None = None  # the state announced as lost when it went stale

    def summary(self) -> StepState | None:
        """The worst judged state of its steps; None when no step was ever judged."""
        states = {t.state for t in self.steps.values()}
        for state in (StepState.FAILING, StepState.DEGRADED, StepState.OK):
            if state in states:
                return state
        return None


class Detector:
    """Per-step states of every (source, target) after hysteresis, and the changes between them.

    `policy(target)` gives the target's `DetectionSettings` (e.g. `Settings.detection_for`);
    it is asked on every round, so a config reload takes effect at the next round.
    Rounds of one (source, target) must arrive in time order; a round that is not newer than
    the last one seen (a replayed batch) is ignored.
    """

    def __init__(
        self,
        policy: Policy,
        *,
        shift_params: ShiftParams | None = None,
        restart_grace: timedelta = AGENT_RETRY_MAX,
    ) -> None:
        self._policy = policy
        self._restart_grace = restart_grace
        self._shift_params = shift_params or ShiftParams()
        self._tracks: dict[str, dict[str, _SourceTrack]] = {}  # target -> source -> track
        self._baselines: list[Change] = []  # first judgements, not changes: take_baselines()
        self._restored_at: datetime | None = None

    # -- feeding --------------------------------------------------------------------------

    def observe(self, result: RoundResult, *, now: datetime) -> list[Change]:
        """Judge one round; the changes it causes, in order (a source's return comes first)."""
        sources = self._tracks.setdefault(result.target, {})
        track = sources.get(result.source)
        if track is None:
            track = sources[result.source] = _SourceTrack(last_round_at=result.started_at)
        elif result.started_at <= track.last_round_at:
            return []
        track.last_round_at = result.started_at
        changes: list[Change] = []
        if track.stale:
            changes.extend(self._returned(result, track, now))
        policy = self._policy(result.target)
        for step_result in result.steps:
            if step_result.step not in PROBE_STEPS:
                continue
            step = track.steps.get(step_result.step)
            if step is None or step is UNJUDGED:  # not setdefault: a StepTrack every round
                if step_result.status not in (Status.OK, Status.FAIL):
                    # Skipped or error changes nothing: a step never judged yet (a URL-less
                    # target's TLS and HTTP, a trace not due) shares one track that stays
                    # as built.
                    track.steps[step_result.step] = UNJUDGED
                    continue
                step = track.steps[step_result.step] = StepTrack()
            if step.judged_until is not None and result.started_at < step.judged_until:
                continue  # a replayed round that the restored state already counts
            change = self._judge(result, step_result, step, policy, now)
            if change is not None:
                changes.append(change)
        return changes

    def restore(
        self, saved: Iterable[SavedState], rounds: Iterable[RoundResult], *, now: datetime
    ) -> list[Change]:
        """Rebuild the state a previous run left: call once, on an empty detector, at startup.

        `saved` are the stored step states (what the last stored change of each step set, a
        pair's step None UNKNOWN meaning it had gone silent); `rounds` the latest stored rounds
        of each pair, any order. Each step starts in its stored state, and only the rounds
        started at or after its `since` are judged again (the earlier ones made that state):
        that rebuilds the runs that hysteresis counts, so a failure 2 rounds into its recovery
        recovers at the next good round, not 2 rounds later. A change those rounds cause was
        not stored before the previous run stopped; it is returned, detected `now`.

        A DEGRADED step is measured again against the median latency of its good rounds
        before it degraded; with none of those stored, it is OK again, said by a change.
        """
        self._restored_at = now
        silent_since: dict[tuple[str, str], datetime] = {}
        for state in saved:
            track = self._track(state.source, state.target, state.since)
            if state.step is None:
                if state.state is StepState.UNKNOWN:
                    silent_since[(state.source, state.target)] = state.since
                continue
            if state.state is StepState.UNKNOWN or state.step not in PROBE_STEPS:
                continue
            track.steps[state.step] = StepTrack(
                state=state.state,
                since=state.since,
                reason=state.reason,
                judged_until=state.since,
            )
        ordered = sorted(rounds, key=lambda r: r.started_at)
        changes = self._degraded_baselines(ordered, now)
        replayed: dict[tuple[str, str], datetime] = {}
        for result in ordered:
            pair = (result.source, result.target)
            if pair in replayed and result.started_at <= replayed[pair]:
                continue  # the same round twice
            replayed[pair] = result.started_at
            track = self._track(result.source, result.target, result.started_at)
            went_silent = silent_since.get(pair)
            if went_silent is not None and result.started_at >= went_silent:
                del silent_since[pair]
                track.stale, track.lost = True, track.summary()  # it reported again after
            track.last_round_at = result.started_at - _TICK  # stored rounds are all judged
            changes += self.observe(result, now=now)
        for source, target in silent_since:
            track = self._tracks[target][source]
            track.stale, track.lost = True, track.summary()
        return changes

    def _track(self, source: str, target: str, at: datetime) -> _SourceTrack:
        sources = self._tracks.setdefault(target, {})
        track = sources.get(source)
        if track is None:
            track = sources[source] = _SourceTrack(last_round_at=at - _TICK)
        return track

    def _degraded_baselines(self, ordered: Sequence[RoundResult], now: datetime) -> list[Change]:
        changes: list[Change] = []
        for target, sources in self._tracks.items():
            for source, track in sources.items():
                for name, step in track.steps.items():
                    if step.state is not StepState.DEGRADED or step.since is None:
                        continue
                    before = [
                        s.duration_s
                        for r in ordered
                        if r.source == source and r.target == target and r.started_at < step.since
                        for s in r.steps
                        if s.step is name and s.status is Status.OK
                    ]
                    if before:
                        step.normal_s = statistics.median(before)
                        continue
                    previous = step.flip(StepState.OK, now)
                    detail = "latency baseline not stored: judged again from now"
                    changes.append(
                        Change(
                            source=source,
                            target=target,
                            step=name,
                            previous=previous,
                            current=StepState.OK,
                            started_at=now,
                            detected_at=now,
                            detail=detail,
                        )
                    )
        return changes

    def take_baselines(self) -> list[Change]:
        """The first judgements since the last call: `unknown -> ok` on a step's first good
        round. They are not changes (nothing changed that anyone knew of: no change is logged,
        no incident is touched), but the stored step states must say `ok` from then on, or
        `/api/v1/status` would call a pair that never failed `unknown`."""
        taken, self._baselines = self._baselines, []
        return taken

    def stale(self, now: datetime, interval_of: Callable[[str], float]) -> list[Change]:
        """Mark silent sources UNKNOWN: one change (step None) per (source, target).

        A (source, target) with no round for more than `stale_after` x `interval_of(target)`
        seconds becomes unknown; the change says what it was (its worst step state) and starts
        one interval after its last round (the first round that did not come). After a
        `restore`, a full `stale_after` window plus `restart_grace` (the agents' longest retry
        wait) passes first. Time alone never
        changes a step's state: the states are kept, shown as UNKNOWN while it is silent, and
        given back by the change of its next round. A source never judged emits nothing.
        """
        changes: list[Change] = []
        for target, sources in self._tracks.items():
            policy = self._policy(target)
            interval = timedelta(seconds=interval_of(target))
            grace = interval * policy.stale_after + self._restart_grace
            if self._restored_at is not None and now - self._restored_at <= grace:
                # Just restarted: agents deliver what they buffered meanwhile (at their next
                # retry, up to AGENT_RETRY_MAX after the controller is back); nobody went
                # silent because this controller was away.
                continue
            for source, track in sources.items():
                if track.stale or now - track.last_round_at <= interval * policy.stale_after:
                    continue
                track.stale, track.lost = True, track.summary()
                if track.lost is None:
                    continue
                changes.append(
                    Change(
                        source=source,
                        target=target,
                        step=None,
                        previous=track.lost,
                        current=StepState.UNKNOWN,
                        started_at=track.last_round_at + interval,
                        detected_at=now,
                        detail=f"no round for {policy.stale_after} intervals"
                        f" of {interval.total_seconds():g}s",
                    )
                )
        return changes

    def forget(self, *, source: str | None = None, target: str | None = None) -> None:
        """Drop what is held about a source, a target, or one pair (a pod deleted, a target
        removed from the config), so memory follows what exists. Emits no change."""
        if source is None and target is None:
            raise ValueError("forget a source, a target or both")
        for name in [target] if target is not None else list(self._tracks):
            sources = self._tracks.get(name, {})
            if source is None:
                sources.clear()
            else:
                sources.pop(source, None)
            if not sources:
                self._tracks.pop(name, None)

    # -- queries --------------------------------------------------------------------------

    def state(self, source: str, target: str, step: Step) -> StepState:
        """The step's state; UNKNOWN if never judged or while its source is silent."""
        track = self._tracks.get(target, {}).get(source)
        if track is None or track.stale or step not in track.steps:
            return StepState.UNKNOWN
        return track.steps[step].state

    def since(self, source: str, target: str, step: Step) -> datetime | None:
        """When the step's current state began (the started_at of its change), if judged."""
        track = self._tracks.get(target, {}).get(source)
        if track is None or track.stale or step not in track.steps:
            return None
        return track.steps[step].since

    def failing_since(self, source: str, target: str, step: Step) -> datetime | None:
        """The first failed round of the current failure, None unless FAILING now."""
        if self.state(source, target, step) is not StepState.FAILING:
            return None
        return self.since(source, target, step)

    def states(self, target: str) -> dict[str, dict[Step, StepState]]:
        """source -> step -> state for every source seen for `target` (copies)."""
        return {
            source: {step: self.state(source, target, step) for step in track.steps}
            for source, track in self._tracks.get(target, {}).items()
        }

    def unknown_sources(self, target: str) -> frozenset[str]:
        """The sources of `target` that are silent now."""
        return frozenset(s for s, t in self._tracks.get(target, {}).items() if t.stale)

    def pairs(self) -> Iterator[tuple[str, str]]:
        """Every (source, target) held."""
        for target, sources in self._tracks.items():
            for source in sources:
                yield source, target

    # -- the rules ------------------------------------------------------------------------

    def _returned(self, result: RoundResult, track: _SourceTrack, now: datetime) -> list[Change]:
        # A silence breaks the runs: "in a row" and "of the last K" mean rounds that came one
        # after the other, and the failure seen before the gap may not be the one after it.
        track.stale = False
        for step in track.steps.values():
            if step is not UNJUDGED:  # shared, and has no runs
                step.break_runs()
        lost, track.lost = track.lost, None
        if lost is None:
            return []
        return [
            Change(
                source=result.source,
                target=result.target,
                step=None,
                previous=StepState.UNKNOWN,
                current=lost,
                started_at=result.started_at,
                detected_at=now,
                detail="reporting again",
            )
        ]

    def _judge(
        self,
        result: RoundResult,
        step_result: StepResult,
        step: StepTrack,
        policy: DetectionSettings,
        now: datetime,
    ) -> Change | None:
        at = result.started_at

        def change(previous: StepState, detail: str, reason: Reason | None) -> Change:
            return Change(
                source=result.source,
                target=result.target,
                step=step_result.step,
                previous=previous,
                current=step.state,
                started_at=step.since or at,
                detected_at=now,
                reason=reason,
                detail=detail[:_DETAIL_MAX],
            )

        fit_window(step, policy.fail_window)
        if step_result.status is Status.FAIL:
            return on_failed(step, step_result, at, policy, change)
        if step_result.status is not Status.OK:
            return None  # skipped or error: neither failed nor good (module docstring)
        was_unknown = step.state is StepState.UNKNOWN
        flipped = on_good(step, at, policy, change)
        if was_unknown and step.state is StepState.OK:
            self._baselines.append(change(StepState.UNKNOWN, "first good round", None))
        if step.state is StepState.FAILING or step_result.step not in LATENCY_STEPS:
            return flipped
        if step.latency is None:
            step.latency = LatencyShiftDetector(self._shift_params)
        shift = step.latency.update(step_result.duration_s, at)
        if flipped is not None:
            return flipped
        if (
            shift is not None
            and shift.direction is Direction.UP
            and shift.after_s - shift.before_s < policy.latency_min_change
        ):
            shift = None  # too small to be anyone's regression, whatever the ratio
        return on_latency(step, at, shift, step.latency, self._shift_params, change)
