"""One measured `egresswatch run` process: the whole path, at a fixed rate of rounds.

The process gets ``rate x INTERVAL_S`` identical targets at a ``INTERVAL_S`` interval, SQLite in
a directory of its own, DNS through the lab's resolv.conf and dnsmasq: schedule, probe,
classify, metrics, store and judge all run, as in production. Its own /metrics, read at both
ends of the window with `name[]=` filters (only these counters are rendered), say what it did:
the rounds run (each round records every step, skipped ones too, so its `tcp_connect` results
count rounds; the scheduler's lateness count would also count the controller's own tick, 4 a
second), the rounds shed, the steps with status `fail`, and the scheduler's mean lateness.
"""

from __future__ import annotations

import asyncio
import tempfile
from contextlib import AbstractAsyncContextManager, nullcontext
from pathlib import Path

import aiohttp

from egresswatch.bench.lab import Lab
from egresswatch.bench.procs import (
    BenchError,
    cpu_seconds,
    egresswatch_command,
    free_port,
    log_tail,
    process,
    rss_mib,
    wait_port,
)
from egresswatch.bench.profile import Profiler
from egresswatch.bench.report import Sample

INTERVAL_S = 2  # the shortest interval egresswatch allows is 1 s; 2 s keeps targets = 2 x rate
STARTUP_LIMIT_S = 60  # migrations and the first import on a loaded machine
STARTED = "egresswatch_scheduler_lateness_seconds_count"  # every job that got its slot
LATENESS = "egresswatch_scheduler_lateness_seconds_sum"
SHED = "egresswatch_rounds_shed_total"
RESULTS = "egresswatch_step_results_total"
ROUND_STEP = 'step="tcp_connect"'  # in every round's result, run or skipped: one per round
# Only these are rendered (`name[]=`): the whole page costs egresswatch about 0.16 CPU-s per
# scrape at 400 targets, which would land in the per-round CPU measured.
SCRAPED = [("name[]", name) for name in (STARTED, LATENESS, SHED, RESULTS)]
SCRAPE_TIMEOUT = aiohttp.ClientTimeout(total=30)  # a saturated process answers late, not never


def egresswatch_config(
    lab: Lab, kind: str, rate: int, directory: Path, port: int, max_concurrent: int
) -> Path:
    """The config of a run at `rate` rounds/s of `kind`, written into `directory`."""
    return targets_config(lab, kind, rate * INTERVAL_S, INTERVAL_S, directory, port, max_concurrent)


def targets_config(
    lab: Lab,
    kind: str,
    count: int,
    interval_s: int,
    directory: Path,
    port: int,
    max_concurrent: int,
) -> Path:
    """The config of a run with `count` targets of `kind` every `interval_s` seconds, written
    into `directory` (each round's budget is the interval, at most 10 s)."""
    key = "address" if kind == "tcp" else "url"
    timeout = min(interval_s, 10)
    lines = [
        "source: {name: bench, kind: node}",
        f"listen: 127.0.0.1:{port}",
        f"database: sqlite+aiosqlite:///{directory}/egresswatch.db",
        f"dns: {{resolv_conf: {lab.resolv_conf}, upstream: '{lab.dns_address}'}}",
        "proxy_from_environment: false",
        f"max_concurrent_rounds: {max_concurrent}",
        f"probes: {{interval: {interval_s}s, timeout: {timeout}s, step_timeout: 1s,"
        f" trace_every: 7d, ca_file: {lab.ca_file}}}",
        "targets:",
    ]
    target = lab.target(kind)
    lines += [f"  - {{name: t{i:05d}, {key}: '{target}'}}" for i in range(count)]
    config = directory / "egresswatch.yaml"
    config.write_text("\n".join(lines) + "\n")
    return config


def counters(text: str) -> dict[str, float]:
    """What a window needs from a /metrics page: each counter summed over its labels, the
    rounds recorded under ``"rounds"`` (their `tcp_connect` results, whatever the status) and
    the steps with status `fail` under ``"failed"``."""
    sums = dict.fromkeys((STARTED, LATENESS, SHED, "rounds", "failed"), 0.0)
    for line in text.splitlines():
        if line.startswith("#") or not line:
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        value = float(line.rsplit(" ", 1)[1])
        if name in sums:
            sums[name] += value
        elif name == RESULTS:
            sums["rounds"] += value if ROUND_STEP in line else 0.0
            sums["failed"] += value if 'status="fail"' in line else 0.0
    return sums


async def _scrape(session: aiohttp.ClientSession, port: int, log: Path) -> dict[str, float]:
    """The counters of egresswatch's /metrics, scraped filtered (SCRAPED); BenchError (with
    its log) when it cannot say."""
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        async with session.get(url, params=SCRAPED) as answer:
            answer.raise_for_status()
            return counters(await answer.text())
    except (aiohttp.ClientError, TimeoutError) as exc:
        problem = f"egresswatch run's /metrics: {exc!r}; its log:\n{log_tail(log)}"
        raise BenchError(problem) from None


def sample_of(
    before: dict[str, float], after: dict[str, float], cpu_s: float, rss: float
) -> Sample:
    """The window between two scrapes, as a Sample."""
    delta = {name: after[name] - before[name] for name in before}
    lateness_ms = delta[LATENESS] / max(delta[STARTED], 1) * 1000
    rounds, shed, failed = int(delta["rounds"]), int(delta[SHED]), int(delta["failed"])
    return Sample(rounds, cpu_s, rss, failed, shed, lateness_ms)


async def measure_egresswatch(
    lab: Lab,
    kind: str,
    rate: int,
    *,
    warmup_s: float,
    window_s: float,
    max_concurrent: int,
    profile: tuple[Profiler, Path] | None = None,
) -> Sample:
    """Start `egresswatch run` for `kind` at `rate`, let it warm up, measure one window (under
    py-spy when `profile` names a profiler and its output), stop it by its PID."""
    directory = Path(tempfile.mkdtemp(dir=lab.directory, prefix=f"egresswatch-{kind}-"))
    port = free_port()
    config = egresswatch_config(lab, kind, rate, directory, port, max_concurrent)
    argv = [*egresswatch_command(), "--log-level", "warning", "run", "--migrate"]
    argv += ["--config", str(config)]
    log = directory / "egresswatch.log"
    with process(argv, log) as proc:
        await asyncio.to_thread(wait_port, port, proc, "egresswatch run", log, STARTUP_LIMIT_S)
        await asyncio.sleep(warmup_s)
        async with aiohttp.ClientSession(timeout=SCRAPE_TIMEOUT) as session:
            recording: AbstractAsyncContextManager[None] = nullcontext()
            if profile is not None:
                profiler, output = profile
                recording = profiler.record(proc.pid, window_s, output)
            before, cpu = await _scrape(session, port, log), cpu_seconds(proc.pid)
            async with recording:
                await asyncio.sleep(window_s)
                cpu, rss = cpu_seconds(proc.pid) - cpu, rss_mib(proc.pid)
                after = await _scrape(session, port, log)
    return sample_of(before, after, cpu, rss)
