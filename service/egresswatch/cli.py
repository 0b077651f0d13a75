"""The `egresswatch` command line. Exit codes: 0 ok, 1 a step failed, 2 bad usage or config.

Each command imports what it runs inside its handler: `egresswatch agent`, a DaemonSet pod on
every node, then loads neither the config's model nor the controller's libraries (SQLAlchemy,
Alembic, the Kubernetes client): docs/performance.md, "An agent's footprint", and
tests/test_agent_imports.py, which checks it in a real process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from egresswatch import __version__
from egresswatch.addresses import parse_listen
from egresswatch.agent.flags import add_buffer_flags
from egresswatch.bench.flags import add_bench_parser
from egresswatch.validation import ConfigError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
DEFAULT_AGENT_LISTEN = "127.0.0.1:9109"  # the controller's default is 9108: both fit one host


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
    check.set_defaults(handler=_check)

    run = commands.add_parser(
        "run",
        help="the service: controller and a local agent in one process (SQLite by default)",
        description="Run every configured target's checklist on its timer, store the results, "
        "serve /metrics, /healthz, /readyz. SIGHUP or a change to the file reloads the config.",
    )
    run.add_argument("--config", type=Path, required=True, help="config file")
    _service_flags(run)
    run.add_argument(
        "--migrate", action="store_true", help="migrate the database schema before starting"
    )
    run.set_defaults(handler=_run)

    _agent_parser(commands)
    _controller_parser(commands)

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
    demo.set_defaults(handler=_demo)

    add_bench_parser(commands).set_defaults(handler=_bench)

    db = commands.add_parser("db", help="database schema")
    db_commands = db.add_subparsers(title="db commands", metavar="COMMAND")
    db_upgrade = db_commands.add_parser("upgrade", help="migrate the database to this version")
    db_upgrade.add_argument("--config", type=Path, help="config file (for its database URL)")
    db_upgrade.add_argument("--db", help="database URL (overrides the config)")
    db_upgrade.set_defaults(handler=_db_upgrade)

    config = commands.add_parser("config", help="validate the config or print its schema")
    config_commands = config.add_subparsers(title="config commands", metavar="COMMAND")
    validate = config_commands.add_parser("validate", help="check a config file, print every error")
    validate.add_argument("file", type=Path, metavar="FILE")
    validate.set_defaults(handler=_config_validate)
    schema = config_commands.add_parser("schema", help="print the config's JSON Schema")
    schema.set_defaults(handler=_config_schema)
    return parser


def _agent_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    agent = commands.add_parser(
        "agent",
        help="run rounds from this pod or node and push them to the controller",
        description="Ask the controller what to probe, run every target's checklist on its "
        "timer from here, and push the results to the controller in batches (buffered while it "
        "is away). Who this agent is comes from --source/--source-kind, else from the Downward "
        "API: POD_NAME and POD_NAMESPACE (a pod), NODE_NAME (a node), EGRESSWATCH_SOURCE_KIND "
        "when both are set. Proxy credentials, when the controller's proxy wants them: "
        "EGRESSWATCH_PROXY_USERNAME and EGRESSWATCH_PROXY_PASSWORD. Exit 2 on bad flags or a "
        "missing identity.",
    )
    agent.add_argument(
        "--controller", required=True, metavar="URL", help="e.g. http://egresswatch:9108"
    )
    agent.add_argument(
        "--token-file",
        required=True,
        type=Path,
        metavar="FILE",
        help="the agents' bearer token (read again when the file changes)",
    )
    agent.add_argument(
        "--source", metavar="NAME", help="this source's name (default: Downward API)"
    )
    agent.add_argument("--source-kind", choices=["pod", "node"], help="what this source is")
    agent.add_argument(
        "--listen",
        default=DEFAULT_AGENT_LISTEN,
        metavar="HOST:PORT",
        help="/healthz, /readyz and /metrics (default: %(default)s)",
    )
    agent.add_argument(
        "--resolv-conf",
        type=Path,
        default=Path("/etc/resolv.conf"),
        metavar="PATH",
        help="resolv.conf for dns_cluster (default: %(default)s)",
    )
    agent.add_argument(
        "--ca-file", type=Path, metavar="PATH", help="CA bundle for TLS verification"
    )
    add_buffer_flags(agent)
    _log_level_flag(agent)
    agent.set_defaults(handler=_agent)


def _controller_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    controller = commands.add_parser(
        "controller",
        help="the controller alone: agents' results stored, judged and served",
        description="Store the results agents push (POST /api/v1/results, with the bearer "
        "token from the variable named by agent_token_env), detect changes and incidents, "
        "serve the plan, the API and /metrics. Runs no rounds itself. SIGHUP or a change to "
        "the file reloads the config.",
    )
    controller.add_argument("--config", type=Path, required=True, help="config file")
    _service_flags(controller)
    controller.add_argument(
        "--migrate", action="store_true", help="migrate the database schema before starting"
    )
    _log_level_flag(controller)
    controller.set_defaults(handler=_controller)


def _log_level_flag(parser: argparse.ArgumentParser) -> None:
    # SUPPRESS: given after the command it wins, absent it leaves the global flag's value.
    parser.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        default=argparse.SUPPRESS,
        help="default: info",
    )


def _service_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--listen", metavar="HOST:PORT", help="API and /metrics address")
    parser.add_argument("--db", metavar="URL", help="database URL, e.g. sqlite+aiosqlite:///x.db")


def _overrides(args: argparse.Namespace) -> dict[str, str]:
    """Command-line flags that override the config file (and keep doing so on reload)."""
    found = {}
    if getattr(args, "listen", None):
        found["listen"] = args.listen
    if getattr(args, "db", None):
        found["database"] = args.db
    return found


def _process_setup(args: argparse.Namespace) -> None:
    """What every long-running command (run, agent, controller) sets first: JSON log lines
    at the level asked for, and no `*_created` series."""
    import prometheus_client

    from egresswatch.logs import setup_logging

    setup_logging(args.log_level or "info", json_lines=True)
    # The *_created series double what a scrape carries and say nothing an alert uses.
    prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]


def _run(args: argparse.Namespace) -> int:
    from egresswatch.settings import Use, load_settings
    from egresswatch.wiring import Service, StartupError

    overrides = _overrides(args)
    settings = load_settings(args.config, overrides, use=Use.SERVICE)  # before any set-up
    _process_setup(args)
    service = Service(settings, config_path=args.config, overrides=overrides, migrate=args.migrate)
    try:
        asyncio.run(service.run())
    except StartupError as exc:
        print(f"egresswatch: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


def _agent(args: argparse.Namespace) -> int:
    from egresswatch.agent.flags import buffer_options
    from egresswatch.agent.service import (
        Agent,
        AgentOptions,
        AgentStartupError,
        TokenFile,
        UsageError,
        check_controller_url,
        resolve_identity,
    )

    try:
        # Checked in the order of the usage line, so the first problem named is the first flag.
        controller = check_controller_url(args.controller)
        TokenFile(args.token_file).load()
        identity = resolve_identity(source=args.source, kind=args.source_kind, environ=os.environ)
        for flag, path in (("--resolv-conf", args.resolv_conf), ("--ca-file", args.ca_file)):
            if path is not None and not path.is_file():
                raise UsageError(f"{flag}: {path} is not a file")
        try:
            parse_listen(args.listen)
        except ValueError as exc:
            raise UsageError(f"--listen: {exc}") from None
        buffer = buffer_options(args, identity)
    except UsageError as exc:
        raise ConfigError([str(exc)]) from None
    _process_setup(args)
    options = AgentOptions(
        controller=controller,
        token_file=args.token_file,
        identity=identity,
        listen=args.listen,
        resolv_conf=args.resolv_conf,
        ca_file=args.ca_file,
        **buffer,
    )
    try:
        asyncio.run(Agent(options).run())
    except AgentStartupError as exc:
        print(f"egresswatch agent: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


def _controller(args: argparse.Namespace) -> int:
    from egresswatch.settings import Use, load_settings
    from egresswatch.wiring import Service, StartupError

    overrides = _overrides(args)
    settings = load_settings(args.config, overrides, use=Use.SERVICE)  # before any set-up
    _process_setup(args)
    if settings.agent_token() is None:
        logging.getLogger(__name__).error(
            "ingest and the plan are closed: set agent_token_env in the config, or every "
            "agent's batch and plan request is refused (403)"
        )
    service = Service(
        settings,
        config_path=args.config,
        overrides=overrides,
        migrate=args.migrate,
        local_agent=False,
    )
    try:
        asyncio.run(service.run())
    except StartupError as exc:
        print(f"egresswatch controller: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


def _demo(args: argparse.Namespace) -> int:
    from egresswatch.demo.run import DemoOptions, run_demo

    return run_demo(DemoOptions(args.duration, args.listen, args.break_after, args.interval))


def _bench(args: argparse.Namespace) -> int:
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


def _db_upgrade(args: argparse.Namespace) -> int:
    from egresswatch.settings import Settings, Use, load_settings, settings_for
    from egresswatch.storage import redact, upgrade

    if args.config:
        url = load_settings(args.config, _overrides(args), use=Use.TOOL).database
    elif args.db:
        url = settings_for({"database": args.db}, "--db", Use.TOOL).database
    else:
        url = Settings().database
    upgrade(url)
    print(f"database {redact(url)} is at the newest schema")
    return EXIT_OK


def _check(args: argparse.Namespace) -> int:
    from egresswatch.check_command import run_check

    return run_check(args)


def _config_validate(args: argparse.Namespace) -> int:
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


def _config_schema(args: argparse.Namespace) -> int:
    from egresswatch.settings import json_schema

    print(json.dumps(json_schema(), indent=2))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
