"""The benchmarks still run: a few rounds of each that is cheap enough for CI (numbers are
printed, not judged: docs/performance.md keeps them)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_tls_rounds_benchmark_runs() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "tls_rounds.py"), "--rounds", "3"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert lines[0].startswith("3 HTTPS rounds each way")
    assert any(line.startswith("cached contexts") and "CPU-ms/round" in line for line in lines)


def test_staleness_benchmark_runs() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "staleness.py"), "--targets", "10", "20"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert [line.split()[0] for line in done.stdout.splitlines()[1:]] == ["10", "20"]
