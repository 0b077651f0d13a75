"""Latency change-point benchmark: detection delay and false alarms (not a test).

Seeded synthetic series of one step's latency: lognormal noise around a level (``--noise`` is
the sigma of log(latency); 0.25 is a typical deviation of about 25%), with single 5-10x spikes
at rate ``--spikes``. For each shift 20 ms -> 30/40/60/80 ms, ``--series`` series run 50
samples at 20 ms then up to 200 at the new level; the delay is the number of samples at the new
level up to and including the one that confirmed the shift (1 = at once). Then
``--steady-series`` series of 10,000 samples at a steady 20 ms count false alarms. Prints the
delays (mean, p95, max), misses, how far the estimated start was from the true one, and false
alarms per 10,000 samples, with the default ``ShiftParams`` unless told.

    python benchmarks/changepoint.py [--series 300] [--steady-series 20] [--noise 0.25]
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import time
from datetime import UTC, datetime, timedelta

from egresswatch.controller.detection.latency import Direction, LatencyShiftDetector, ShiftParams

T0 = datetime(2024, 1, 1, tzinfo=UTC)
BEFORE = 50  # samples at the old level: past the warm-up, the baseline settled
AFTER = 200  # samples at the new level before a shift counts as missed
STEADY = 10_000
TIMES = [T0 + timedelta(seconds=30 * i) for i in range(max(STEADY, BEFORE + AFTER))]


def sample(rng: random.Random, level_s: float, noise: float, spikes: float) -> float:
    value = level_s * math.exp(rng.gauss(0.0, noise))
    if rng.random() < spikes:
        value *= rng.uniform(5.0, 10.0)
    return value


def delays(to_s: float, args: argparse.Namespace) -> str:
    found: list[int] = []
    offsets: list[int] = []
    misses = early = 0
    for seed in range(args.series):
        rng = random.Random(seed * 7919 + int(to_s * 1e6))
        detector = LatencyShiftDetector(args.params)
        for i in range(BEFORE + AFTER):
            level = 0.020 if i < BEFORE else to_s
            shift = detector.update(sample(rng, level, args.noise, args.spikes), TIMES[i])
            if shift is None:
                continue
            if i < BEFORE:
                early += 1
            elif shift.direction is Direction.UP:
                found.append(i - BEFORE + 1)
                offsets.append(abs(shift.index - BEFORE))
                break
        else:
            misses += 1
    found.sort()
    if not found:
        return f"20 -> {to_s * 1000:3.0f} ms  never detected"
    p95 = found[min(len(found) - 1, int(0.95 * len(found)))]
    return (
        f"20 -> {to_s * 1000:3.0f} ms  delay mean {statistics.mean(found):5.1f}  p95 {p95:3d}"
        f"  max {found[-1]:3d}  missed {misses}/{args.series}"
        f"  start off by {statistics.mean(offsets):.2f} on average"
        f"  (alarms before the shift: {early})"
    )


def false_alarms(args: argparse.Namespace) -> tuple[str, float]:
    ups = downs = 0
    began = time.perf_counter()
    for seed in range(args.steady_series):
        rng = random.Random(1_000_003 + seed)
        detector = LatencyShiftDetector(args.params)
        for i in range(STEADY):
            shift = detector.update(sample(rng, 0.020, args.noise, args.spikes), TIMES[i])
            if shift is not None:
                ups += shift.direction is Direction.UP
                downs += shift.direction is Direction.DOWN
    elapsed = time.perf_counter() - began
    total = args.steady_series * STEADY
    per = 10_000 / total
    line = (
        f"steady 20 ms, {total:,} samples: {ups * per:.2f} up + {downs * per:.2f} down"
        f" false alarms per 10,000 samples ({ups} + {downs})"
    )
    return line, elapsed / total * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=300, help="series per shift size")
    parser.add_argument("--steady-series", type=int, default=20, help="10,000-sample series")
    parser.add_argument("--noise", type=float, default=0.25, help="sigma of log(latency)")
    parser.add_argument("--spikes", type=float, default=0.01, help="rate of 5-10x spikes")
    parser.add_argument("--persist", type=int, default=ShiftParams.persist)
    parser.add_argument("--noise-h", type=float, default=ShiftParams.noise_h)
    args = parser.parse_args()
    params = args.params = ShiftParams(persist=args.persist, noise_h=args.noise_h)
    print(
        f"noise sigma {args.noise} (log), spikes {args.spikes:.1%} at 5-10x;"
        f" min_shift {math.exp(params.min_shift):.2f}x, persist {params.persist},"
        f" noise_h {params.noise_h}, warmup {params.warmup}"
    )
    for to_s in (0.030, 0.040, 0.060, 0.080):
        print(delays(to_s, args))
    line, per_update_us = false_alarms(args)
    print(line)
    print(f"cost: {per_update_us:.1f} µs per sample (including the noise generator)")


if __name__ == "__main__":
    main()
