"""Overload benchmark: the sustainable round rate of one process, and its behaviour at 2x.

Runs the agent's path (RoundScheduler -> RoundRunner -> checklist -> classification, the
rounds counted by the sink; no storage, no detection) with N TCP targets on a 1 s interval
against a loopback server in another process, for N doubling from ``--start``. The
sustainable rate is the last N at which nothing was shed. Then it runs 2x that rate and prints
what happened: rounds run, shed, steps `fail` (must be 0: the endpoint is healthy) and
`error`/`prober_overloaded`, the event loop's worst lag and the CPU used.

    python benchmarks/overload.py [--start 100] [--max 6400] [--seconds 6]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from tempfile import TemporaryDirectory

from egresswatch.agent.config_file import follow_config
from egresswatch.agent.runner import RoundRunner
from egresswatch.looplag import LoopLag
from egresswatch.model import RoundResult, Status
from egresswatch.schedule import RoundScheduler
from egresswatch.settings import Settings

# Accepts and closes, for ever, until killed (by PID, at the end).
SERVER = """
import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 0))
s.listen(4096)
print(s.getsockname()[1], flush=True)
while True:
    c, _ = s.accept()
    c.close()
"""
SHED_TOLERANCE = 0.01  # shed at most 1 % of the due rounds to count as sustained


@dataclass
class Level:
    """What one run at `targets` rounds a second did."""

    targets: int
    seconds: float
    statuses: Counter[tuple[str, str]] = field(default_factory=Counter)
    rounds: int = 0
    shed: int = 0
    skipped: int = 0  # due while the target's previous round still ran
    lag_max_s: float = 0.0
    cpu_s: float = 0.0

    @property
    def sustained(self) -> bool:
        return self.shed <= SHED_TOLERANCE * self.targets * self.seconds

    def line(self) -> str:
        failed = sum(n for (status, _), n in self.statuses.items() if status == "fail")
        overloaded = self.statuses[("error", "prober_overloaded")]
        cpu_ms = 1000 * self.cpu_s / self.rounds if self.rounds else float("nan")
        return (
            f"{self.targets:6d}/s  ran {self.rounds / self.seconds:7.1f}/s"
            f"  shed {self.shed / self.seconds:7.1f}/s"
            f"  skipped {self.skipped / self.seconds:6.1f}/s  fail {failed:5d}"
            f"  prober_overloaded {overloaded:5d}  loop lag max {self.lag_max_s * 1000:7.1f} ms"
            f"  CPU {cpu_ms:5.2f} ms/round"
        )


def _settings(port: int, targets: int, folder: Path) -> Settings:
    resolv = folder / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.1#1\n")
    return Settings.model_validate(
        {
            "source": {"name": "bench", "kind": "node"},
            "database": f"sqlite+aiosqlite:///{folder}/unused.db",
            "dns": {"resolv_conf": str(resolv)},
            "proxy_from_environment": False,
            "probes": {
                "interval": "1s",
                "timeout": "1s",
                "step_timeout": "500ms",
                "trace_every": "1d",
                "trace_max_hops": 2,
                "trace_hop_timeout": "100ms",
            },
            "targets": [{"name": f"t{i}", "address": f"127.0.0.1:{port}"} for i in range(targets)],
        }
    )


async def run_level(port: int, targets: int, seconds: float, folder: Path) -> Level:
    level = Level(targets, seconds)

    def sink(result: RoundResult) -> None:
        level.rounds += 1
        for step in result.steps:
            if step.status is not Status.SKIPPED:
                reason = step.reason.value if step.reason else "none"
                level.statuses[(step.status.value, reason)] += 1

    def shed(_key: str) -> None:
        level.shed += 1

    def skipped(_key: str) -> None:
        level.skipped += 1

    lag = LoopLag()
    lag.start()
    runner = RoundRunner(source="bench", sink=sink, stalls=lag.stalled)
    follow_config(runner, _settings(port, targets, folder))
    slots = Settings.model_fields["max_concurrent_rounds"].default  # what a process runs with
    scheduler = RoundScheduler(max_concurrent=slots, on_shed=shed, on_skipped=skipped)
    scheduler.set_jobs(runner.jobs())
    scheduler.start()
    while scheduler.pending:  # bounded: the jobs go on their timers in slices
        await asyncio.sleep(0.05)
    await asyncio.sleep(1.5)  # the first second after the jobs go on is the startup burst
    level.rounds, level.shed, level.skipped, level.statuses = 0, 0, 0, Counter()
    cpu = time.process_time()
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        await asyncio.sleep(0.5)
        level.lag_max_s = max(level.lag_max_s, lag.recent_max(0.5))
    level.cpu_s = time.process_time() - cpu
    await scheduler.shutdown()
    await lag.stop()
    return level


async def main(args: argparse.Namespace, port: int) -> None:
    with TemporaryDirectory() as folder:
        print(f"TCP targets at 1 s, {args.seconds:g} s per level, one process")
        sustained: Level | None = None
        targets = args.start
        while targets <= args.max:
            level = await run_level(port, targets, args.seconds, Path(folder))
            print(level.line(), flush=True)
            if not level.sustained:
                break
            sustained = level
            targets *= 2
        if sustained is None:
            print("sustainable: none of the levels (lower --start)")
            return
        print(f"sustainable: {sustained.targets} rounds/s")
        double = await run_level(port, 2 * sustained.targets, args.seconds, Path(folder))
        print(f"at 2x: {double.line()}")


def run(args: argparse.Namespace) -> None:
    """The loopback server in its own process (killed by PID at the end), then the levels."""
    # The scheduler warns once per skipped run: print numbers only.
    logging.getLogger("egresswatch.schedule").setLevel(logging.ERROR)
    server = subprocess.Popen([sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        asyncio.run(main(args, int(server.stdout.readline())))
    finally:
        server.kill()
        server.wait(5)


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--start", type=int, default=100, help="first rate, rounds/s")
    parser.add_argument("--max", type=int, default=6400, help="stop doubling past this")
    parser.add_argument("--seconds", type=float, default=6.0, help="measured per level")
    return parser.parse_args()


if __name__ == "__main__":
    run(_parse())
