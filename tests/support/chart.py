"""The Helm chart rendered offline with the Helm library that helm-python-sdk bundles.

`render(values)` gives the rendered objects (NOTES.txt and empty templates left out), each a
dict as `kubectl apply` would read it; `ALL_ON` turns every flag of values.yaml on.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python
import yaml

CHART = Path(__file__).resolve().parents[2] / "charts" / "egresswatch"
RELEASE, NAMESPACE = "ew", "egresswatch"

POSTGRES_URL = "postgresql+asyncpg://egresswatch:secret@db.example.internal:5432/egresswatch"

# Every flag on: PostgreSQL, two controllers, the read and run tokens, pod sources in two
# namespaces, every monitoring object on the AKS managed Prometheus' group.
ALL_ON: dict[str, Any] = {
    "database": {"type": "postgresql", "url": POSTGRES_URL},
    "auth": {"read": {"enabled": True}, "run": {"enabled": True}},
    "controller": {"replicas": 2},
    "podAgents": {"namespaces": [{"name": "payments"}, {"name": "checkout", "replicas": 3}]},
    "monitoring": {
        "labels": {"release": "kube-prometheus-stack"},
        "serviceMonitor": {"enabled": True},
        "podMonitor": {"enabled": True},
        "prometheusRule": {"enabled": True},
        "dashboard": {"enabled": True},
    },
}

Obj = dict[str, Any]


def render(values: dict[str, Any] | None = None, chart: Path = CHART) -> list[Obj]:
    """Every object the chart renders for `values` (hooks included), in template order."""
    with helm_python.Chart.load(chart) as loaded:
        manifests = loaded.render(
            values=copy.deepcopy(values or {}), name=RELEASE, namespace=NAMESPACE, is_install=True
        )
    objects: list[Obj] = []
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            continue
        objects.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return objects


def of_kind(objects: list[Obj], kind: str) -> list[Obj]:
    return [obj for obj in objects if obj["kind"] == kind]


def one(objects: list[Obj], kind: str, name: str | None = None) -> Obj:
    found = [o for o in of_kind(objects, kind) if name is None or o["metadata"]["name"] == name]
    assert len(found) == 1, f"{len(found)} {kind} named {name}"
    return found[0]


def pod_specs(objects: list[Obj]) -> Iterator[tuple[Obj, Obj]]:
    """(workload, its pod spec) for every Deployment, DaemonSet and Job."""
    for obj in objects:
        if obj["kind"] in {"Deployment", "DaemonSet", "Job"}:
            yield obj, obj["spec"]["template"]["spec"]


def config_of(objects: list[Obj]) -> str:
    """The controller's config file as the ConfigMap holds it."""
    return str(one(objects, "ConfigMap", f"{RELEASE}-egresswatch")["data"]["config.yaml"])
