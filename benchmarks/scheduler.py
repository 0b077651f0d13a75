"""Scheduler benchmark: thousands of rounds per interval in one process (not a test).

Schedules ``--jobs`` jobs every ``--interval`` seconds (default 5,000 per 10 s, i.e. 500 rounds
a second), each an ``asyncio.sleep`` of a random few milliseconds to half a second standing in
for a round. Halfway through, a config reload replaces every job. Prints lateness percentiles
(for the whole run and for the steady state, away from the start and the reload), the event
loop's own lag, rounds run, CPU used and the process RSS.

    python benchmarks/scheduler.py [--jobs 5000] [--interval 10] [--duration 40]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import random
import time
from collections.abc import Awaitable, Callable

from egresswatch.schedule import RoundJob, RoundScheduler

Timed = list[tuple[float, float]]  # (perf_counter when, value in seconds)
SETTLE_S = 2.0  # what counts as "near" the start or the reload


def _rss_mib() -> tuple[float, float]:
    """(current, peak) resident set size in MiB, from /proc (Linux)."""
    fields: dict[str, float] = {}
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                fields[name] = int(rest.split()[0]) / 1024
    return fields["VmRSS"], fields["VmHWM"]


def _summary(samples: Timed, origin: float, keep: Callable[[float], bool] = lambda _: True) -> str:
    kept = sorted((v, when) for when, v in samples if keep(when))
    if not kept:
        return "no samples"

    def pct(q: float) -> float:
        return kept[min(len(kept) - 1, int(q * len(kept)))][0] * 1000

    top, when = kept[-1]
    return (
        f"p50 {pct(0.5):7.2f}  p99 {pct(0.99):7.2f}  max {top * 1000:7.2f}"
        f" at {when - origin:4.1f} s  (n={len(kept)})"
    )


def _round(low: float, high: float) -> Callable[[], Awaitable[None]]:
    async def run() -> None:
        await asyncio.sleep(random.uniform(low, high))

    return run


async def _loop_lag(samples: Timed, stop: asyncio.Event) -> None:
    """How late a 50 ms timer fires: the event loop's own responsiveness."""
    while not stop.is_set():
        before = time.perf_counter()
        await asyncio.sleep(0.05)
        now = time.perf_counter()
        samples.append((now, now - before - 0.05))


class _GcPauses:
    """Garbage collector pauses, from gc.callbacks."""

    def __init__(self) -> None:
        self.pauses: Timed = []
        self._began = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._began = time.perf_counter()
        elif info["generation"] == 2:
            self.pauses.append((self._began, time.perf_counter() - self._began))


async def main(args: argparse.Namespace) -> None:
    lateness: Timed = []
    scheduler = RoundScheduler(
        max_concurrent=args.max_concurrent,
        on_lateness=lambda late: lateness.append((time.perf_counter(), late)),
    )

    def jobs(timeout: float) -> list[RoundJob]:
        run = _round(0.005, args.max_round)
        keys = (f"pod-{i % 50}/target-{i}" for i in range(args.jobs))
        return [RoundJob(key, args.interval, timeout, run) for key in keys]

    gc_pauses = _GcPauses()
    gc.callbacks.append(gc_pauses)
    scheduler.set_jobs(jobs(5.0))
    rss_before, _ = _rss_mib()
    cpu_before = time.process_time()
    lag: Timed = []
    stop = asyncio.Event()
    lag_task = asyncio.create_task(_loop_lag(lag, stop), name="bench-loop-lag")
    started = time.perf_counter()
    scheduler.start()
    if args.gc_freeze:
        while scheduler.pending:
            await asyncio.sleep(0.01)
        # What a service can do once its config is applied: move the long-lived objects (jobs,
        # triggers) out of the collector's generations so full collections stay short.
        gc.freeze()
    await asyncio.sleep(args.duration / 2 - (time.perf_counter() - started))
    # A config reload that changes every job (a new timeout): all are replaced, phases kept.
    reloaded = time.perf_counter()
    scheduler.set_jobs(jobs(6.0))
    while scheduler.pending:
        await asyncio.sleep(0.01)
    reload_s = time.perf_counter() - reloaded
    await asyncio.sleep(args.duration / 2 - reload_s)
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu_before
    rss, peak = _rss_mib()
    stop.set()
    await lag_task
    await scheduler.shutdown()
    gc.callbacks.remove(gc_pauses)

    def steady(when: float) -> bool:
        return not (started <= when < started + SETTLE_S or reloaded <= when < reloaded + SETTLE_S)

    stats = scheduler.stats
    expected = args.jobs * args.duration / args.interval
    print(f"jobs {args.jobs}, interval {args.interval:g} s, max_concurrent {args.max_concurrent}")
    print(
        f"run              {elapsed:.1f} s; reload at {reloaded - started:.1f} s,"
        f" all jobs replaced in {reload_s:.2f} s"
    )
    rate = stats.started / elapsed
    print(f"rounds started   {stats.started} (~{expected:.0f} expected), {rate:.0f}/s")
    print(f"rounds completed {stats.completed}, skipped {stats.skipped}, timeouts {stats.timeouts}")
    print(f"lateness ms      all     {_summary(lateness, started)}")
    print(f"lateness ms      steady  {_summary(lateness, started, steady)}")
    print(f"loop lag ms      all     {_summary(lag, started)}")
    print(f"loop lag ms      steady  {_summary(lag, started, steady)}")
    print(f"gen-2 gc ms      all     {_summary(gc_pauses.pauses, started)}")
    print(f"cpu              {cpu:.1f} s ({100 * cpu / elapsed:.0f}% of one core)")
    print(f"rss MiB          {rss:.1f} at the end, {peak:.1f} peak, {rss_before:.1f} before start")


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--interval", type=float, default=10.0)
    parser.add_argument("--duration", type=float, default=40.0)
    parser.add_argument("--max-concurrent", type=int, default=500)
    parser.add_argument(
        "--gc-freeze", action="store_true", help="gc.freeze() once the jobs are applied"
    )
    parser.add_argument("--max-round", type=float, default=0.5, help="longest stand-in round, s")
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(_parse()))
