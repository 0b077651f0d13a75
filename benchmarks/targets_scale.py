"""How one process's cost grows with its targets (not a test; numbers printed, not judged).

For each N of ``--targets``: `egresswatch run` as a process (SQLite, the whole path, as
`egresswatch bench` runs it) with N TCP targets (``address:`` on the loopback nginx; ``--kind
http`` for URLs) every ``--interval`` seconds (60 s: 5,000 targets are 83 rounds/s), a
``--warmup``, then a ``--window`` between two /metrics scrapes. Printed per N:

- scheduler lateness p50/p99/max: from the `egresswatch_scheduler_lateness_seconds` buckets
  over the window (1, 5, 10, 25, 50, 100 ms ...), so each is the upper bound of the bucket
  it falls in ("<=25ms"): the buckets tell "under 50 ms" apart, not 3 ms from 4 ms;
- rounds in the window (their `tcp_connect` results), shed, steps with status `fail`;
- CPU-ms per round (process utime + stime over the window / rounds) and CPU % of one core;
- the event loop's longest lag (`egresswatch_event_loop_lag_seconds`, the last 10 s): what the
  controller's sweeps (detection tick, staleness every 5 s, retention) hold the loop for at most;
- RSS right after the last request, and again SETTLE_S later (the C heap is trimmed a second
  after a status answer or a scrape: heaptrim.py); one /metrics scrape's size, wall time and
  CPU (the process's CPU during the scrape minus what the window's rate would have spent
  anyway); `/api/v1/status`'s latency (median of 3).

``--migrate-first`` migrates the database with `egresswatch db upgrade` before `run` starts
(as the chart's migrate Job does, and as every restart finds it): the process then never loads
Alembic (11 MiB); without it, `run --migrate` migrates the new database itself.

Idle CPU (what the process costs with N targets and no round due) is the same run with a long
interval: ``--interval 3600`` (rounds are then N/3600 a second). Needs root and Debian's
nginx-light and dnsmasq-base (the `egresswatch bench` lab). Hold the benchmark lock:

    flock /tmp/egresswatch-bench.lock python benchmarks/targets_scale.py --targets 100,1000,5000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from egresswatch.bench.lab import Lab, loopback_targets
from egresswatch.bench.ours import SCRAPE_TIMEOUT, STARTUP_LIMIT_S, counters, targets_config
from egresswatch.bench.procs import (
    BenchError,
    cpu_seconds,
    egresswatch_command,
    find_tools,
    free_port,
    load_average,
    process,
    rss_mib,
    wait_port,
)

BUCKET = "egresswatch_scheduler_lateness_seconds_bucket"
SETTLE_S = 3.0  # after the last request, before RSS is read again
LOOP_LAG = "egresswatch_event_loop_lag_seconds"
HEADER = (
    "| targets | interval s | rounds/s | lateness p50 / p99 / max | shed | failed steps"
    " | CPU-ms/round | CPU % | loop lag max ms | RSS MiB (then 3 s later) | scrape MB"
    " | scrape s / CPU-s"
    " | status ms |"
)


@dataclass(frozen=True)
class Page:
    """One /metrics scrape: its text, size, wall time and the process CPU it took."""

    text: str
    size: int
    wall_s: float
    cpu_s: float


def buckets(text: str) -> dict[float, float]:
    """The lateness histogram's cumulative counts by upper bound (+Inf as ``inf``)."""
    found: dict[float, float] = {}
    for line in text.splitlines():
        if line.startswith(BUCKET):
            bound = line.split('le="', 1)[1].split('"', 1)[0]
            found[float(bound)] = float(line.rsplit(" ", 1)[1])
    return found


def quantile_bound(before: dict[float, float], after: dict[float, float], q: float) -> str:
    """The upper bound of the bucket holding quantile `q` of what was observed between two
    scrapes, as text ("<=25ms"; ">60s" past the last bound; "-" when nothing was observed)."""
    delta = sorted((bound, after[bound] - before.get(bound, 0.0)) for bound in after)
    total = delta[-1][1] if delta else 0.0
    if total <= 0:
        return "-"
    for bound, count in delta:
        if count >= q * total:
            if bound == float("inf"):
                return f">{delta[-2][0]:g}s"
            return f"<={bound * 1000:g}ms"
    return "-"


def loop_lag_ms(text: str) -> float:
    """`egresswatch_event_loop_lag_seconds` in ms (0 when absent)."""
    for line in text.splitlines():
        if line.startswith(LOOP_LAG + " "):
            return float(line.rsplit(" ", 1)[1]) * 1000
    return 0.0


async def scrape(session: aiohttp.ClientSession, port: int, pid: int) -> Page:
    """One full /metrics scrape, timed on the wall and in the process's CPU."""
    cpu, start = cpu_seconds(pid), time.monotonic()
    async with session.get(f"http://127.0.0.1:{port}/metrics") as answer:
        answer.raise_for_status()
        body = await answer.read()
    wall, cpu = time.monotonic() - start, cpu_seconds(pid) - cpu
    return Page(body.decode(), len(body), wall, cpu)


async def status_ms(session: aiohttp.ClientSession, port: int, repeat: int = 3) -> float:
    """The median wall time of `repeat` GET /api/v1/status, in ms."""
    times = []
    for _ in range(repeat):
        start = time.monotonic()
        async with session.get(f"http://127.0.0.1:{port}/api/v1/status") as answer:
            answer.raise_for_status()
            await answer.read()
        times.append((time.monotonic() - start) * 1000)
    return statistics.median(times)


