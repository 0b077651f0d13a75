"""The Grafana dashboard (charts/egresswatch/files/dashboard.json), read as Grafana reads it:
a Prometheus datasource chosen by a variable, target and source variables, every query PromQL
that parses, the panels the deployment issue asks for, and latency queries that work with
`metrics.detail: source` and `source_kind` alike.

That the queries name only exported metrics is checked against a live /metrics in
tests/test_alerts.py; that they return data from a real Prometheus, in
tests/test_prometheus_e2e.py.
"""

from __future__ import annotations

import re

import promql_parser

from tests.support.grafana import Query, load, panels, queries, substitute
from tests.support.prometheus import reads

DATASOURCE = "${datasource}"
ALL = {"target": ".*", "source": ".*", "__rate_interval": "5m"}
# The families whose `source` label becomes `source_kind` under `metrics.detail: source_kind`.
DETAILED = re.compile(r"^egresswatch_step_(duration_seconds_(bucket|sum|count)|results_total)$")


def test_a_grafana_dashboard_on_a_prometheus_datasource_variable() -> None:
    dashboard = load()
    assert dashboard["uid"] == "egresswatch" and 36 <= dashboard["schemaVersion"] <= 41
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("target", "source"):
        assert variables[name]["type"] == "query", name
        assert variables[name]["multi"] and variables[name]["includeAll"], name
        assert variables[name]["allValue"] == ".*", name  # a regex: matchers use =~
        assert variables[name]["datasource"]["uid"] == DATASOURCE, name
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    for panel in panels(dashboard):
        assert panel["datasource"] == {"type": "prometheus", "uid": DATASOURCE}, panel["title"]
        assert panel["description"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == DATASOURCE, panel["title"]
    for annotation in dashboard["annotations"]["list"]:
        if "expr" in annotation:
            assert annotation["datasource"]["uid"] == DATASOURCE


def test_panels_do_not_overlap() -> None:
    taken: dict[tuple[int, int], str] = {}
    for panel in load()["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in taken, f"{panel['title']} overlaps {taken[(x, y)]}"
                taken[(x, y)] = panel["title"]


def test_every_query_parses() -> None:
    found = queries(load())
    assert len(found) >= 15
    for query in found:
        reads(substitute(query.expr, ALL))  # ValueError naming the expression


def test_it_shows_what_an_engineer_on_call_needs() -> None:
    read: set[str] = set()
    for query in queries(load()):
        read |= reads(substitute(query.expr, ALL)).metrics
    assert read >= {
        "egresswatch_step_up",  # the targets x sources grid
        "egresswatch_first_failing_step",  # the first failing step, now and over time
        "egresswatch_step_duration_seconds_bucket",  # per-step latency
        "egresswatch_step_results_total",
        "egresswatch_incidents_open",  # incidents, and their annotations
        "egresswatch_sources",  # designated sources missing
        "egresswatch_scheduler_lateness_seconds_bucket",  # its own health
        "egresswatch_ingest_batches_total",
        "egresswatch_database_errors_total",
        "egresswatch_buffer_depth",
        "egresswatch_http_connections_refused_total",
        "egresswatch_agent_rounds_dropped_total",
        "up",
    }
    dashboard = load()
    incidents = [a for a in dashboard["annotations"]["list"] if "expr" in a]
    assert ["egresswatch_incidents_open" in a["expr"] for a in incidents] == [True]
    types = {panel["title"]: panel["type"] for panel in panels(dashboard)}
    assert types["Health: targets \u00d7 sources"] == "table"
    assert types["First failing step over time"] == "state-timeline"


def _selectors(query: Query, values: dict[str, str]) -> list[promql_parser.VectorSelector]:
    found: list[promql_parser.VectorSelector] = []

    def visit(node: promql_parser.Expr) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            found.append(node)

    promql_parser.walk(promql_parser.parse(substitute(query.expr, values)), visit)
    return found


def _grouped_by(query: Query) -> set[str]:
    labels: set[str] = set()

    def visit(node: promql_parser.Expr) -> None:
        if isinstance(node, promql_parser.AggregateExpr) and node.modifier is not None:
            labels.update(node.modifier.labels)

    promql_parser.walk(promql_parser.parse(substitute(query.expr, ALL)), visit)
    return labels


def test_latency_and_results_queries_work_without_a_source_label() -> None:
    """Under `metrics.detail: source_kind` the histogram and the results counter have no
    `source`: a query on them may filter by source only with a matcher that also accepts
    the absent label (""), and may not group by it."""
    one_source = {**ALL, "source": "aks-nodepool1-12345678-vmss000002"}
    checked = 0
    for query in queries(load()):
        selectors = [s for s in _selectors(query, one_source) if DETAILED.match(s.name or "")]
        for selector in selectors:
            checked += 1
            for matcher in selector.matchers.matchers:
                if matcher.name == "source":
                    assert matcher.op == promql_parser.MatchOp.Re, query.where
                    assert re.fullmatch(matcher.value, ""), query.where
        if selectors:
            assert "source" not in _grouped_by(query), query.where
    assert checked >= 2
