"""The rules for one step of one (source, target): what a failed, a good and a timed round
do to its state (module docstring of hysteresis.py). Pure: no I/O, no clock.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from egresswatch.controller.detection.latency import (
    Direction,
    LatencyShiftDetector,
    Shift,
    ShiftParams,
)
from egresswatch.model import Change, Reason, StepResult, StepState

if TYPE_CHECKING:  # settings imports pydantic and YAML; the rules only read a few fields
    from egresswatch.settings import DetectionSettings


@dataclass(slots=True)
class StepTrack:
    """What detection keeps for one step of one (source, target). Thousands exist (5 a
    target per source), so they are slotted and the M-of-K window exists only when
    `fail_window` is set: an empty deque alone is about 600 bytes."""

    state: StepState = StepState.UNKNOWN
    since: datetime | None = None  # started_at of the run that set `state`
    reason: Reason | None = None  # of the latest failed result
    fails: int = 0  # failed rounds in a row
    fail_start: datetime | None = None
    goods: int = 0  # good rounds in a row
    good_start: datetime | None = None
    window: deque[tuple[bool, datetime]] | None = None  # the M-of-K window, when configured
    latency: LatencyShiftDetector | None = None
    normal_s: float | None = None  # the level a DEGRADED step is measured against
    judged_until: datetime | None = None  # restored: rounds before this are in `state` already
    came_down: datetime | None = None  # a DEGRADED step's latency shifted down from here...
    settling: int = 0  # ...and the detector is still learning the level it came down to

    def break_runs(self) -> None:
        self.fails = self.goods = 0
        self.fail_start = self.good_start = None
        self.clear_window()

    def clear_window(self) -> None:
        if self.window is not None:
            self.window.clear()

    def judged(self, failed: bool, at: datetime) -> None:
        """A failed or good round enters the M-of-K window (if there is one)."""
        if self.window is not None:
            self.window.append((failed, at))

    def flip(self, state: StepState, since: datetime) -> StepState:
        previous, self.state, self.since = self.state, state, since
        return previous


# The track of a step seen but never judged (only skipped or error so far), shared by every
# such step: it is never changed (Detector.observe replaces it at the step's first ok or
# fail). Most steps of an `address:` target are never judged: 160 bytes each, 6 a target.
UNJUDGED = StepTrack()

ChangeOf = Callable[[StepState, str, "Reason | None"], Change]


def fit_window(step: StepTrack, fail_window: tuple[int, int] | None) -> None:
    size = fail_window[1] if fail_window else 0
    if size == 0:
        step.window = None
    elif step.window is None or step.window.maxlen != size:  # first use, or the config changed
        step.window = deque(step.window or (), maxlen=size)


def on_failed(
    step: StepTrack,
    result: StepResult,
    at: datetime,
    policy: DetectionSettings,
    change: ChangeOf,
) -> Change | None:
    step.goods, step.good_start = 0, None
    step.fails += 1
    if step.fails == 1:
        step.fail_start = at
    step.reason = result.reason
    step.judged(True, at)
    if step.state is StepState.FAILING:
        return None
    starts: list[datetime] = []
    why = ""
    if step.fails >= policy.fail_after and step.fail_start is not None:
        starts.append(step.fail_start)
        why = f"{step.fails} failed rounds in a row"
    if policy.fail_window is not None and step.window is not None:
        failed_at = [when for failed, when in step.window if failed]
        if len(failed_at) >= policy.fail_window[0]:
            starts.append(failed_at[0])
            why = f"{len(failed_at)} of the last {len(step.window)} rounds failed"
    if not starts:
        return None
    previous = step.flip(StepState.FAILING, min(starts))
    step.clear_window()
    # The latency seen before a failure says nothing about the path after it.
    step.latency, step.normal_s, step.came_down = None, None, None
    detail = f"{why}: {result.detail}" if result.detail else why
    return change(previous, detail, step.reason)


def on_good(
    step: StepTrack, at: datetime, policy: DetectionSettings, change: ChangeOf
) -> Change | None:
    step.fails, step.fail_start = 0, None
    step.goods += 1
    if step.goods == 1:
        step.good_start = at
    step.judged(False, at)
    if step.state is StepState.UNKNOWN:
        step.flip(StepState.OK, at)  # the first good round sets a baseline: no change
        return None
    if step.state is not StepState.FAILING or step.goods < policy.recover_after:
        return None
    previous = step.flip(StepState.OK, step.good_start or at)
    step.clear_window()  # or the failures before would fail it again at once
    return change(previous, f"{step.goods} good rounds in a row", None)


def on_latency(
    step: StepTrack,
    at: datetime,
    shift: Shift | None,
    detector: LatencyShiftDetector,
    params: ShiftParams,
    change: ChangeOf,
) -> Change | None:
    if shift is not None and shift.direction is Direction.UP:
        step.came_down = None
        level = f"{shift.before_s * 1000:.1f} ms -> {shift.after_s * 1000:.1f} ms"
        if step.state is StepState.DEGRADED:
            # Worse again: said, as a change that keeps the state (a step degraded by a small
            # rise must still report the large one), measured against the same normal.
            step.flip(StepState.DEGRADED, shift.started_at)
            return change(StepState.DEGRADED, f"latency rose again: {level}", None)
        step.normal_s = shift.before_s
        previous = step.flip(StepState.DEGRADED, shift.started_at)
        return change(previous, f"latency {level} ({shift.ratio:.1f}x)", None)
    if step.state is not StepState.DEGRADED or step.normal_s is None:
        return None  # a shift down while OK is just a new normal
    if shift is not None:
        step.came_down, step.settling = shift.started_at, params.warmup
    elif step.settling > 0:
        step.settling -= 1
    if step.settling == 0:
        step.came_down = None  # what it came down to was not the old level
    # Back to OK once the level is again less than `min_shift` above the level before the
    # rise. Judged on the detector's level while it settles after a shift down, not on the
    # shift's first estimate (a median of a few samples, which could leave the step DEGRADED
    # for good); `started_at` is then where it came down. Otherwise (the level drifted back)
    # the bar is half as far, so a level hovering at the edge cannot flap, and it starts now.
    level_s = detector.baseline_s
    margin = params.min_shift if step.came_down is not None else params.min_shift / 2
    if level_s is None or level_s >= step.normal_s * math.exp(margin):
        return None
    normal = f"{step.normal_s * 1000:.1f} ms"
    step.normal_s = None
    previous = step.flip(StepState.OK, step.came_down or at)
    step.came_down = None
    detail = f"latency back to {level_s * 1000:.1f} ms ({normal} before it rose)"
    return change(previous, detail, None)
