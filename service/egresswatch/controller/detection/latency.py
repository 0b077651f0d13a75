"""Online latency change-points: a two-sided CUSUM on log(latency), robust to noise and spikes.

Pure: no I/O, no clock (every sample brings its own time). One `LatencyShiftDetector` follows
one series, e.g. the `tcp_connect` durations of one (source, target); memory is O(1) per series
plus a ring of `warmup` samples.

The method, in the order a sample meets it:

1. Work on x = log(seconds): latency noise is multiplicative (a 20% spread at 20 ms and at
   200 ms is the same spread), so a shift is a ratio and the threshold is one number.
2. Warm-up: the first `warmup` samples give the baseline as their median and the noise scale as
   their MAD (x 1.4826, the normal-consistent factor); medians, so a spike during warm-up does
   not become the baseline.
3. Each later sample adds its deviation d = x - baseline to two CUSUM sums, one per direction:
   g_up = max(0, g_up + min(d, clip) - k). The reference k is half the smallest shift worth
   reporting (`min_shift`, log 1.5 by default), raised to `noise_k` noise scales on a noisy
   series so that noise alone does not climb. The per-sample clip is what makes a single spike
   harmless: a 10x spike counts no more than a 2.25x sample, so crossing the threshold h takes
   at least `persist` samples of a strong shift, or many of a small one.
4. When a sum reaches h, the recent samples are split in two, the old level before and a new
   one (their median) after, where that fits best; the split is the estimated change (the
   sum's own estimate, where it last left zero, starts too early when noise kept it above
   zero). It is a `Shift` only if the samples after the split are at least `min_shift / 2`
   away from the old level by the median nearest to it, so a burst of spikes that happened to
   climb the sum is dropped, not reported.
5. The detector re-arms at the new level, so "back down" is the next shift. That level is a
   median of few samples, so for the next `warmup` samples the baseline learns it at a
   running-mean pace, and a shift the same way in that time corrects it silently.
6. Otherwise, while no shift is building, the baseline and scale follow the series slowly (an
   EWMA of the deviation, winsorized at 3 scales), so a baseline learned from a few warm-up
   samples is corrected and slow drift is absorbed instead of alarming.

Defaults (`ShiftParams`) and what they give are in docs/detection.md (benchmarks/changepoint.py).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

_MAD_TO_SIGMA = 1.4826  # MAD of a normal sample x this = its standard deviation
_MEAN_ABS_TO_SIGMA = math.sqrt(math.pi / 2)  # mean |deviation| of a normal x this = sigma
_MIN_AFTER = 2  # samples a new level is estimated from, at least


@dataclass(frozen=True)
class ShiftParams:
    """The detector's knobs. Shifts are log-ratios: log(1.5) means "1.5 times slower"."""

    min_shift: float = math.log(1.5)  # the smallest shift worth reporting (20 ms -> 30 ms)
    persist: int = 4  # samples of a strong shift before an alarm: spikes come alone
    warmup: int = 10  # samples that learn the baseline before anything is judged
    noise_k: float = 0.75  # the reference k is at least this many noise scales
    noise_h: float = 6.0  # the threshold h is at least this many noise scales
    alpha: float = 0.02  # how fast the baseline follows the series once learned
    min_scale: float = 0.02  # noise scale floor: a perfectly steady series still has jitter
    # Durations below this count as this: among sub-millisecond values a 1.5x "shift" is the
    # prober's host scheduling, not the path (the fault lab saw such alarms on a quiet path).
    # It also keeps a duration reported as 0 from becoming log(0).
    floor_s: float = 0.001

    def __post_init__(self) -> None:
        if not (self.min_shift > 0 and self.persist >= 1 and self.warmup >= 3):
            raise ValueError("need min_shift > 0, persist >= 1 and warmup >= 3")
        if not (0 < self.alpha < 1 and self.min_scale > 0 and self.floor_s > 0):
            raise ValueError("need 0 < alpha < 1, min_scale > 0 and floor_s > 0")


class Direction(StrEnum):
    UP = "up"
    DOWN = "down"


