"""The Grafana dashboard (charts/egresswatch/files/dashboard.json) as the tests read it: every
PromQL query it sends to Prometheus, with Grafana's template variables substituted.

A query is a panel target's `expr`, an annotation's `expr`, or a query variable's
`label_values(SELECTOR, LABEL)`, read as the PromQL `count by (LABEL) (SELECTOR)`: it parses,
names metrics and labels, and returns data exactly when the variable would have values.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DASHBOARD = (
    Path(__file__).resolve().parents[2] / "charts" / "egresswatch" / "files" / "dashboard.json"
)
_LABEL_VALUES = re.compile(r"^label_values\((?P<selector>.+),\s*(?P<label>\w+)\)$", re.DOTALL)
_VARIABLE = re.compile(r"\$(?:\{(\w+)(?::\w+)?\}|(\w+))")

Dashboard = dict[str, Any]


@dataclass(frozen=True)
class Query:
    """One PromQL query of the dashboard, and where it is (for messages)."""

    where: str
    expr: str


def load(path: Path = DASHBOARD) -> Dashboard:
    document: Dashboard = json.loads(path.read_text())
    return document


def panels(dashboard: Dashboard) -> list[dict[str, Any]]:
    """Every panel but rows (and the panels of collapsed rows)."""
    found = []
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            found.extend(panel.get("panels", []))
        else:
            found.append(panel)
    return found


def queries(dashboard: Dashboard) -> list[Query]:
    """Every PromQL query the dashboard sends, as written (variables not substituted)."""
    found = [
        Query(f"panel {panel['title']!r} {target['refId']}", target["expr"])
        for panel in panels(dashboard)
        for target in panel["targets"]
    ]
    for annotation in dashboard["annotations"]["list"]:
        if "expr" in annotation:
            found.append(Query(f"annotation {annotation['name']!r}", annotation["expr"]))
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            text = variable["query"]["query"]
            match = _LABEL_VALUES.match(text)
            if match is None:
                raise ValueError(f"variable {variable['name']}: not label_values(...): {text}")
            expr = f"count by ({match['label']}) ({match['selector']})"
            found.append(Query(f"variable {variable['name']!r}", expr))
    return found


def substitute(expr: str, values: dict[str, str]) -> str:
    """`expr` with `$name`, `${name}` and `${name:format}` replaced by `values[name]`
    (KeyError naming an unknown variable)."""

    def value(match: re.Match[str]) -> str:
        name = match[1] or match[2]
        if name not in values:
            raise KeyError(f"no value for the variable {name} in {expr}")
        return values[name]

    return _VARIABLE.sub(value, expr)
