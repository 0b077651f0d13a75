"""values.schema.json refuses what cannot work, naming the value: one case per rule.

Helm checks the schema on install, upgrade, template and lint; `Chart.validate_schema` runs the
same check (the chart's defaults merged with the given values).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import helm_python
import pytest

from tests.support.chart import ALL_ON, CHART, POSTGRES_URL, render


@pytest.fixture(scope="module")
def chart() -> Iterator[helm_python.Chart]:
    with helm_python.Chart.load(CHART) as loaded:
        yield loaded


def _refused(chart: helm_python.Chart, values: dict[str, Any]) -> str:
    with pytest.raises(helm_python.HelmValuesError) as caught:
        chart.validate_schema(values)
    return str(caught.value)


PG = {"type": "postgresql", "url": POSTGRES_URL}

REFUSED: dict[str, tuple[dict[str, Any], str]] = {
    "an unknown key": ({"replicas": 2}, "'replicas' not allowed"),
    "two replicas on SQLite": ({"controller": {"replicas": 2}}, "/controller/replicas"),
    "no replica": ({"database": PG, "controller": {"replicas": 0}}, "/controller/replicas"),
    "another database": ({"database": {"type": "mysql"}}, "/database/type"),
    "PostgreSQL without a URL or a Secret": ({"database": {"type": "postgresql"}}, "/database"),
    "a URL that is not PostgreSQL": (
        {"database": {"type": "postgresql", "url": "mysql://h/db"}},
        "/database/url",
    ),
    "no target": ({"config": {"targets": []}}, "/config/targets"),
    "a short token": ({"auth": {"agentToken": "short"}}, "/auth/agentToken"),
    "a token flag that is not a boolean": (
        {"auth": {"read": {"enabled": "yes"}}},
        "/auth/read/enabled",
    ),
    "a namespace that is no DNS label": (
        {"podAgents": {"namespaces": [{"name": "Payments_1"}]}},
        "/podAgents/namespaces/0/name",
    ),
    "a namespace twice": (
        {"podAgents": {"namespaces": [{"name": "a"}, {"name": "a"}]}},
        "/podAgents/namespaces",
    ),
    "a namespace as a bare string": (
        {"podAgents": {"namespaces": ["payments"]}},
        "/podAgents/namespaces/0",
    ),
    "another monitoring group": (
        {"monitoring": {"apiGroup": "monitoring.example.com"}},
        "/monitoring/apiGroup",
    ),
    "a scrape interval Prometheus cannot read": (
        {"monitoring": {"interval": "30 seconds"}},
        "/monitoring/interval",
    ),
    "a buffer past the agent's limit": ({"agent": {"bufferMiB": 512}}, "/agent/bufferMiB"),
    "a container without limits": (
        {"agent": {"resources": {"limits": None}}},  # null drops the default
        "/agent/resources",
    ),
    "a bad log level": ({"controller": {"logLevel": "verbose"}}, "/controller/logLevel"),
    "a bad port": ({"agent": {"port": 70000}}, "/agent/port"),
    "no image": ({"image": {"repository": ""}}, "/image/repository"),
    "a pull policy Kubernetes lacks": ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
    "a pull secret without a name": ({"imagePullSecrets": [{}]}, "/imagePullSecrets/0"),
    "a volume size without a unit": (
        {"database": {"sqlite": {"size": "2"}}},
        "/database/sqlite/size",
    ),
    "a migration deadline too short to migrate": (
        {"database": {"migrations": {"activeDeadlineSeconds": 1}}},
        "/database/migrations/activeDeadlineSeconds",
    ),
    "a service type Kubernetes lacks": (
        {"controller": {"service": {"type": "Ingress"}}},
        "/controller/service/type",
    ),
    "a spill bound of nothing": ({"agent": {"spillMiB": 0}}, "/agent/spillMiB"),
    "no pod agent replica": ({"podAgents": {"replicas": 0}}, "/podAgents/replicas"),
    "a node agent flag that is not a boolean": (
        {"nodeAgent": {"enabled": "true"}},
        "/nodeAgent/enabled",
    ),
    "a monitor flag that is not a boolean": (
        {"monitoring": {"podMonitor": {"enabled": 1}}},
        "/monitoring/podMonitor/enabled",
    ),
    "a label value that is not text": (
        {"monitoring": {"labels": {"release": 1}}},
        "/monitoring/labels/release",
    ),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_the_schema_refuses(chart: helm_python.Chart, case: str) -> None:
    values, where = REFUSED[case]
    assert where in _refused(chart, values)


# The config keys the chart sets itself: given in values they would be silently replaced.
OWNED = [
    {"listen": "0.0.0.0:1"},
    {"database": "sqlite:///x.db"},
    {"database_env": "X"},
    {"agent_token_env": "X"},
    {"read_token_env": "X"},
    {"run_token_env": "X"},
    {"source": {"name": "x"}},
    {"kubernetes": {"enabled": False}},
    {"kubernetes": {"node_sources": False}},
    {"kubernetes": {"pod_namespaces": ["a"]}},
    {"kubernetes": {"pod_selector": "a=b"}},
    {"kubernetes": {"kubeconfig": "/x"}},
]


@pytest.mark.parametrize("owned", OWNED, ids=lambda o: next(iter(o)))
def test_the_schema_refuses_config_keys_the_chart_owns(
    chart: helm_python.Chart, owned: dict[str, Any]
) -> None:
    key = next(iter(owned))
    config = {"targets": [{"name": "a", "url": "https://a.example"}], **owned}
    assert f"/config/{key}" in _refused(chart, {"config": config})


def test_the_schema_takes_what_works(chart: helm_python.Chart) -> None:
    chart.validate_schema({})
    chart.validate_schema(ALL_ON)
    chart.validate_schema({"database": {"type": "postgresql", "existingSecret": "db"}})
    chart.validate_schema({"database": PG, "controller": {"replicas": 3}})
    chart.validate_schema({"config": {"kubernetes": {"node_selector": "agentpool=user"}}})


def test_rendering_checks_the_schema_too() -> None:
    with pytest.raises(helm_python.HelmValuesError):
        render({"controller": {"replicas": 2}})
