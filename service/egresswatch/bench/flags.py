"""The flags of `egresswatch bench`, and their check into :class:`BenchOptions`.

:func:`add_bench_parser` adds the command and its flags; :func:`bench_options` checks them
and the machine (py-spy for ``--profile``, the Debian tools), raising BenchUsageError naming
the flag or the package before anything starts.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

from egresswatch.bench.kinds import KINDS
from egresswatch.bench.procs import BenchUsageError, Tools, find_tools
from egresswatch.bench.profile import find_py_spy

MAX_RATE = 5000  # rounds/s: 10,000 targets in one egresswatch process, the largest
MAX_SECONDS = 600.0  # a warm-up or a window; others wait for the benchmark lock meanwhile
MAX_REPEAT = 20


@dataclass(frozen=True)
class BenchOptions:
    """A checked `egresswatch bench` command line, with the tools found for it."""

    kinds: tuple[str, ...]
    rates: tuple[int, ...]
    warmup_s: float
    window_s: float
    repeat: int
    max_concurrent: int
    json: bool
    tools: Tools
    profile_dir: Path | None = None
    py_spy: str | None = None


def add_bench_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    """The `bench` command's parser, with its flags, added to `commands`."""
    bench = commands.add_parser(
        "bench",
        help="egresswatch's CPU per round side by side with blackbox_exporter's, on loopback",
        description="Start loopback targets (nginx-light HTTP and HTTPS with a CA made on the "
        "spot, dnsmasq answering bench.test), then for each round kind and rate run `egresswatch "
        "run` and blackbox_exporter at that rate, one after the other, --repeat times, and print "
        "CPU-ms per round (process CPU over the window / rounds done), the ratio, RSS, rounds "
        "shed, failed steps and lateness: medians with the min-max spread, and the load average "
        "at the start and end. Needs Debian's nginx-light, dnsmasq-base, "
        "prometheus-blackbox-exporter and root (a mount namespace). Exit 0 when measured, 1 "
        "when a process failed, 2 on bad flags or a missing tool.",
    )
    _add_flags(bench)
    return bench


def _add_flags(bench: argparse.ArgumentParser) -> None:
    bench.add_argument(
        "--kinds",
        default=",".join(KINDS),
        metavar="K,K",
        help=f"round kinds, comma-separated, of {', '.join(KINDS)} (default: all)",
    )
    bench.add_argument(
        "--rates",
        default="200,500",
        metavar="R,R",
        help="rounds per second, comma-separated (default: %(default)s)",
    )
    bench.add_argument(
        "--warmup",
        type=float,
        default=6.0,
        metavar="S",
        help="seconds before measuring (default: %(default)g)",
    )
    bench.add_argument(
        "--window",
        type=float,
        default=10.0,
        metavar="S",
        help="seconds measured (default: %(default)g)",
    )
    bench.add_argument(
        "--repeat",
        type=int,
        default=3,
        metavar="N",
        help="runs of each (kind, rate), egresswatch and blackbox_exporter alternating; the "
        "table shows medians and the min-max spread (default: %(default)s)",
    )
    bench.add_argument(
        "--max-concurrent",
        type=int,
        metavar="N",
        help="egresswatch's max_concurrent_rounds (default: the setting's default)",
    )
    bench.add_argument("--json", action="store_true", help="print the rows as one JSON document")
    bench.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="record egresswatch with py-spy (on PATH) during each (kind, rate)'s first window:"
        " one flame graph each, DIR/egresswatch-KIND-RATE.svg",
    )


def bench_options(
    args: argparse.Namespace, search_path: str | None = None, euid: int | None = None
) -> BenchOptions:
    """The checked options; BenchUsageError naming the first bad flag, the missing tools, or
    a user other than root. `search_path` is where py-spy and the Debian tools are looked up
    (default: PATH), `euid` the user running it (default: this process's)."""
    path = os.environ.get("PATH", "") if search_path is None else search_path
    kinds = _kinds(args.kinds)
    rates = _rates(args.rates)
    _bounded("--warmup", args.warmup, 0.0, MAX_SECONDS)
    _bounded("--window", args.window, 0.1, MAX_SECONDS)
    _bounded("--repeat", args.repeat, 1, MAX_REPEAT)
    max_concurrent = _max_concurrent(args.max_concurrent)
    py_spy = None
    if args.profile is not None:
        py_spy = find_py_spy(path)
        _profile_dir(args.profile)
    tools = find_tools(path)
    if (os.geteuid() if euid is None else euid) != 0:
        # Found before the first run, not after egresswatch's: unshare would refuse.
        raise BenchUsageError(
            "needs root: blackbox_exporter runs in a mount namespace of its own, where "
            "/etc/resolv.conf names the lab's dnsmasq (never the machine's resolver)"
        )
    return BenchOptions(
        kinds,
        rates,
        args.warmup,
        args.window,
        args.repeat,
        max_concurrent,
        args.json,
        tools,
        args.profile,
        py_spy,
    )


def _kinds(text: str) -> tuple[str, ...]:
    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    unknown = [k for k in kinds if k not in KINDS]
    if not kinds or unknown:
        raise BenchUsageError(
            f"--kinds: {'unknown ' + ', '.join(unknown) if unknown else 'none given'}"
            f" (known: {', '.join(KINDS)})"
        )
    return tuple(dict.fromkeys(kinds))


def _rates(text: str) -> tuple[int, ...]:
    rates = []
    for part in (p.strip() for p in text.split(",")):
        if not part.isdigit() or not 1 <= int(part) <= MAX_RATE:
            raise BenchUsageError(
                f"--rates: {part!r} is not a whole number of rounds per second from 1 to {MAX_RATE}"
            )
        rates.append(int(part))
    return tuple(dict.fromkeys(rates))


def _bounded(flag: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise BenchUsageError(f"{flag}: {value:g} is not from {low:g} to {high:g}")


def _max_concurrent(value: int | None) -> int:
    """The setting's default when not given, else `value` within the setting's own bounds."""
    # Imported here: this module is loaded by every command's parser, an agent's included,
    # and an agent loads no config model (tests/test_agent_imports.py).
    from egresswatch.settings import ConfigError, Settings, Use, settings_for

    if value is None:
        default: int = Settings.model_fields["max_concurrent_rounds"].default
        return default
    data = {"max_concurrent_rounds": value}
    try:
        settings_for(data, "--max-concurrent", Use.TOOL, from_flags={"max_concurrent_rounds"})
    except ConfigError as exc:
        raise BenchUsageError("; ".join(exc.problems)) from None
    return value


def _profile_dir(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BenchUsageError(f"--profile: cannot use {directory}: {exc.strerror}") from None
