"""The RBAC rules the chart grants are derived from the one list of API calls
(kube/api_calls.py), and a watch outside that list is refused before it is made."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from egresswatch.kube import rbac
from egresswatch.kube.api_calls import CALLS, NODES, PODS, ApiCall, Resource
from egresswatch.kube.watch import WatchSpec

RULES_FILE = Path(__file__).resolve().parent.parent / "charts/egresswatch/files/rbac-rules.yaml"


def test_the_minimal_rules() -> None:
    """Read-only (list, watch) on exactly what is watched: Nodes and Namespaces cluster-wide;
    Pods, ConfigMaps and NetworkPolicies (Cilium's and Calico's too, watched where their CRDs
    are installed) in the namespaces the chart binds the Role in; the leader election's get,
    create, update of its Lease (in the controller's namespace); and the one cluster-scoped
    write: TokenReviews (an agent's projected token checked)."""
    assert rbac.rules() == {
        "clusterRole": [
            {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"]},
            {"apiGroups": [""], "resources": ["nodes"], "verbs": ["list", "watch"]},
            {
                "apiGroups": ["authentication.k8s.io"],
                "resources": ["tokenreviews"],
                "verbs": ["create"],
            },
        ],
        "role": [
            {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["list", "watch"]},
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]},
            {
                "apiGroups": ["cilium.io"],
                "resources": ["ciliumnetworkpolicies"],
                "verbs": ["list", "watch"],
            },
            {
                "apiGroups": ["coordination.k8s.io"],
                "resources": ["leases"],
                "verbs": ["create", "get", "update"],
            },
            {
                "apiGroups": ["crd.projectcalico.org"],
                "resources": ["networkpolicies"],
                "verbs": ["list", "watch"],
            },
            {
                "apiGroups": ["networking.k8s.io"],
                "resources": ["networkpolicies"],
                "verbs": ["list", "watch"],
            },
        ],
    }


def test_a_new_call_becomes_a_new_rule() -> None:
    events = Resource("events.k8s.io", "v1", "events", "Event", namespaced=True)
    calls = (*CALLS, ApiCall(events, "create", True), ApiCall(events, "patch", True))
    role = rbac.rules(calls)["role"]
    assert {
        "apiGroups": ["events.k8s.io"],
        "resources": ["events"],
        "verbs": ["create", "patch"],
    } in role


def test_the_charts_rules_file_is_current() -> None:
    """Regenerate with: python -c 'from egresswatch.kube.rbac import rules_yaml;
    print(rules_yaml(), end="")' > charts/egresswatch/files/rbac-rules.yaml"""
    assert RULES_FILE.read_text() == rbac.rules_yaml()
    assert yaml.safe_load(RULES_FILE.read_text()) == rbac.rules()


def test_a_watch_outside_the_list_is_refused() -> None:
    with pytest.raises(ValueError, match=r"list nodes in a namespace is not in api_calls\.CALLS"):
        WatchSpec(NODES, namespace="kube-system")
    WatchSpec(PODS, namespace="payments")  # granted: no error
    with pytest.raises(ValueError, match="pods cluster-wide"):
        WatchSpec(PODS)  # pods are watched per namespace only: no cluster-wide grant
