"""Rounds turned into rows before the database is asked: the CPU half of storing a batch.

`prepare_rounds` does everything `Store.save_rounds` needs that does not depend on the database:
it checks the times, encodes each step's evidence to its JSON text once, sums durations, finds
the first failing step, the names seen and the rollup buckets touched. What is left for the
transaction (`Store.save_prepared`) is mapping names to ids and sending the rows. The
`BatchedWriter` prepares the next batch while the database stores the previous one, so the two
halves overlap on two cores (docs/performance.md, "Issue 14, continued").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import NamedTuple

from egresswatch.model import RoundResult, Status, Step
from egresswatch.storage.bulk import StepRow
from egresswatch.storage.policy import ROLLUP_RESOLUTIONS, bucket_start

_ORDER = {step: number for number, step in enumerate(Step)}  # table order (DESIGN.md §1)
_FINEST = min(ROLLUP_RESOLUTIONS, key=lambda resolution: resolution.bucket)


class RoundParts(NamedTuple):
    """What a round's row needs besides ids."""

    source: str
    target: str
    started_at: datetime
    duration_s: float  # the sum of its steps' durations
    first_failing_step: str | None


@dataclass
class PreparedRounds:
    """Rows of rounds, ready for one transaction; `steps[i].round` indexes `rounds`.

    Built by `prepare_rounds`, possibly in parts joined with `extend` (each part prepared with
    `first` = the number of rounds before it). Not changed by a write, so a retry reuses it.
    """

    rounds: list[RoundParts] = field(default_factory=list)
    steps: list[StepRow] = field(default_factory=list)
    # Each name's (earliest, latest) round start, per table.
    sources: dict[str, tuple[datetime, datetime]] = field(default_factory=dict)
    targets: dict[str, tuple[datetime, datetime]] = field(default_factory=dict)
    buckets: set[tuple[str, datetime]] = field(default_factory=set)  # (resolution, start)

    def __len__(self) -> int:
        return len(self.rounds)

    def extend(self, other: PreparedRounds) -> None:
        """Append `other`, prepared with `first=len(self)`."""
        if other.steps and other.steps[0].round < len(self.rounds):
            raise ValueError("a part must be prepared with first = the rounds before it")
        self.rounds.extend(other.rounds)
        self.steps.extend(other.steps)
        _merge(self.sources, other.sources)
        _merge(self.targets, other.targets)
        self.buckets |= other.buckets


def prepare_rounds(rounds: Sequence[RoundResult], first: int = 0) -> PreparedRounds:
    """The rows of `rounds`, their steps numbered from `first`.

    Raises ValueError for a naive `started_at` (storage needs aware times).
    """
    prepared = PreparedRounds()
    steps = prepared.steps
    # The finest rollup bucket of the last round: the rounds of a batch mostly share it, and
    # the buckets of any moment inside it are the ones already added (each coarser bucket is a
    # whole number of the finest). Computing them per round was a tenth of preparing it.
    finest: tuple[datetime, datetime] | None = None
    for position, r in enumerate(rounds, first):
        when = r.started_at
        if when.utcoffset() is None:
            raise ValueError(f"naive datetime {when!r}: started_at needs a timezone")
        failing: Step | None = None  # model.first_failing_step, in the same pass
        duration = 0.0
        for s in r.steps:
            duration += s.duration_s
            if s.status is Status.FAIL and (failing is None or _ORDER[s.step] < _ORDER[failing]):
                failing = s.step
            steps.append(
                StepRow(
                    position,
                    s.step._value_,  # the enum's documented value slot: `.value` is a property
                    s.status._value_,
                    None if s.reason is None else s.reason._value_,
                    s.duration_s,
                    s.detail,
                    s.evidence.to_json_text(),
                )
            )
        prepared.rounds.append(RoundParts(r.source, r.target, when, duration, _code(failing)))
        _see(prepared.sources, r.source, when)
        _see(prepared.targets, r.target, when)
        if finest is None or not finest[0] <= when < finest[1]:
            for resolution in ROLLUP_RESOLUTIONS:
                prepared.buckets.add((resolution.value, bucket_start(when, resolution)))
            start = bucket_start(when, _FINEST)
            finest = (start, start + _FINEST.bucket)
    return prepared


def _code(value: StrEnum | None) -> str | None:
    return value.value if value is not None else None


def _see(seen: dict[str, tuple[datetime, datetime]], name: str, when: datetime) -> None:
    found = seen.get(name)
    if found is None:
        seen[name] = (when, when)
    elif when < found[0] or when > found[1]:
        seen[name] = (min(found[0], when), max(found[1], when))


def _merge(
    into: dict[str, tuple[datetime, datetime]], other: dict[str, tuple[datetime, datetime]]
) -> None:
    for name, (earliest, latest) in other.items():
        _see(into, name, earliest)
        _see(into, name, latest)
