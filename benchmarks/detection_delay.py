"""Detection delay: from a fault to its incident in the HTTP API, and from the repair to its end.

    python benchmarks/detection_delay.py [--trials 5] [--interval 1] [--fail-after 3]
                                         [--recover-after 2] [--max-seconds 300]

Runs the real service (`egresswatch.wiring.Service`, in this process, SQLite in a temporary
directory, the API on 127.0.0.1) against the demo's loopback endpoints
(`egresswatch.demo.endpoints`: a dnslib DNS server for `demo.test` and HTTPS endpoints with a CA
made at start; nothing leaves 127.0.0.1), one round of each target every `--interval` seconds.
For each fault (shop's name answers NXDOMAIN; shop answers HTTP 503), `--trials` times: wait
until shop is healthy, wait a random fraction of an interval (so the fault lands at every phase
of the round schedule), inject it, poll `GET /api/v1/incidents?open=true` every 100 ms until
the incident shows, wait a random fraction of an interval again, repair, and poll
`GET /api/v1/incidents/{id}` every 100 ms until it shows its end.

Delays are from the injection (or repair) to the poll that saw it, in seconds and in rounds
(delay / interval). The target is the hysteresis plus one write of the service's detection
results: `fail_after` rounds + `CONTROLLER_TICK_S`. The breakdown uses the incident's own times:
the wait for the first failed round (`started_at` - injection), the hysteresis (`detected_at` -
`started_at`) and the write and poll (seen - `detected_at`). Every wait is bounded. Not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from egresswatch.demo.endpoints import DemoEndpoints
from egresswatch.demo.files import SHOP_TARGET, write_files
from egresswatch.model import RoundResult
from egresswatch.settings import load_settings
from egresswatch.wiring import CONTROLLER_TICK_S, Service

POLL_S = 0.1
FAULTS = ("nxdomain", "http_503")


@dataclass(frozen=True)
class Trial:
    fault: str
    delay_s: float  # injection -> the open incident seen in the API
    to_first_failure_s: float  # injection -> started_at (the first failed round)
    hysteresis_s: float  # started_at -> detected_at
    written_s: float  # detected_at -> seen in the API
    recovery_s: float  # repair -> the incident's end seen in the API
    to_first_good_s: float  # repair -> ended_at (the first good round)
    first_failing_step: str | None


class TrialError(Exception):
    pass


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


class Bench:
    def __init__(self, args: argparse.Namespace, directory: Path) -> None:
        self.args = args
        self.directory = directory
        self.rng = random.Random(args.seed)
        self.shop_rounds: list[RoundResult] = []
        self.deadline = time.monotonic() + args.max_seconds

    def on_round(self, result: RoundResult) -> None:
        if result.target == SHOP_TARGET:
            self.shop_rounds.append(result)

    def bound(self, seconds: float) -> float:
        """`seconds` from now, or the whole run's deadline if that comes first."""
        return float(min(time.monotonic() + seconds, self.deadline))

    async def until(
        self, what: str, check: Callable[[], Any], within_s: float, every_s: float = POLL_S
    ) -> Any:
        """Poll `check` (a coroutine function) every `every_s` until it returns something."""
        end = self.bound(within_s)
        while time.monotonic() < end:
            found = await check()
            if found:
                return found
            await asyncio.sleep(every_s)
        raise TrialError(f"{what}: not within {within_s:.0f} s")

    async def run(self) -> list[Trial]:
        args = self.args
        endpoints = await DemoEndpoints.start()
        try:
            config = write_files(
                self.directory, endpoints, listen="127.0.0.1:0", interval_s=args.interval
            )
            detection = {"fail_after": args.fail_after, "recover_after": args.recover_after}
            settings = load_settings(config, {"detection": detection})
            service = Service(settings, migrate=True, on_round=self.on_round, watch_config=False)
            try:
                await service.start()
                assert service.listening is not None
                host, port = service.listening
                async with aiohttp.ClientSession(base_url=f"http://{host}:{port}") as http:
                    return await self.trials(http, endpoints)
            finally:
                await service.stop()
        finally:
            await endpoints.stop()

    async def trials(self, http: aiohttp.ClientSession, endpoints: DemoEndpoints) -> list[Trial]:
        args = self.args

        async def healthy() -> bool:
            last = self.shop_rounds[-2:]
            return len(last) == 2 and all(r.first_failing_step is None for r in last)

        await self.until("two good rounds of shop at start", healthy, 30 * args.interval + 10)
        results = []
        for fault in FAULTS:
            for number in range(args.trials):
                trial = await self.trial(http, endpoints, fault)
                results.append(trial)
                print(
                    f"  {fault:<9} #{number + 1}: seen after {trial.delay_s:5.2f} s"
                    f" ({trial.delay_s / args.interval:4.2f} rounds), ended after"
                    f" {trial.recovery_s:5.2f} s; first failing step {trial.first_failing_step}",
                    flush=True,
                )
        return results

    async def trial(
        self, http: aiohttp.ClientSession, endpoints: DemoEndpoints, fault: str
    ) -> Trial:
        args = self.args
        interval = args.interval
        settle_s = (max(args.fail_after, args.recover_after) + 5) * interval + 10

        async def none_open() -> bool:
            return not await self.open_incidents(http)

        await self.until("no open incident before the fault", none_open, settle_s)
        await asyncio.sleep(self.rng.uniform(0, interval))  # any phase of the round schedule

        injected_at, injected = time.monotonic(), datetime.now(UTC)
        if fault == "nxdomain":
            endpoints.break_dns()
        else:
            endpoints.break_http(503)
        try:
            incidents = await self.until(
                f"{fault}: an open incident", lambda: self.open_incidents(http), settle_s
            )
            seen_at, seen = time.monotonic(), datetime.now(UTC)
            await asyncio.sleep(self.rng.uniform(0, interval))  # the repair at any phase too
        finally:
            endpoints.repair_dns()
            endpoints.repair_http()
        repaired_at, repaired = time.monotonic(), datetime.now(UTC)
        incident = incidents[0]

        async def ended() -> dict[str, Any] | None:
            async with http.get(f"/api/v1/incidents/{incident['id']}") as response:
                document: dict[str, Any] = await response.json()
            return document if document.get("ended_at") else None

        closed = await self.until(f"{fault}: the incident's end", ended, settle_s)
        ended_at = time.monotonic()
        started, detected = parse_time(incident["started_at"]), parse_time(incident["detected_at"])
        return Trial(
            fault=fault,
            delay_s=seen_at - injected_at,
            to_first_failure_s=(started - injected).total_seconds(),
            hysteresis_s=(detected - started).total_seconds(),
            written_s=(seen - detected).total_seconds(),
            recovery_s=ended_at - repaired_at,
            to_first_good_s=(parse_time(closed["ended_at"]) - repaired).total_seconds(),
            first_failing_step=incident["first_failing_step"],
        )

    @staticmethod
    async def open_incidents(http: aiohttp.ClientSession) -> list[dict[str, Any]]:
        async with http.get(
            "/api/v1/incidents", params={"open": "true", "target": SHOP_TARGET}
        ) as response:
            if response.status != 200:
                raise TrialError(f"GET /api/v1/incidents: HTTP {response.status}")
            items: list[dict[str, Any]] = (await response.json())["items"]
        return items


