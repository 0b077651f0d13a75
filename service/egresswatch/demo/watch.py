"""What egresswatch saw, from consecutive rounds, and how that compares with the faults. Pure.

`observe` follows one target's first failing step from round to round and says when it flips:
the first round, ok -> failing, failing at one step -> failing at another, failing -> ok.
There is no hysteresis here, on purpose: every round is taken at face value, so a single bad
round is reported at once. (The service's own change detection, with `detection.fail_after`
and `recover_after`, is a separate piece; the demo does not depend on it.)

`Scoreboard` ties what was seen to the fault that was active then, and decides whether the
demo saw each break and recovery as expected.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

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
    new = View(rounds, step, reason, since)
    if view.rounds == 0:
        return new, Seen(SeenKind.FIRST, result, step, reason, since)
    if view.step is None:
        return new, Seen(SeenKind.FAILING, result, step, reason, since)
    if view.step is not step:
        return new, Seen(SeenKind.MOVED, result, step, reason, since)
    return new, None


@dataclass
class FaultRecord:
    """One fault of the scenario, and what egresswatch made of it."""

    fault: Fault
    injected_at: datetime | None = None
    repaired_at: datetime | None = None
    seen_at: datetime | None = None  # the first failed round's start
    seen_step: Step | None = None
    seen_reason: Reason | None = None
    recovered_at: datetime | None = None  # the first all-ok round after the repair
    early_recovery: bool = False  # all steps ok while the fault was still in place

    @property
    def wrong(self) -> bool:
        """Seen, but not as expected: another step failed, or it recovered before the repair."""
        seen_other = self.seen_step is not None and self.seen_step is not self.fault.expect_step
        return seen_other or self.early_recovery

    @property
    def as_expected(self) -> bool:
        return (
            self.seen_step is self.fault.expect_step
            and self.recovered_at is not None
            and not self.early_recovery
        )


@dataclass
class Scoreboard:
    """Faults injected and repaired, flips seen, and anything that was not expected."""

    faults: Sequence[Fault]
    records: list[FaultRecord] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)  # sentences a person reads

    def __post_init__(self) -> None:
        self.records = [FaultRecord(fault) for fault in self.faults]

    def injected(self, fault: Fault, at: datetime) -> None:
        self._record(fault).injected_at = at

    def repaired(self, fault: Fault, at: datetime) -> None:
        self._record(fault).repaired_at = at

    def active(self, target: str) -> FaultRecord | None:
        """The fault of `target` injected and not yet seen recovered, if any."""
        for record in reversed(self.records):
            if (
                record.fault.target == target
                and record.injected_at is not None
                and record.recovered_at is None
            ):
                return record
        return None

    def saw(self, seen: Seen) -> FaultRecord | None:
        """Account for one flip; returns the fault it belongs to, if any."""
        target = seen.result.target
        record = self.active(target)
        if seen.step is not None:  # FIRST failing, FAILING, MOVED
            if record is None:
                self.unexpected.append(f"{target} failed at {seen.step} with no fault injected")
            elif record.seen_step is None:
                record.seen_at, record.seen_step = seen.since, seen.step
                record.seen_reason = seen.reason
            return record
        if seen.kind is SeenKind.RECOVERED and record is not None:
            if record.repaired_at is None:
                record.early_recovery = True
            else:
                record.recovered_at = seen.result.started_at
        return record

    @property
    def wrong(self) -> bool:
        """Something was seen that contradicts the scenario (not merely not seen yet)."""
        return bool(self.unexpected) or any(r.wrong for r in self.records)

    @property
    def complete(self) -> bool:
        """Every fault was injected, seen as expected and seen recovered; nothing else failed."""
        return not self.unexpected and all(r.as_expected for r in self.records)

    def _record(self, fault: Fault) -> FaultRecord:
        return next(r for r in self.records if r.fault == fault)


def with_round(views: dict[str, View], result: RoundResult) -> Seen | None:
    """Update `views` (target -> View) with one round; the flip it shows, if any."""
    view, seen = observe(views.get(result.target, View()), result)
    views[result.target] = view
    return seen
