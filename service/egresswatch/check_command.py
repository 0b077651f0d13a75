"""`egresswatch check TARGET`: the whole checklist once from here, printed step by step.

Apart from cli.py so that the other commands (an agent above all) do not load what only this
one runs: the config's model, the checklist's report (cli.py's docstring).
"""

from __future__ import annotations

import argparse
import asyncio
import json

from egresswatch.addresses import Nameserver
from egresswatch.agent.config_file import checklist_for
from egresswatch.model import Endpoint
from egresswatch.probes.checklist import TraceMode, run_checklist
from egresswatch.report import render_text, round_document
from egresswatch.settings import (
    ConfigError,
    Settings,
    TargetSettings,
    Use,
    load_settings,
    settings_for,
)

__all__ = ["EXIT_FAILED", "EXIT_OK", "run_check"]

EXIT_OK, EXIT_FAILED = 0, 1


def run_check(args: argparse.Namespace) -> int:
    """Run the checklist of `args.target` (a configured name, a URL or host:port) with the
    flags of `egresswatch check`; EXIT_OK when no step failed, else EXIT_FAILED. A bad config
    or flag raises ConfigError naming it."""
    settings = load_settings(args.config, use=Use.TOOL) if args.config else Settings()
    settings = _with_check_overrides(settings, args)
    target = settings.target(args.target) or _adhoc_target(settings, args.target)
    plan = checklist_for(settings, target, trace=TraceMode.ALWAYS)
    result = asyncio.run(run_checklist(plan, source=settings.source.name))
    document = round_document(
        result,
        plan.endpoint,
        upstream=str(plan.upstream) if plan.upstream else None,
        proxy=f"http://{plan.proxy.host}:{plan.proxy.port}" if plan.proxy else None,
    )
    if args.json:
        print(json.dumps(document, indent=2))
    else:
        print(render_text(document))
    return EXIT_OK if document["ok"] else EXIT_FAILED


def _with_check_overrides(settings: Settings, args: argparse.Namespace) -> Settings:
    data = settings.model_dump(mode="json", exclude_none=True)
    if args.resolv_conf is not None:
        data["dns"]["resolv_conf"] = str(args.resolv_conf)
    if args.upstream is not None:
        data["dns"]["upstream"] = args.upstream
    if args.ca_file is not None:
        data["probes"]["ca_file"] = str(args.ca_file)
    origin = str(args.config) if args.config else "command line"
    if args.upstream is not None:
        try:
            Nameserver.parse(args.upstream)
        except ValueError as exc:
            raise ConfigError([f"--upstream: {exc}"]) from None
    return settings_for(data, origin, Use.TOOL)


def _adhoc_target(settings: Settings, text: str) -> TargetSettings:
    """A target given on the command line as a URL or host:port, with the config's defaults."""
    try:
        endpoint = Endpoint.parse(text)
    except ValueError as exc:
        names = ", ".join(t.name for t in settings.targets) or "none configured"
        raise ConfigError(
            [f"TARGET: {exc} (and not a configured target name; configured: {names})"]
        ) from None
    key = "address" if "://" not in text else "url"
    return TargetSettings.model_validate({"name": "check", key: endpoint.url})
