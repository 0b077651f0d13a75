"""The Prometheus alert rules (charts/egresswatch/files/alerts.yaml): valid for promtool, each
alert unit-tested firing and quiet (tests/alerts/<alert>.yaml, `promtool test rules`), and every
expression reading only metrics, labels and values that a running egresswatch exports: the
names come from the live /metrics of a real controller (with Kubernetes on, against the fake
API server, so designated sources are counted) and a real agent (processes), with a target
failing so that the step and incident series exist. The dashboard's queries
(charts/egresswatch/files/dashboard.json) are checked against the same pages.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from tests.support import grafana
from tests.support.dnsserver import dns_server
from tests.support.https import HOST, local_servers, pki
from tests.support.kubeapi import RunningKubeApi, kube_api
from tests.support.prometheus import Exported, promtool
from tests.support.service import free_port, poll
from tests.test_agent import World, finish, spawn, world

__all__ = ["dns_server", "kube_api", "local_servers", "pki", "world"]  # fixtures

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "charts" / "egresswatch" / "files" / "alerts.yaml"
UNIT_TESTS = ROOT / "tests" / "alerts"


def rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def alerts() -> list[str]:
    return [rule["alert"] for rule in rules() if "alert" in rule]


def promtool_run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *args], capture_output=True, text=True, timeout=120, cwd=UNIT_TESTS
    )


def test_promtool_checks_the_rules() -> None:
    done = promtool_run("check", "rules", str(RULES))
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_rules_cover_what_the_service_must_alert_on() -> None:
    assert set(alerts()) == {
        "EgresswatchEndpointFailing",
        "EgresswatchEgressFailingEverywhere",
        "EgresswatchStepLatencyRegression",
        "EgresswatchDown",
        "EgresswatchNotScraped",
        "EgresswatchIngestFailing",
        "EgresswatchDatabaseErrors",
        "EgresswatchSchedulerLate",
        "EgresswatchSaturated",
        "EgresswatchAgentDroppingRounds",
        "EgresswatchSourceMissing",
        "EgresswatchSourceSilent",
    }
    endpoint = next(r for r in rules() if r.get("alert") == "EgresswatchEndpointFailing")
    for name in ("source", "target", "step", "suspect"):
        assert f"$labels.{name}" in endpoint["annotations"]["description"], name


def test_every_alert_has_a_unit_test_file_that_fires_it_and_one_case_that_does_not() -> None:
    files = {path.stem for path in UNIT_TESTS.glob("*.yaml")}
    assert files == set(alerts()), "one tests/alerts/<alert>.yaml per alert, no other"
    for alert in alerts():
        suite = yaml.safe_load((UNIT_TESTS / f"{alert}.yaml").read_text())
        assert suite["rule_files"] == [os.path.relpath(RULES, UNIT_TESTS)]
        cases = [
            case
            for test in suite["tests"]
            for case in test["alert_rule_test"]
            if case["alertname"] == alert
        ]
        assert any(case["exp_alerts"] for case in cases), f"{alert}: no case fires it"
        assert any(not case["exp_alerts"] for case in cases), f"{alert}: no quiet case"


def test_promtool_unit_tests_pass() -> None:
    done = promtool_run("test", "rules", *sorted(p.name for p in UNIT_TESTS.glob("*.yaml")))
    assert done.returncode == 0, done.stdout + done.stderr


async def scrape(url: str, wanted: str) -> str:
    """The /metrics text at `url` once it holds `wanted`, else "" (not up yet, or not yet)."""
    try:
        async with aiohttp.ClientSession() as session, session.get(url) as response:
            text = await response.text()
    except aiohttp.ClientError:
        return ""
    return text if response.status == 200 and wanted in text else ""


def with_kubernetes(world: World, kube_api: RunningKubeApi) -> None:
    """Turn Kubernetes on in the world's config: the fake API server's nodes and pods are the
    designated sources (egresswatch_sources{state} is exported then only)."""
    config = yaml.safe_load(world.config.read_text())
    config["kubernetes"] = kube_api.settings()
    world.config.write_text(yaml.safe_dump(config))


async def test_every_expression_reads_only_what_a_live_egresswatch_exports(
    world: World, kube_api: RunningKubeApi
) -> None:
    closed = free_port()  # nothing listens: tcp_connect fails, an incident opens
    world.write([{"name": "shop", "address": f"{HOST}:{closed}"}])
    with_kubernetes(world, kube_api)
    environ = {**os.environ, "PYTHONUNBUFFERED": "1"}
    quiet = ["--log-level", "warning"]  # the output is piped: keep it short
    controller = await spawn(
        ["controller", "--config", str(world.config), "--migrate", *quiet], environ
    )
    agent_port = free_port()
    agent_flags = {
        "--controller": world.url,
        "--token-file": str(world.token_file),
        "--listen": f"{HOST}:{agent_port}",
        "--resolv-conf": str(world.resolv),  # loopback only: never the machine's resolver
    }
    agent = await spawn(
        ["agent", *[part for flag in agent_flags.items() for part in flag], *quiet],
        {**environ, "NODE_NAME": "aks-node-7", "EGRESSWATCH_SOURCE_KIND": "node"},
    )
    try:
        incident = 'egresswatch_incidents_open{suspect="'
        await poll(lambda: scrape(f"{world.url}/metrics", incident), 30)
        counted = 'egresswatch_sources{state="missing"}'  # the next controller tick: 5 s
        controller_text = await poll(lambda: scrape(f"{world.url}/metrics", counted), 30)
        agent_text = await poll(
            lambda: scrape(f"http://{HOST}:{agent_port}/metrics", "egresswatch_buffer_depth"), 30
        )
    finally:
        results = [await finish(process) for process in (agent, controller)]
    for code, err in results:
        assert code == 0, err

    exported = Exported()
    exported.add(controller_text)
    exported.add(agent_text)
    first = exported.labels["egresswatch_first_failing_step"]
    assert first["source"] == {"aks-node-7"} and "tcp_connect" in first["step"]
    recorded = {rule["record"] for rule in rules() if "record" in rule}
    for rule in rules():
        name = rule.get("alert") or rule["record"]
        assert exported.problems(rule["expr"], recorded=recorded) == [], name
    values = {"target": "shop", "source": "aks-node-7", "__rate_interval": "5m"}
    for query in grafana.queries(grafana.load()):
        expr = grafana.substitute(query.expr, values)
        assert exported.problems(expr, recorded=set()) == [], query.where

    # The check itself catches a wrong metric, label and value.
    assert exported.problems(
        'sum by (sourc) (egresswatch_step_upp) + egresswatch_ingest_batches_total{outcome="err"}',
        recorded=recorded,
    ) == [
        "egresswatch_step_upp is not exported",
        "label sourc is on none of ['egresswatch_ingest_batches_total', 'egresswatch_step_upp']",
        "egresswatch_ingest_batches_total{outcome} is never ['err']",
    ]
