"""The staleness sweep's cost as targets grow (not a test).

The controller sweeps every 5 s for (source, target) pairs that went silent
(`Pipeline.tick` → `Detector.stale`), asking each target's interval and detection settings of
the config as the pipeline does. This builds a config of N targets, feeds one ok round per
target from one source, and times the sweep (no pair is stale yet: the steady state).

    python benchmarks/staleness.py [--targets 1000 5000 10000]
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime, timedelta

from egresswatch.controller.detection.hysteresis import Detector
from egresswatch.model import RoundResult, Status, Step, StepResult
from egresswatch.settings import DetectionSettings, Settings, settings_from_dict

T0 = datetime(2026, 12, 4, tzinfo=UTC)


def _settings(count: int) -> Settings:
    targets = [{"name": f"t{i}", "address": f"127.0.0.1:{1024 + i % 60000}"} for i in range(count)]
    return settings_from_dict({"targets": targets}, agent_token=False)


def _sweep_ms(settings: Settings, repeat: int) -> float:
    def policy(target: str) -> DetectionSettings:  # as Pipeline._policy
        found = settings.target(target)
        return settings.detection_for(found) if found is not None else settings.detection

    def interval_of(target: str) -> float:  # as Pipeline._interval_of
        found = settings.target(target)
        return settings.timing(found)[0] if found is not None else settings.probes.interval

    detector = Detector(policy)
    step = StepResult(Step.TCP_CONNECT, Status.OK, duration_s=0.001)
    for target in settings.targets:
        detector.observe(RoundResult(target.name, "node-1", T0, (step,)), now=T0)
    now = T0 + timedelta(seconds=5)
    begun = time.perf_counter()
    for _ in range(repeat):
        assert detector.stale(now, interval_of) == []
    return (time.perf_counter() - begun) / repeat * 1000


def main(counts: list[int]) -> None:
    print("targets  sweep ms  per target µs")
    for count in counts:
        settings = _settings(count)
        took = _sweep_ms(settings, repeat=3)
        print(f"{count:7d}  {took:8.1f}  {took * 1000 / count:13.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", type=int, nargs="+", default=[1000, 5000, 10000])
    main(parser.parse_args().targets)