async def measure(lab: Lab, args: argparse.Namespace, count: int) -> str:
    """One process with `count` targets: started, warmed up, measured over the window, stopped
    by its PID; the table row."""
    directory = Path(tempfile.mkdtemp(dir=lab.directory, prefix=f"scale-{count}-"))
    port = free_port()
    config = targets_config(
        lab, args.kind, count, args.interval, directory, port, args.max_concurrent
    )
    if args.detail is not None:
        with config.open("a") as more:
            more.write(f"metrics: {{detail: {args.detail}}}\n")
    argv = [*egresswatch_command(), "--log-level", "warning", "run"]
    log = directory / "egresswatch.log"
    if args.migrate_first:  # as the chart's migrate Job does, or as any restart finds it
        database = f"sqlite+aiosqlite:///{directory}/egresswatch.db"
        upgrade = [*egresswatch_command(), "--log-level", "warning", "db", "upgrade"]
        await asyncio.to_thread(subprocess.run, [*upgrade, "--db", database], check=True)
    else:
        argv.append("--migrate")
    with process([*argv, "--config", str(config)], log) as proc:
        await asyncio.to_thread(wait_port, port, proc, "egresswatch run", log, STARTUP_LIMIT_S)
        await asyncio.sleep(args.warmup)
        async with aiohttp.ClientSession(timeout=SCRAPE_TIMEOUT) as session:
            first = await scrape(session, port, proc.pid)
            cpu = cpu_seconds(proc.pid)
            await asyncio.sleep(args.window)
            cpu = cpu_seconds(proc.pid) - cpu
            last = await scrape(session, port, proc.pid)
            status = await status_ms(session, port)
        rss = rss_mib(proc.pid)
        # What stays: the C heap is trimmed a second after a status answer or a scrape.
        await asyncio.sleep(SETTLE_S)
        settled = rss_mib(proc.pid)
    return _row(count, args, first, last, cpu, (rss, settled), status)


def _row(
    count: int,
    args: argparse.Namespace,
    first: Page,
    last: Page,
    cpu_s: float,
    rss: tuple[float, float],
    status: float,
) -> str:
    before, after = counters(first.text), counters(last.text)
    rounds = after["rounds"] - before["rounds"]
    lateness = buckets(first.text), buckets(last.text)
    late = " / ".join(quantile_bound(*lateness, q) for q in (0.5, 0.99, 1.0))
    per_round = cpu_s / rounds * 1000 if rounds else float("nan")
    # The scrape's own CPU: what it took, less what rounds would have cost in that time.
    scrape_cpu = max(last.cpu_s - cpu_s / args.window * last.wall_s, 0.0)
    cells = [
        f"{count:,}",
        f"{args.interval}",
        f"{rounds / args.window:.1f}",
        late,
        f"{after['egresswatch_rounds_shed_total'] - before['egresswatch_rounds_shed_total']:.0f}",
        f"{after['failed'] - before['failed']:.0f}",
        f"{per_round:.2f}",
        f"{cpu_s / args.window * 100:.1f}",
        f"{loop_lag_ms(last.text):.0f}",
        f"{rss[0]:.0f} / {rss[1]:.0f}",
        f"{last.size / 1e6:.2f}",
        f"{last.wall_s:.2f} / {scrape_cpu:.2f}",
        f"{status:.0f}",
    ]
    return "| " + " | ".join(cells) + " |"


def _counts(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        problem = f"--targets: {text!r} is not a list of whole numbers"
        raise argparse.ArgumentTypeError(problem) from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError("--targets: each count must be at least 1")
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--targets", type=_counts, default=[100, 1000, 5000, 10000])
    parser.add_argument("--interval", type=int, default=60, help="seconds between rounds")
    parser.add_argument("--kind", choices=("tcp", "http"), default="tcp")
    parser.add_argument("--warmup", type=float, default=15.0, help="seconds before the window")
    parser.add_argument("--window", type=float, default=30.0, help="seconds measured")
    parser.add_argument("--max-concurrent", type=int, default=64)
    parser.add_argument("--detail", choices=("source", "source_kind"), help="metrics.detail")
    parser.add_argument(
        "--migrate-first",
        action="store_true",
        help="migrate with `egresswatch db upgrade` first, then `run` without --migrate: the"
        " process finds its schema current and loads no Alembic (a restart, the chart's Job)",
    )
    args = parser.parse_args()
    if args.interval < 1:
        parser.error("--interval: at least 1 (egresswatch's shortest)")
    try:
        tools = find_tools(os.environ.get("PATH", ""))
    except Exception as error:
        parser.error(str(error))
    print(
        f"{args.kind.upper()} targets, warm-up {args.warmup:g} s, window {args.window:g} s,"
        f" {os.cpu_count()} CPUs; load average at start {load_average()}",
        flush=True,
    )
    print(HEADER, flush=True)
    with (
        tempfile.TemporaryDirectory(prefix="egresswatch-scale-") as name,
        loopback_targets(Path(name), tools) as lab,
    ):
        for count in args.targets:
            try:
                print(asyncio.run(measure(lab, args, count)), flush=True)
            except BenchError as error:
                raise SystemExit(f"{count} targets: {error}") from None
    print(f"load average at end {load_average()}", flush=True)


if __name__ == "__main__":
    main()