def summary(trials: Sequence[Trial], args: argparse.Namespace) -> bool:
    interval = args.interval
    target_s = args.fail_after * interval + CONTROLLER_TICK_S
    print(
        f"\ninterval {interval:g} s, fail_after {args.fail_after}, recover_after"
        f" {args.recover_after}; target: fail_after rounds + one write"
        f" ({CONTROLLER_TICK_S:g} s) = {target_s:g} s ({target_s / interval:g} rounds)"
    )
    header = (
        f"{'fault':<10}{'n':>3}{'delay mean/max s':>19}{'rounds mean/max':>18}"
        f"{'to 1st fail':>13}{'hysteresis':>12}{'write+poll':>12}"
        f"{'recovery mean/max s':>22}{'rounds':>13}{'to 1st good':>13}"
    )
    print(header)
    print("-" * len(header))
    met = True
    for fault in FAULTS:
        rows = [t for t in trials if t.fault == fault]
        if not rows:
            continue
        delays = [t.delay_s for t in rows]
        recoveries = [t.recovery_s for t in rows]
        met = met and max(delays) <= target_s
        print(
            f"{fault:<10}{len(rows):>3}"
            f"{statistics.mean(delays):>10.2f} /{max(delays):>6.2f}"
            f"{statistics.mean(delays) / interval:>10.2f} /{max(delays) / interval:>5.2f}"
            f"{statistics.mean(t.to_first_failure_s for t in rows):>13.2f}"
            f"{statistics.mean(t.hysteresis_s for t in rows):>12.2f}"
            f"{statistics.mean(t.written_s for t in rows):>12.2f}"
            f"{statistics.mean(recoveries):>13.2f} /{max(recoveries):>6.2f}"
            f"{statistics.mean(recoveries) / interval:>7.2f} /{max(recoveries) / interval:>4.2f}"
            f"{statistics.mean(t.to_first_good_s for t in rows):>13.2f}"
        )
    everything = [t.delay_s for t in trials]
    print(
        f"\nall faults: delay mean {statistics.mean(everything):.2f} s, max"
        f" {max(everything):.2f} s; target {target_s:g} s: {'met' if met else 'MISSED'}"
    )
    return met


async def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--trials", type=int, default=5, help="injections per fault")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between rounds")
    parser.add_argument("--fail-after", type=int, default=3)
    parser.add_argument("--recover-after", type=int, default=2)
    parser.add_argument("--max-seconds", type=float, default=300.0, help="bound on the run")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--verbose", action="store_true", help="show the service's log")
    args = parser.parse_args(argv)
    if not args.verbose:
        logging.getLogger("egresswatch").setLevel(logging.ERROR)
    print(
        f"{args.trials} x {', '.join(FAULTS)}; the service in this process, SQLite in a"
        " temporary directory, endpoints on 127.0.0.1",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="egresswatch-delay-") as directory:
        try:
            trials = await Bench(args, Path(directory)).run()
        except TrialError as exc:
            print(f"detection_delay: {exc}", file=sys.stderr)
            return 1
    return 0 if summary(trials, args) else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
