"""``--profile DIR``: py-spy recording the egresswatch process during its measured window.

py-spy samples from outside the process (``--nonblocking``: it reads the target's memory
without stopping it, so the CPU the window measures is the process's own). One flame graph a
(round kind, rate), from its first run: ``DIR/egresswatch-KIND-RATE.svg``.
"""

from __future__ import annotations

import asyncio
import math
import shutil
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path

from egresswatch.bench.procs import BenchError, BenchUsageError, log_tail, process

SAMPLES_PER_S = 100


def find_py_spy(search_path: str) -> str:
    """py-spy's path on `search_path` (a PATH); BenchUsageError naming --profile when absent."""
    found = shutil.which("py-spy", path=search_path)
    if found is None:
        raise BenchUsageError(
            "--profile: py-spy is not on PATH (pip install py-spy, a dev tool, not a dependency)"
        )
    return found


def record_argv(
    py_spy: str,
    pid: int,
    seconds: float,
    output: Path,
    *,
    fmt: str = "flamegraph",
    gil: bool = False,
) -> list[str]:
    """py-spy sampling process `pid` for `seconds` (rounded up) without stopping it, into
    `output` in py-spy's format `fmt` (flamegraph: an SVG; raw: collapsed stacks); with `gil`,
    only the thread holding the GIL is sampled (without it, time blocked in epoll counts)."""
    argv = [py_spy, "record", "--pid", str(pid), "--nonblocking", *(["--gil"] if gil else [])]
    argv += ["--duration", str(math.ceil(seconds)), "--rate", str(SAMPLES_PER_S)]
    return [*argv, "--format", fmt, "--output", str(output)]


class Profiler:
    """py-spy at `py_spy`, writing its flame graphs into `directory`."""

    def __init__(self, py_spy: str, directory: Path) -> None:
        self.py_spy = py_spy
        self.directory = directory

    def output(self, kind: str, rate: int) -> Path:
        return self.directory / f"egresswatch-{kind}-{rate}.svg"

    @asynccontextmanager
    async def record(self, pid: int, seconds: float, output: Path) -> AsyncIterator[None]:
        """py-spy samples process `pid` for `seconds` (rounded up) while the block runs; the
        flame graph is in `output` when the block is left, else BenchError with py-spy's log."""
        log = output.with_suffix(".log")
        # --gil: what holds the interpreter; time in epoll or in aiosqlite's queue is not work.
        argv = record_argv(self.py_spy, pid, seconds, output, gil=True)
        with process(argv, log) as spy:
            yield
            # It stops by itself after --duration and then writes the graph; if it hangs,
            # process() stops it by its PID.
            with suppress(subprocess.TimeoutExpired):
                await asyncio.to_thread(spy.wait, timeout=30)
        if not await asyncio.to_thread(output.is_file):
            raise BenchError(f"--profile: py-spy wrote no {output}; its log:\n{log_tail(log)}")
