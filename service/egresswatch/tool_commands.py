"""The tool commands' handlers: `demo`, `bench`, `db upgrade`, `check`, `config validate` and
`config schema` (cli.py holds their flags). Each imports what it runs inside itself, as the
service commands do (service_commands.py).
"""

from __future__ import annotations

import argparse
import json
import sys

from egresswatch.service_commands import EXIT_FAILED, EXIT_OK, EXIT_USAGE, flag_overrides
from egresswatch.validation import ConfigError

__all__ = ["bench", "check", "config_schema", "config_validate", "db_upgrade", "demo"]


def demo(args: argparse.Namespace) -> int:
    from egresswatch.demo.run import DemoOptions, run_demo

    return run_demo(DemoOptions(args.duration, args.listen, args.break_after, args.interval))


def bench(args: argparse.Namespace) -> int:
    from egresswatch.bench.flags import bench_options
    from egresswatch.bench.procs import BenchError, BenchUsageError
    from egresswatch.bench.run import run_bench

    try:
        run_bench(bench_options(args), sys.stdout, sys.stderr)
    except BenchUsageError as exc:
        print(f"egresswatch bench: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BenchError as exc:
        print(f"egresswatch bench: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def db_upgrade(args: argparse.Namespace) -> int:
    from egresswatch.settings import Settings, Use, load_settings, settings_for
    from egresswatch.storage import redact, upgrade

    if args.config:
        url = load_settings(args.config, flag_overrides(args), use=Use.TOOL).database
    elif args.db:
        url = settings_for({"database": args.db}, "--db", Use.TOOL).database
    else:
        url = Settings().database
    upgrade(url)
    print(f"database {redact(url)} is at the newest schema")
    return EXIT_OK


def check(args: argparse.Namespace) -> int:
    from egresswatch.check_command import run_check

    return run_check(args)


def config_validate(args: argparse.Namespace) -> int:
    """Validate for the strictest commands (Use.SERVICE); when only their own needs are
    missing, say which commands the file would still serve."""
    from egresswatch.settings import Use, load_settings

    try:
        settings = load_settings(args.file, use=Use.SERVICE)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        try:
            load_settings(args.file, use=Use.TOOL)
        except ConfigError:
            return EXIT_USAGE
        print(
            f"{args.file}: good for {Use.TOOL.value} only, not for {Use.SERVICE.value}",
            file=sys.stderr,
        )
        return EXIT_USAGE
    print(f"{args.file}: ok ({len(settings.targets)} targets): good for every command")
    return EXIT_OK


def config_schema(args: argparse.Namespace) -> int:
    from egresswatch.settings import json_schema

    print(json.dumps(json_schema(), indent=2))
    return EXIT_OK