@dataclass(frozen=True)
class Shift:
    """A persistent change of level. `started_at`/`index`: the first sample at the new level
    (an estimate); `detected_at`/`detected_index`: the sample that confirmed it."""

    direction: Direction
    started_at: datetime
    index: int
    detected_at: datetime
    detected_index: int
    before_s: float  # the level before, in seconds (exp of the baseline)
    after_s: float  # the new level in seconds: median of (up to `warmup`) samples since start

    @property
    def ratio(self) -> float:
        return self.after_s / self.before_s

    @property
    def delay(self) -> int:
        """Samples from the estimated change to its detection, both counted (1 = at once)."""
        return self.detected_index - self.index + 1


@dataclass(slots=True)
class _Sum:
    """One side of the CUSUM: the sum, and where its current excursion began."""

    g: float = 0.0
    start_index: int = 0
    start_at: datetime | None = None

    def add(self, increment: float, index: int, at: datetime) -> None:
        if self.g == 0.0 and increment > 0:
            self.start_index, self.start_at = index, at
        self.g = max(0.0, self.g + increment)

    def clear(self) -> None:
        self.g, self.start_at = 0.0, None


class LatencyShiftDetector:
    """Follows one latency series; `update` returns a `Shift` when its level moved and stayed.

    Contract: samples are fed in time order; `update` is O(1) (O(warmup^2) when a sum reaches
    its threshold); after a shift the detector is re-armed at the new level, so an UP is
    normally followed, later, by a DOWN.
    `reset()` forgets everything and starts a new warm-up (e.g. after the step failed).
    """

    # One per latency step per (source, target): slotted, 300 bytes less than with a dict.
    __slots__ = (
        "_baseline",
        "_down",
        "_index",
        "_last",
        "_recent",
        "_relearn",
        "_scale",
        "_settled",
        "_up",
        "params",
    )

    def __init__(self, params: ShiftParams | None = None) -> None:
        self.params = params or ShiftParams()
        # A list, not a deque: a few entries, and a deque is 600 bytes even empty (one of
        # these per latency step per (source, target)).
        self._recent: list[tuple[float, datetime]] = []
        self.reset()

    def reset(self) -> None:
        self._recent.clear()
        self._index = -1
        self._baseline: float | None = None
        self._scale = self.params.min_scale
        self._settled = 0  # samples behind the baseline since it was (re)set
        self._relearn = 0  # samples left in which the baseline follows even a building sum
        self._last: Direction | None = None  # the direction of the last shift
        self._up, self._down = _Sum(), _Sum()

    @property
    def baseline_s(self) -> float | None:
        """The current level in seconds, None during warm-up."""
        return None if self._baseline is None else math.exp(self._baseline)

    @property
    def thresholds(self) -> tuple[float, float, float]:
        """(k, clip, h) in log units for the current noise scale."""
        p = self.params
        k = max(p.min_shift / 2, p.noise_k * self._scale)
        clip = max(2 * p.min_shift, 2 * k)
        h = max(p.persist * (clip - k), p.noise_h * self._scale)
        return k, clip, h

    def update(self, value_s: float, at: datetime) -> Shift | None:
        """Feed one duration (seconds) taken at `at`; a `Shift` when one is confirmed."""
        x = math.log(max(value_s, self.params.floor_s))
        self._index += 1
        self._recent.append((x, at))
        if len(self._recent) > self.params.warmup:
            del self._recent[0]
        if self._baseline is None:
            if len(self._recent) == self.params.warmup:
                self._learn()
            return None
        k, clip, h = self.thresholds
        d = x - self._baseline
        self._up.add(min(d, clip) - k, self._index, at)
        self._down.add(min(-d, clip) - k, self._index, at)
        for side, sign, direction in (
            (self._up, 1, Direction.UP),
            (self._down, -1, Direction.DOWN),
        ):
            if side.g >= h * (1 - 1e-9):  # `persist` clipped samples reach h exactly
                start, started_at, level, confirmed = self._fit(side, sign)
                if not confirmed:
                    # Most of the run sat at the old level: a few spikes climbed the sum, not
                    # a shift. Their evidence is dropped, not left to combine with the next.
                    side.clear()
                    continue
                # Soon after a shift, one the same way is the first level estimate (a median
                # of few samples) being corrected, not news: re-arm silently.
                refining = direction is self._last and self._relearn > 0
                shift = self._alarm(direction, start, started_at, level, at)
                return None if refining else shift
        if self._relearn > 0 or max(self._up.g, self._down.g) < h / 2:
            # Normally only while nothing is building: a real shift must not be learned as the
            # baseline before it is reported. Right after a shift the level is a rough median
            # of a few samples and is learned regardless, or its error would be a second shift.
            self._relearn = max(0, self._relearn - 1)
            self._follow(d)
        return None

    def _learn(self) -> None:
        values = [x for x, _ in self._recent]
        self._baseline = statistics.median(values)
        mad = statistics.median(abs(v - self._baseline) for v in values)
        self._scale = max(self.params.min_scale, _MAD_TO_SIGMA * mad)
        self._settled = len(values)

    def _follow(self, d: float) -> None:
        assert self._baseline is not None
        self._settled += 1
        # 1/n at first (a running mean, so a freshly set baseline converges fast), then alpha.
        gain = max(self.params.alpha, 1.0 / self._settled)
        bound = 3 * self._scale
        self._baseline += gain * max(-bound, min(bound, d))
        # The scale always moves at alpha: right after a re-arm the baseline may be off by a
        # lot, and those deviations are the baseline's error, not the series' noise.
        sigma = _MEAN_ABS_TO_SIGMA * min(abs(d), bound)
        alpha = self.params.alpha
        self._scale = max(self.params.min_scale, self._scale + alpha * (sigma - self._scale))

    def _fit(self, side: _Sum, sign: int) -> tuple[int, datetime, float, bool]:
        """Where the new level began, what it is, and whether it is a shift at all:
        (sample index, its time, log level, confirmed).

        The CUSUM's own estimate (where the sum last left zero) starts too early when noise
        kept the sum above zero before the change, and the median since then mixes both
        levels. So the recent part of the excursion is split in two, the old level before and
        the median after, at the split with the least absolute deviation (when the whole window
        is at the new level, the change began before it: the CUSUM's estimate stands, as only
        the last `warmup` samples are kept). It is confirmed when the part after is at least
        `min_shift / 2` away even by its median nearest the old level: with two samples that
        is the one nearer, so a lone spike is never a level.
        """
        assert self._baseline is not None
        offset = self._index - len(self._recent) + 1  # the index of self._recent[0]
        first = max(side.start_index, offset)
        values = [x for x, _ in self._recent][first - offset :]
        best: tuple[float, int, float] | None = None
        for split in range(len(values) - min(_MIN_AFTER, len(values)) + 1):
            level = statistics.median(values[split:])
            cost = sum(abs(x - self._baseline) for x in values[:split]) + sum(
                abs(x - level) for x in values[split:]
            )
            if best is None or cost < best[0]:
                best = (cost, split, level)
        assert best is not None
        _, split, level = best
        after = sorted(values[split:])
        nearest = after[(len(after) - 1) // 2] if sign > 0 else after[len(after) // 2]
        confirmed = sign * (nearest - self._baseline) >= self.params.min_shift / 2
        if split == 0 and side.start_at is not None:
            return side.start_index, side.start_at, level, confirmed
        start = first + split
        return start, self._recent[start - offset][1], level, confirmed

    def _alarm(
        self, direction: Direction, start: int, started_at: datetime, level: float, at: datetime
    ) -> Shift:
        assert self._baseline is not None
        since = self._index - start + 1
        shift = Shift(
            direction=direction,
            started_at=started_at,
            index=start,
            detected_at=at,
            detected_index=self._index,
            before_s=math.exp(self._baseline),
            after_s=math.exp(level),
        )
        # Re-arm at the new level; the median of a few samples is rough, so the baseline
        # follows at a running-mean pace for the next `warmup` samples.
        self._baseline = level
        self._settled = since
        self._relearn = self.params.warmup
        self._last = direction
        self._up.clear()
        self._down.clear()
        return shift
