"""Prometheus for the tests: what a PromQL expression reads, what a live /metrics exports, and
promtool.

For the alert rules now and the dashboard later: each expression must name only metrics that a
running egresswatch really exports, and only labels those metrics carry.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field

import promql_parser
import pytest
from prometheus_client.parser import text_string_to_metric_families

# Labels Prometheus adds to every scraped series: never in /metrics, always in a query.
TARGET_LABELS = frozenset({"job", "instance"})


@dataclass
class Reads:
    """What one PromQL expression reads: the metric names it selects, the label names it
    matches on, and the values it wants for them (label name -> values)."""

    metrics: set[str] = field(default_factory=set)
    labels: set[str] = field(default_factory=set)
    values: dict[tuple[str, str], set[str]] = field(default_factory=dict)  # (metric, label)


def reads(expression: str) -> Reads:
    """Parse `expression` (ValueError when it is not PromQL) and list what it reads."""
    found = Reads()

    def visit(node: promql_parser.Expr) -> None:
        if isinstance(node, promql_parser.VectorSelector) and node.name is not None:
            found.metrics.add(node.name)
            for matcher in node.matchers.matchers:
                found.labels.add(matcher.name)
                if matcher.op == promql_parser.MatchOp.Equal:
                    key = (node.name, matcher.name)
                    found.values.setdefault(key, set()).add(matcher.value)
        elif isinstance(node, promql_parser.AggregateExpr) and node.modifier is not None:
            found.labels.update(node.modifier.labels)
        elif isinstance(node, promql_parser.BinaryExpr) and node.modifier is not None:
            if node.modifier.matching is not None:
                found.labels.update(node.modifier.matching.labels)
            found.labels.update(node.modifier.group_labels or [])

    try:
        tree = promql_parser.parse(expression)
    except Exception as error:  # the parser's own exception type is not exported
        raise ValueError(f"not PromQL: {error}: {expression}") from None
    promql_parser.walk(tree, visit)
    return found


@dataclass
class Exported:
    """What one or more /metrics pages export: every sample name (a histogram's _bucket, _sum
    and _count, a counter's _total) with the label names and values seen on it."""

    labels: dict[str, dict[str, set[str]]] = field(default_factory=dict)

    def add(self, text: str) -> None:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                seen = self.labels.setdefault(sample.name, {})
                for name, value in sample.labels.items():
                    seen.setdefault(name, set()).add(value)

    def problems(self, expression: str, *, recorded: set[str]) -> list[str]:
        """What `expression` names that is not exported: metrics (other than `recorded` ones
        and Prometheus' own `up`), labels on none of its metrics, values never seen."""
        wanted = reads(expression)
        found = []
        known = {"up"} | recorded
        for metric in sorted(wanted.metrics - known):
            if metric not in self.labels:
                found.append(f"{metric} is not exported")
        carried = set(TARGET_LABELS)
        for metric in wanted.metrics & set(self.labels):
            carried |= set(self.labels[metric])
        if wanted.metrics & known:
            carried |= wanted.labels  # `up` and recorded series: their labels are not ours
        for label in sorted(wanted.labels - carried):
            found.append(f"label {label} is on none of {sorted(wanted.metrics)}")
        for (metric, label), values in sorted(wanted.values.items()):
            seen = self.labels.get(metric, {}).get(label)
            if seen is not None and not values <= seen:
                found.append(f"{metric}{{{label}}} is never {sorted(values - seen)}")
        return found


def promtool() -> str:
    """promtool's path; skips without it (fails on CI: `.ci/run` installs Debian's prometheus)."""
    found = shutil.which("promtool")
    if found is None:
        message = "no promtool: apt-get install --no-install-recommends prometheus"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return found
