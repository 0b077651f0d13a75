"""End to end with a real Prometheus (Debian's binary, on 127.0.0.1, started here): it scrapes a
running `egresswatch controller` (Kubernetes on, against the fake API server) and a running
`egresswatch agent`, and evaluates charts/egresswatch/files/alerts.yaml.

A loopback target closed mid-test makes `EgresswatchEndpointFailing` fire with the first
failing step (`tcp_connect`) and the incident's suspect in its labels, and every query of the
dashboard (charts/egresswatch/files/dashboard.json), its template variables substituted, then
returns data. Once with `metrics.detail: source` and once with `source_kind` (the latency
queries must work with both).

The rules are loaded from a copy whose `for:` durations are all 1 s: the production ones (2 to
15 minutes) cannot be waited for here; the expressions are the file's, unchanged. Prometheus
scrapes and evaluates every second.
"""

from __future__ import annotations

import os
import time
from functools import partial
from typing import Any

import pytest
import yaml

from tests.support import grafana
from tests.support.dnsserver import dns_server
from tests.support.https import HOST, local_servers, pki
from tests.support.kubeapi import RunningKubeApi, kube_api
from tests.support.prometheus import (
    RunningPrometheus,
    prometheus_server,
    shorten_for,
)
from tests.support.service import free_port, poll
from tests.support.tcpservers import TcpServer, accept_server
from tests.test_agent import TOKEN, TOKEN_ENV, World, finish, get_json, spawn, world
from tests.test_alerts import RULES, with_kubernetes

__all__ = ["accept_server", "dns_server", "kube_api", "local_servers", "pki", "world"]

SOURCE = "aks-nodepool1-12345678-vmss000002"  # a designated node of the fake cluster
ALERT = "EgresswatchEndpointFailing"


def configure(world: World, kube_api: RunningKubeApi, port: int, detail: str) -> None:
    world.write([{"name": "shop", "address": f"{HOST}:{port}"}])
    with_kubernetes(world, kube_api)
    config = yaml.safe_load(world.config.read_text())
    config["detection"] = {"fail_after": 2, "recover_after": 1}
    config["metrics"] = {"detail": detail}
    world.config.write_text(yaml.safe_dump(config))


async def firing(prometheus: RunningPrometheus) -> list[dict[str, Any]]:
    return [
        alert
        for alert in await prometheus.alerts()
        if alert["labels"]["alertname"] == ALERT and alert["state"] == "firing"
    ]


async def empty_queries(prometheus: RunningPrometheus, values: dict[str, str]) -> list[str]:
    """The dashboard's queries that return no series now (with `values` substituted)."""
    empty = []
    for query in grafana.queries(grafana.load()):
        if not await prometheus.query(grafana.substitute(query.expr, values)):
            empty.append(query.where)
    return empty


@pytest.mark.parametrize("detail", ["source", "source_kind"])
async def test_a_real_prometheus_fires_the_endpoint_alert_and_answers_the_dashboard(
    world: World,
    kube_api: RunningKubeApi,
    accept_server: TcpServer,
    detail: str,
) -> None:
    configure(world, kube_api, accept_server.port, detail)
    environ = {**os.environ, "PYTHONUNBUFFERED": "1", TOKEN_ENV: TOKEN}
    quiet = ["--log-level", "warning"]  # the output is piped: keep it short
    controller = await spawn(
        ["controller", "--config", str(world.config), "--migrate", *quiet], environ
    )
    agent_listen = f"{HOST}:{free_port()}"
    agent = await spawn(
        [
            "agent",
            *("--controller", world.url, "--token-file", str(world.token_file)),
            *("--listen", agent_listen, "--resolv-conf", str(world.resolv), *quiet),
        ],
        {**environ, "NODE_NAME": SOURCE, "EGRESSWATCH_SOURCE_KIND": "node"},
    )
    rules = world.dir / "alerts-for-1s.yaml"
    rules.write_text(shorten_for(RULES.read_text(), "1s"))
    scrape = {
        "egresswatch-controller": [world.url.removeprefix("http://")],
        "egresswatch-agent": [agent_listen],
    }
    try:
        async with prometheus_server(world.dir, scrape, [rules]) as prometheus:
            healthy = f'egresswatch_step_up{{target="shop", source="{SOURCE}"}} == 1'
            await poll(lambda: prometheus.query(healthy), 30)
            assert await firing(prometheus) == []  # quiet while the endpoint answers

            accept_server.close()  # the endpoint goes away: connections are refused
            closed_at = time.monotonic()
            alerts = await poll(lambda: firing(prometheus), 30)
            # Printed, not asserted: rounds every 1 s, fail_after 2, scrape and rules every 1 s.
            print(f"{detail}: the alert fired {time.monotonic() - closed_at:.1f} s after the close")
            status, incidents = await get_json(f"{world.url}/api/v1/incidents?open=true")
            assert status == 200, incidents
            [incident] = incidents["items"]
            [alert] = alerts
            labels = alert["labels"]
            assert labels["source"] == SOURCE and labels["target"] == "shop", labels
            assert labels["step"] == "tcp_connect" == incident["first_failing_step"], labels
            assert labels["suspect"] == incident["suspect"], (labels, incident)
            assert "tcp_connect" in alert["annotations"]["description"]

            # Every panel, annotation and variable of the dashboard has data, for one target
            # and source as for "All". Rates need two samples after the failure: bounded wait.
            for values in (
                {"target": "shop", "source": SOURCE, "__rate_interval": "10s"},
                {"target": ".*", "source": ".*", "__rate_interval": "10s"},
            ):
                try:
                    await poll(partial(_all_answer, prometheus, values), 15)
                except TimeoutError:
                    empty = await empty_queries(prometheus, values)
                    raise AssertionError(f"no data for {empty} with {values}") from None
    finally:
        results = [await finish(process) for process in (agent, controller)]
    for code, err in results:
        assert code == 0, err
        assert "Traceback" not in err, err


async def _all_answer(prometheus: RunningPrometheus, values: dict[str, str]) -> bool:
    return await empty_queries(prometheus, values) == []


def test_the_shortened_rules_differ_only_in_for() -> None:
    original = yaml.safe_load(RULES.read_text())
    shortened = yaml.safe_load(shorten_for(RULES.read_text(), "1s"))
    durations = set()
    for group, short in zip(original["groups"], shortened["groups"], strict=True):
        for rule, copy in zip(group["rules"], short["rules"], strict=True):
            durations.add(copy.pop("for", "1s"))
            rule.pop("for", None)
            assert rule == copy
    assert durations == {"1s"}
