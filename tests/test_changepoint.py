"""The latency change-point detector on seeded synthetic series with known change points."""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta

import pytest

from egresswatch.controller.detection.latency import (
    Direction,
    LatencyShiftDetector,
    Shift,
    ShiftParams,
)

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
SPREAD = 0.25  # sigma of log(latency): a typical deviation of about 25%


def at(i: int) -> datetime:
    return T0 + timedelta(seconds=30 * i)


def series(
    seed: int, levels: Iterable[tuple[int, float]], *, spikes_every: int = 0
) -> Iterator[float]:
    """Lognormal noise around piecewise constant levels: (samples, level in seconds) pieces.

    `spikes_every` > 0 puts one 5-10x spike every that many samples on average, never two
    within three samples (spikes come alone; a burst of slow rounds is a shift).
    """
    rng = random.Random(seed)
    last_spike = -10
    i = 0
    for count, level in levels:
        for _ in range(count):
            value = level * math.exp(rng.gauss(0.0, SPREAD))
            if spikes_every and i - last_spike > 3 and rng.random() < 1 / spikes_every:
                value *= rng.uniform(5.0, 10.0)
                last_spike = i
            yield value
            i += 1


def shifts(values: Iterable[float], detector: LatencyShiftDetector | None = None) -> list[Shift]:
    detector = detector or LatencyShiftDetector()
    found = []
    for i, value in enumerate(values):
        shift = detector.update(value, at(i))
        if shift is not None:
            found.append(shift)
    return found


@pytest.mark.parametrize("seed", range(10))
def test_20_to_60_ms_is_detected_within_a_few_samples(seed: int) -> None:
    found = shifts(series(seed, [(60, 0.020), (40, 0.060)], spikes_every=50))

    assert len(found) == 1
    (shift,) = found
    assert shift.direction is Direction.UP
    assert shift.detected_index - 60 + 1 <= 5  # samples at the new level until detection
    assert 55 <= shift.index <= 61  # the estimated change point: noise can start it early
    assert shift.started_at == at(shift.index)
    assert 0.040 < shift.after_s < 0.090  # a median of the few samples since the change
    assert 0.016 < shift.before_s < 0.025


@pytest.mark.parametrize(
    ("to_s", "within"),
    [(0.030, 60), (0.040, 10), (0.060, 5), (0.080, 5), (0.200, 4)],
)
def test_detection_delay_shrinks_with_the_size_of_the_shift(to_s: float, within: int) -> None:
    delays = []
    for seed in range(20):
        found = shifts(series(100 + seed, [(60, 0.020), (60, to_s)]))
        ups = [s for s in found if s.direction is Direction.UP and s.detected_index >= 60]
        assert ups, f"seed {seed}: 20 ms -> {to_s * 1000:g} ms not detected"
        assert all(s.detected_index >= 60 for s in found), "alarm before the change"
        delays.append(ups[0].detected_index - 60 + 1)
    assert max(delays) <= within, sorted(delays)


@pytest.mark.parametrize("seed", range(5))
def test_steady_noise_with_single_spikes_raises_no_alarm(seed: int) -> None:
    values = list(series(200 + seed, [(3000, 0.020)], spikes_every=40))
    assert sum(v > 0.09 for v in values) > 30  # the spikes are really there

    assert shifts(values) == []


def test_spikes_in_pairs_are_not_a_shift() -> None:
    # Two 8x samples in a row every 12 samples: the clip lets a pair climb the sum to half
    # the threshold at most, and it drains before the next pair.
    values = [0.160 if i % 12 in (5, 6) else 0.020 for i in range(1200)]
    assert shifts(values) == []


def test_a_rise_that_the_median_does_not_confirm_is_dropped() -> None:
    # 20 ms with every third sample at 150 ms: the sum climbs, but most of the run sits at the
    # old level, so the alarm is not confirmed.
    values = [0.020] * 20 + [0.150 if i % 3 == 0 else 0.020 for i in range(300)]
    assert shifts(values) == []


def test_a_shift_back_down_is_reported_and_the_level_recovers() -> None:
    found = shifts(series(7, [(60, 0.020), (60, 0.060), (60, 0.020)], spikes_every=50))

    assert [s.direction for s in found] == [Direction.UP, Direction.DOWN]
    up, down = found
    assert 55 <= up.index <= 61
    assert 115 <= down.index <= 121
    assert down.detected_index - 120 + 1 <= 5
    assert 0.016 < down.after_s < 0.032  # a median of the few samples since the change
    assert down.before_s == pytest.approx(up.after_s, rel=0.25)


def test_warm_up_learns_before_judging_and_reset_starts_over() -> None:
    detector = LatencyShiftDetector(ShiftParams(warmup=5))
    for i in range(4):
        assert detector.update(0.020 * (1 + i), at(i)) is None
        assert detector.baseline_s is None
    detector.update(0.020, at(4))
    assert detector.baseline_s == pytest.approx(0.040, rel=0.01)  # the median: spikes lose

    detector.reset()
    assert detector.baseline_s is None
    assert detector.update(5.0, at(5)) is None


def test_a_zero_duration_does_not_break_the_log() -> None:
    values = [0.0] * 20 + [0.020] * 20
    found = shifts(values)
    assert [s.direction for s in found] == [Direction.UP]
    assert found[0].before_s == pytest.approx(0.001, rel=0.01)  # ShiftParams.floor_s


def test_sub_millisecond_jitter_is_no_shift_but_leaving_it_is() -> None:
    """0.2 ms -> 0.6 ms is 3x, but below the floor (1 ms): no alarm; 0.2 ms -> 20 ms is one."""
    rng = random.Random(5)
    jitter = [0.0002 * math.exp(rng.gauss(0, 0.1)) for _ in range(20)]
    tripled = [0.0006 * math.exp(rng.gauss(0, 0.1)) for _ in range(30)]
    assert shifts(jitter + tripled) == []
    assert [s.direction for s in shifts(jitter + [0.020] * 20)] == [Direction.UP]


def test_thresholds_follow_the_noise() -> None:
    quiet, noisy = LatencyShiftDetector(), LatencyShiftDetector()
    rng = random.Random(3)
    for i in range(200):
        quiet.update(0.020 * math.exp(rng.gauss(0, 0.05)), at(i))
        noisy.update(0.020 * math.exp(rng.gauss(0, 0.6)), at(i))
    k_quiet, _, h_quiet = quiet.thresholds
    k_noisy, _, h_noisy = noisy.thresholds
    assert k_quiet == pytest.approx(math.log(1.5) / 2)  # min_shift decides on a quiet series
    assert k_noisy > 2 * k_quiet and h_noisy > h_quiet  # the noise decides on a noisy one


@pytest.mark.parametrize(
    "bad",
    [{"min_shift": 0.0}, {"persist": 0}, {"warmup": 2}, {"alpha": 1.0}, {"min_scale": 0.0}],
)
def test_params_are_checked(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        ShiftParams(**bad)  # type: ignore[arg-type]
