"""`egresswatch bench`: every (round kind, rate), N times, egresswatch and blackbox_exporter
alternating, on the same loopback targets; the table (or JSON) of medians at the end.

One process is measured at a time, so the two never compete for the CPU; alternating them N
times spreads a change in the machine's load over both sides. The load average is printed at
the start and at the end: on a shared machine, CPU per round is only comparable with it.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
from pathlib import Path
from typing import Any, TextIO

from egresswatch.bench.blackbox import measure_blackbox
from egresswatch.bench.flags import BenchOptions
from egresswatch.bench.lab import Lab, loopback_targets
from egresswatch.bench.ours import measure_egresswatch
from egresswatch.bench.procs import load_average
from egresswatch.bench.profile import Profiler
from egresswatch.bench.report import HEADER, Row, Run, load_text


def run_bench(options: BenchOptions, out: TextIO, progress: TextIO) -> list[Row]:
    """Measure every (kind, rate) of `options`; the table (or with `json`, one JSON document)
    goes to `out`, a line a run to `progress`. Raises BenchError when a process fails."""
    start = load_average()
    if not options.json:
        print(_preamble(options), file=out, flush=True)
        print(f"load average at start: {load_text(start)}", file=out)
        print(HEADER, file=out, flush=True)
    with (
        tempfile.TemporaryDirectory(prefix="egresswatch-bench-") as name,
        loopback_targets(Path(name), options.tools) as lab,
    ):
        rows = asyncio.run(_measure_all(lab, options, out, progress))
    end = load_average()
    if options.json:
        json.dump(_document(options, rows, start, end), out, indent=2)
        print(file=out)
    else:
        print(f"load average at end: {load_text(end)}", file=out, flush=True)
    return rows


async def _measure_all(lab: Lab, options: BenchOptions, out: TextIO, progress: TextIO) -> list[Row]:
    profiler = None
    if options.profile_dir is not None and options.py_spy is not None:
        profiler = Profiler(options.py_spy, options.profile_dir)
    rows = []
    for kind in options.kinds:
        for rate in options.rates:
            runs = []
            for number in range(1, options.repeat + 1):
                profile = None
                if profiler is not None and number == 1:
                    profile = (profiler, profiler.output(kind, rate))
                run = await _one_run(lab, options, kind, rate, profile)
                runs.append(run)
                print(_progress(kind, rate, number, options.repeat, run), file=progress, flush=True)
            rows.append(Row(kind, rate, tuple(runs)))
            if not options.json:
                print(rows[-1].line(), file=out, flush=True)
    return rows


async def _one_run(
    lab: Lab,
    options: BenchOptions,
    kind: str,
    rate: int,
    profile: tuple[Profiler, Path] | None,
) -> Run:
    """egresswatch, then blackbox_exporter, at `rate` rounds of `kind` a second."""
    ours = await measure_egresswatch(
        lab,
        kind,
        rate,
        warmup_s=options.warmup_s,
        window_s=options.window_s,
        max_concurrent=options.max_concurrent,
        profile=profile,
    )
    theirs = await measure_blackbox(
        lab, options.tools, kind, rate, warmup_s=options.warmup_s, window_s=options.window_s
    )
    return Run(ours, theirs)


def _preamble(options: BenchOptions) -> str:
    kinds, rates = ", ".join(options.kinds), ", ".join(map(str, options.rates))
    return (
        f"egresswatch bench: {kinds} at {rates} rounds/s; {options.repeat} run(s) each,"
        f" egresswatch then blackbox_exporter; {options.warmup_s:g} s warm-up,"
        f" {options.window_s:g} s window; max_concurrent_rounds {options.max_concurrent};"
        f" {os.cpu_count()} CPUs"
    )


def _progress(kind: str, rate: int, number: int, repeat: int, run: Run) -> str:
    ours, theirs = run.ours, run.theirs
    return (
        f"{kind} at {rate}/s, run {number} of {repeat}: egresswatch"
        f" {ours.cpu_ms_per_round:.2f} CPU-ms/round over {ours.rounds} rounds ({ours.shed} shed,"
        f" {ours.failed} failed steps); blackbox_exporter {theirs.cpu_ms_per_round:.2f} over"
        f" {theirs.rounds} probes ({theirs.failed} failed); ratio {run.ratio:.2f}"
    )


def _document(
    options: BenchOptions,
    rows: list[Row],
    start: tuple[float, float, float],
    end: tuple[float, float, float],
) -> dict[str, Any]:
    return {
        "load_average": {"start": list(start), "end": list(end)},
        "cpus": os.cpu_count(),
        "repeat": options.repeat,
        "warmup_s": options.warmup_s,
        "window_s": options.window_s,
        "max_concurrent_rounds": options.max_concurrent,
        "rows": [row.document() for row in rows],
    }
