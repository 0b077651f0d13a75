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


def test_egresswatch_bench_runs() -> None:
    """`egresswatch bench` as a person runs it, for one kind at a small rate: nginx, dnsmasq,
    `egresswatch run` and blackbox_exporter start, are measured and stopped (CI installs the
    Debian packages, .ci/run)."""
    egresswatch = str(Path(sys.executable).with_name("egresswatch"))
    flags = ["--kinds", "tcp", "--rates", "20", "--repeat", "1", "--warmup", "1", "--window", "2"]
    done = subprocess.run(
        [egresswatch, "bench", *flags],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert lines[0].startswith("egresswatch bench: tcp at 20 rounds/s; 1 run(s) each")
    assert lines[1].startswith("load average at start: ")
    assert lines[-1].startswith("load average at end: ")
    header = [cell.strip() for cell in lines[2].strip("|").split("|")]
    (row,) = (line for line in lines if line.startswith("| tcp | 20 |"))
    shown = dict(zip(header, (cell.strip() for cell in row.strip("|").split("|")), strict=True))
    # Both processes were measured, and nothing failed against the healthy loopback target.
    assert float(shown["egresswatch CPU-ms/round"]) > 0
    assert float(shown["blackbox CPU-ms/round"]) > 0
    assert int(shown["egresswatch rounds"]) > 0 and int(shown["blackbox probes"]) > 0
    assert shown["failed steps"] == "0" and shown["blackbox failed"] == "0"
    assert shown["shed"] == "0"
    assert "tcp at 20/s, run 1 of 1: egresswatch" in done.stderr


def test_the_side_by_side_script_is_egresswatch_bench() -> None:
    """benchmarks/side_by_side.py passes its flags to `egresswatch bench` (a bad one is enough:
    the same message, nothing started)."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "side_by_side.py"), "--kinds", "udp"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "egresswatch bench: --kinds: unknown udp" in done.stderr


def test_targets_scale_benchmark_runs() -> None:
    """benchmarks/targets_scale.py with 20 TCP targets at 2 s for a short window: the lab and
    `egresswatch run` start, one row is measured (lateness, CPU, RSS, scrape, status), and
    nothing failed against the healthy loopback target. The database is migrated first, by
    `egresswatch db upgrade`, as the chart's Job does (`run --migrate` is test_run_imports')."""
    flags = ["--targets", "20", "--interval", "2", "--warmup", "2", "--window", "2"]
    flags.append("--migrate-first")
    lines = bench("targets_scale", *flags)
    assert lines[0].startswith("TCP targets, warm-up 2 s, window 2 s")
    header = [cell.strip() for cell in lines[1].strip("|").split("|")]
    (row,) = (line for line in lines if line.startswith("| 20 | 2 |"))
    shown = dict(zip(header, (cell.strip() for cell in row.strip("|").split("|")), strict=True))
    assert float(shown["rounds/s"]) > 0 and float(shown["CPU-ms/round"]) > 0
    assert shown["lateness p50 / p99 / max"].startswith("<=")
    assert shown["failed steps"] == "0" and shown["shed"] == "0"
    rss, settled = (float(mib) for mib in shown["RSS MiB (then 3 s later)"].split(" / "))
    assert float(shown["scrape MB"]) > 0 and rss > 0 and settled > 0
    assert lines[-1].startswith("load average at end")


def test_agent_http_benchmark_runs() -> None:
    lines = bench("agent_http", "--requests", "5", "--batch-kib", "4", "--plan-kib", "4")
    assert lines[0] == "5 requests of each, batch 4 KiB, plan 4 KiB"
    assert [line.split()[0] for line in lines[2:]] == ["h11", "aiohttp"]
