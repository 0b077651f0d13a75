"""`egresswatch run`, `agent` and `controller`: the long-running commands' flags and handlers.

Each handler imports what it runs inside itself: `egresswatch agent`, a DaemonSet pod on every
node, then loads neither the config's model nor the controller's libraries (SQLAlchemy,
Alembic, the Kubernetes client): docs/performance.md, "An agent's footprint", and
tests/test_agent_imports.py, which checks it in a real process. The other commands are in
tool_commands.py; cli.py holds `main` and the parser.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path

from egresswatch.addresses import parse_listen
from egresswatch.agent.flags import add_buffer_flags
from egresswatch.validation import ConfigError

__all__ = ["EXIT_FAILED", "EXIT_OK", "EXIT_USAGE", "add_service_parsers", "flag_overrides"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
DEFAULT_AGENT_LISTEN = "127.0.0.1:9109"  # the controller's default is 9108: both fit one host


def add_service_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The `run`, `agent` and `controller` commands, each with its handler."""
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


def flag_overrides(args: argparse.Namespace) -> dict[str, str]:
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

    overrides = flag_overrides(args)
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

    overrides = flag_overrides(args)
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
