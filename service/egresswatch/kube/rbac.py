"""The minimal RBAC rules for the calls in `api_calls.CALLS`.

`rules()` gives the ClusterRole's rules (cluster-scoped calls) and the Role's rules (calls made
inside namespaces: the chart binds that Role in each designated namespace and in kube-system).
`rules_yaml()` is the file the chart reads (`charts/egresswatch/files/rbac-rules.yaml`);
`tests/test_kube_rbac.py` fails when that file is stale.
"""

from __future__ import annotations

from collections.abc import Iterable

import yaml

from egresswatch.kube.api_calls import CALLS, ApiCall

__all__ = ["rules", "rules_yaml"]

Rule = dict[str, list[str]]


def rules(calls: Iterable[ApiCall] = CALLS) -> dict[str, list[Rule]]:
    """{"clusterRole": [...], "role": [...]}: one rule per (apiGroup, resource), verbs sorted,
    rules sorted by group and resource, so the output is stable."""
    verbs: dict[tuple[bool, str, str], set[str]] = {}
    for call in calls:
        key = (call.namespaced, call.resource.group, call.resource.plural)
        verbs.setdefault(key, set()).add(call.verb)
    out: dict[str, list[Rule]] = {"clusterRole": [], "role": []}
    for (namespaced, group, plural), chosen in sorted(verbs.items()):
        rule = {"apiGroups": [group], "resources": [plural], "verbs": sorted(chosen)}
        out["role" if namespaced else "clusterRole"].append(rule)
    return out


def rules_yaml(calls: Iterable[ApiCall] = CALLS) -> str:
    """`rules()` as the YAML file the chart reads, with a header saying where it comes from."""
    header = (
        "# Generated from egresswatch.kube.api_calls.CALLS (egresswatch.kube.rbac.rules_yaml):\n"
        "# do not edit. clusterRole: cluster-scoped calls; role: calls inside the designated\n"
        "# namespaces and kube-system.\n"
    )
    return header + yaml.safe_dump(rules(calls), sort_keys=True, default_flow_style=False)
