"""The benchmarks still run: a few rounds of each that is cheap enough for CI (numbers are
printed, not judged: docs/performance.md keeps them)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def bench(name: str, *args: str) -> list[str]:
    """Run benchmarks/NAME.py with `args`; its output lines (it must exit 0)."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / f"{name}.py"), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.splitlines()


def test_tls_rounds_benchmark_runs() -> None:
    lines = bench("tls_rounds", "--rounds", "3")
    assert lines[0].startswith("3 HTTPS rounds each way")
    assert any(line.startswith("cached contexts") and "CPU-ms/round" in line for line in lines)


def test_staleness_benchmark_runs() -> None:
    lines = bench("staleness", "--targets", "10", "20")
    assert [line.split()[0] for line in lines[1:]] == ["10", "20"]


def test_scrape_benchmark_runs() -> None:
    lines = bench("scrape", "--sources", "4", "--targets", "3")
    assert [line.split()[0] for line in lines[2:]] == ["source", "source_kind"]


def test_overload_benchmark_runs() -> None:
    lines = bench("overload", "--start", "5", "--max", "10", "--seconds", "1")
    assert lines[0].startswith("TCP targets at 1 s")
    assert any(line.startswith(("sustainable:", "at 2x:")) for line in lines)


def test_side_by_side_benchmark_runs() -> None:
    """One kind at a small rate: nginx, dnsmasq, `egresswatch run` and blackbox_exporter start,
    are measured and stopped (CI installs the Debian packages, .ci/run)."""
    lines = bench(
        "side_by_side", "--kinds", "tcp", "--rates", "20", "--warmup", "2", "--window", "2"
    )
    assert lines[0].startswith("| round kind |")
    row = lines[2].split("|")
    assert row[1].strip() == "tcp" and row[2].strip() == "20"
    assert float(row[3]) > 0 and float(row[4]) > 0  # both processes were measured
    assert "0 failed steps" in row[8] and row[9].strip().startswith("0 failed of")
