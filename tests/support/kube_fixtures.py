"""The Kubernetes objects under tests/fixtures/kube/networkpolicies/, as the API serves them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from egresswatch.kube.netpol import PodRef, PolicySnapshot, snapshot_from_api

POLICIES = Path(__file__).resolve().parent.parent / "fixtures" / "kube" / "networkpolicies"
NETWORK_POLICY = "NetworkPolicy"


def objects(*names: str) -> list[dict[str, Any]]:
    """Every object in the named fixture files (`cluster`, `allow-dns`, ...), in order."""
    found: list[dict[str, Any]] = []
    for name in names:
        with (POLICIES / f"{name}.yaml").open() as file:
            found.extend(obj for obj in yaml.safe_load_all(file) if obj)
    return found


def snapshot(*names: str, extra: list[dict[str, Any]] | None = None) -> PolicySnapshot:
    """The cluster fixture plus the named policy files (and `extra` objects): NetworkPolicies
    evaluated, other policy kinds listed as not evaluated ("CiliumNetworkPolicy shop/x")."""
    found = objects("cluster", *names) + (extra or [])
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for obj in found:
        by_kind.setdefault(obj["kind"], []).append(obj)
    others = [
        f"{obj['kind']} {obj['metadata'].get('namespace', '')}/{obj['metadata']['name']}"
        for obj in found
        if obj["kind"] not in (NETWORK_POLICY, "Namespace", "Pod")
    ]
    return snapshot_from_api(
        by_kind.get(NETWORK_POLICY, []),
        by_kind.get("Namespace", []),
        by_kind.get("Pod", []),
        others,
    )


def pod(snapshot_: PolicySnapshot, name_prefix: str) -> PodRef:
    """The snapshot's pod whose name starts with `name_prefix`."""
    return next(p for p in snapshot_.pods if p.name.startswith(name_prefix))
