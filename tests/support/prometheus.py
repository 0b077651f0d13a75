"""Prometheus for the tests: what a PromQL expression reads, what a live /metrics exports,
promtool, and a real Prometheus server (Debian's binary) on loopback.

For the alert rules and the dashboard: each expression must name only metrics that a running
egresswatch really exports, and only labels those metrics carry; and, end to end, a real
Prometheus scraping egresswatch must fire the alerts and answer the dashboard's queries.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import promql_parser
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.support.service import free_port, poll

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
    return binary("promtool")


def shorten_for(rules_text: str, duration: str) -> str:
    """A copy of a rule file with every rule's `for:` set to `duration` (a test cannot wait
    the production durations; the expressions are untouched)."""
    document = yaml.safe_load(rules_text)
    for group in document["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = duration
    return str(yaml.safe_dump(document, sort_keys=False))


def binary(name: str) -> str:
    """The path of Debian's `prometheus` package binary `name`; skips without it (fails on
    CI: `.ci/run` installs the package)."""
    found = shutil.which(name)
    if found is None:
        message = f"no {name}: apt-get install --no-install-recommends prometheus"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return found


class RunningPrometheus:
    """A Prometheus server of this test: its HTTP API on 127.0.0.1."""

    def __init__(self, url: str, process: asyncio.subprocess.Process) -> None:
        self.url = url
        self.process = process

    async def api(self, path: str, **params: str) -> Any:
        """The `data` of a successful answer of /api/v1/`path` (AssertionError otherwise)."""
        timeout = aiohttp.ClientTimeout(total=5)
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(f"{self.url}/api/v1/{path}", params=params) as response,
        ):
            document = await response.json()
        assert document.get("status") == "success", (path, params, document)
        return document["data"]

    async def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector `expr` gives now (a list of {metric, value})."""
        data = await self.api("query", query=expr)
        assert data["resultType"] == "vector", (expr, data)
        return list(data["result"])

    async def alerts(self) -> list[dict[str, Any]]:
        """Every pending and firing alert ({labels, annotations, state, ...})."""
        return list((await self.api("alerts"))["alerts"])


@asynccontextmanager
async def prometheus_server(
    folder: Path,
    scrape: Mapping[str, list[str]],
    rule_files: list[Path],
    interval: str = "1s",
) -> AsyncIterator[RunningPrometheus]:
    """Run Debian's Prometheus on 127.0.0.1 (a free port) with its data in `folder`, scraping
    each job of `scrape` (job name -> host:port list) and evaluating `rule_files` every
    `interval`; stopped (SIGTERM, then SIGKILL) by its process at exit."""
    config = {
        "global": {
            "scrape_interval": interval,
            "scrape_timeout": interval,
            "evaluation_interval": interval,
        },
        "rule_files": [str(path) for path in rule_files],
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": targets}]}
            for job, targets in scrape.items()
        ],
    }
    config_file = folder / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(config))
    port = free_port()
    log = (folder / "prometheus.log").open("wb")  # read it when a test fails
    process = await asyncio.create_subprocess_exec(
        binary("prometheus"),
        f"--config.file={config_file}",
        f"--storage.tsdb.path={folder / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=log,
    )
    running = RunningPrometheus(f"http://127.0.0.1:{port}", process)
    try:
        await poll(lambda: _ready(running), 20)
        yield running
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                async with asyncio.timeout(10):
                    await process.wait()
            except TimeoutError:
                process.kill()
                await process.wait()
        log.close()


async def _ready(prometheus: RunningPrometheus) -> bool:
    if prometheus.process.returncode is not None:
        raise RuntimeError(f"prometheus exited with {prometheus.process.returncode}")
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session,
            session.get(f"{prometheus.url}/-/ready") as response,
        ):
            return response.status == 200
    except aiohttp.ClientError:
        return False
