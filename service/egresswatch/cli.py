"""The `egresswatch` command line. Exit codes: 0 ok, 1 a step failed, 2 bad usage or config.

`main` and the parser; the long-running commands' flags and handlers are in
service_commands.py, the tools' handlers in tool_commands.py. Each command imports what it runs
inside its handler: `egresswatch agent`, a DaemonSet pod on every node, then loads neither the
config's model nor the controller's libraries (SQLAlchemy, Alembic, the Kubernetes client):
docs/performance.md, "An agent's footprint", and tests/test_agent_imports.py, which checks it in
a real process.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from egresswatch import __version__, tool_commands
from egresswatch.bench.flags import add_bench_parser
from egresswatch.service_commands import EXIT_USAGE, add_service_parsers
from egresswatch.validation import ConfigError


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, (args.log_level or "warning").upper()),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    if not hasattr(args, "handler"):
        parser.print_help()
        return EXIT_USAGE
    try:
        code: int = args.handler(args)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return EXIT_USAGE
    return code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="egresswatch",
        description="Watch a cluster's outbound connectivity the way the egress checklist "
        "does it by hand: DNS, TCP, TLS, HTTP, traceroute.",
    )
    parser.add_argument("--version", action="version", version=f"egresswatch {__version__}")
    parser.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        help="default: info for run, warning otherwise",
    )
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    check = commands.add_parser(
        "check",
        help="run the whole checklist once from here and print it step by step",
        description="Run steps 1-6 of the egress checklist against TARGET from this machine. "
        "Exit 0 when no step failed, 1 when a step failed, 2 on bad usage or config.",
    )
    check.add_argument("target", metavar="TARGET", help="a URL, host:port, or a target name")
    check.add_argument("--config", type=Path, help="config file (targets, resolver, proxy)")
    check.add_argument("--json", action="store_true", help="print one JSON document")
    check.add_argument("--resolv-conf", type=Path, help="resolv.conf for dns_cluster")
    check.add_argument("--upstream", help="upstream resolver for dns_upstream, e.g. 168.63.129.16")
    check.add_argument("--ca-file", type=Path, help="CA bundle for TLS verification")
    check.set_defaults(handler=tool_commands.check)

    add_service_parsers(commands)

    demo = commands.add_parser(
        "demo",
        help="a self-contained tour on loopback: break an endpoint, watch egresswatch see it",
        description="Start a DNS server and two HTTPS endpoints on 127.0.0.1, run the service "
        "against them, break one endpoint (its DNS answer, then its HTTP status) and repair it, "
        "and print what egresswatch sees as it happens. Files go to a new temporary directory, "
        "kept afterwards. Exit 0 when every break and recovery was seen as expected, 1 when "
        "not, 130 on Ctrl-C before that (143 on SIGTERM), 2 when it cannot start.",
    )
    demo.add_argument(
        "--duration",
        type=float,
        metavar="S",
        help="stop after S seconds (default: when the whole cycle has been seen, 170 s with "
        "the other defaults)",
    )
    demo.add_argument(
        "--listen",
        default="127.0.0.1:9108",
        metavar="HOST:PORT",
        help="API and /metrics address (default: %(default)s; port 0: any free port)",
    )
    demo.add_argument(
        "--break-after",
        type=float,
        default=60.0,
        metavar="S",
        help="seconds of healthy rounds before the first fault (default: %(default)g); each "
        "fault then lasts 7 rounds, 5 rounds apart",
    )
    demo.add_argument(
        "--interval",
        type=float,
        default=5.0,
        metavar="S",
        help="seconds between rounds of a target, at least 1 (default: %(default)g)",
    )
    demo.set_defaults(handler=tool_commands.demo)

    add_bench_parser(commands).set_defaults(handler=tool_commands.bench)

    db = commands.add_parser("db", help="database schema")
    db_commands = db.add_subparsers(title="db commands", metavar="COMMAND")
    db_upgrade = db_commands.add_parser("upgrade", help="migrate the database to this version")
    db_upgrade.add_argument("--config", type=Path, help="config file (for its database URL)")
    db_upgrade.add_argument("--db", help="database URL (overrides the config)")
    db_upgrade.set_defaults(handler=tool_commands.db_upgrade)

    config = commands.add_parser("config", help="validate the config or print its schema")
    config_commands = config.add_subparsers(title="config commands", metavar="COMMAND")
    validate = config_commands.add_parser("validate", help="check a config file, print every error")
    validate.add_argument("file", type=Path, metavar="FILE")
    validate.set_defaults(handler=tool_commands.config_validate)
    schema = config_commands.add_parser("schema", help="print the config's JSON Schema")
    schema.set_defaults(handler=tool_commands.config_schema)
    return parser


if __name__ == "__main__":
    sys.exit(main())
