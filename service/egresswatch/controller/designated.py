"""Designated sources as the controller shows them: in `/api/v1/status` and in the
`egresswatch_sources{state}` metric.

The cluster side (kube/discovery.py) says which sources should exist; wiring.py connects it
here through `Designated`, so the controller never talks to the API server. A designated
source is, in a closed vocabulary:

- `reporting`: its rounds arrive;
- `unknown`: it reported, then went silent (stale): shown, never a connectivity failure;
- `missing`: it never reported (no agent there yet, or one that cannot reach us): shown,
  never a connectivity failure and never an incident.

A retired source (no longer designated) is listed under `retired` until detection forgets it
(when it is silent), and from then on appears nowhere.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from egresswatch.kube.sources import ExpectedSource
from egresswatch.model import StepState
from egresswatch.storage import StateRecord

__all__ = ["Designated", "Standing", "designated_document", "standings"]

Document = dict[str, Any]


class Standing(StrEnum):
    REPORTING = "reporting"
    UNKNOWN = "unknown"
    MISSING = "missing"


@dataclass(frozen=True)
class Designated:
    """The seam: what the cluster designates, read when asked (wiring connects Discovery)."""

    synced: Callable[[], bool]
    expected: Callable[[], Mapping[str, ExpectedSource]]
    retired: Callable[[], Mapping[str, datetime]]

    def is_retired(self, source: str) -> bool:
        """No longer designated: its node left, or no replica of its workload runs there."""
        return self.synced() and source in self.retired()


def standings(
    expected: Iterable[str], states: Sequence[StateRecord], known: Iterable[str]
) -> dict[str, Standing]:
    """Each expected source's standing, from the stored step states and the sources that
    ever reported (`known`): silent towards every target it has states for is unknown; known
    otherwise is reporting; never seen is missing."""
    targets: dict[str, set[str]] = {}  # source -> its targets
    silent: dict[str, set[str]] = {}  # source -> the targets it is silent towards
    for record in states:
        targets.setdefault(record.source, set()).add(record.target)
        if record.step is None and record.state is StepState.UNKNOWN:
            silent.setdefault(record.source, set()).add(record.target)
    seen = set(known) | set(targets)
    out: dict[str, Standing] = {}
    for name in expected:
        if name not in seen:
            out[name] = Standing.MISSING
        elif name in targets and silent.get(name) == targets[name]:
            out[name] = Standing.UNKNOWN
        else:
            out[name] = Standing.REPORTING
    return out


def designated_document(
    designated: Designated, states: Sequence[StateRecord], known: Iterable[str]
) -> Document:
    """The `designated` part of `/api/v1/status`."""
    expected = designated.expected()
    standing = standings(expected, states, known)
    sources = []
    for name in sorted(expected):
        source = expected[name]
        workload = source.workload
        sources.append(
            {
                "source": name,
                "kind": source.kind.value,
                "state": standing[name].value,
                "node": source.node,
                "workload": None
                if workload is None
                else {
                    "namespace": workload.namespace,
                    "kind": workload.kind,
                    "name": workload.name,
                },
                "pods": [{"name": p.name, "ip": p.ip} for p in source.pods],
            }
        )
    return {
        "synced": designated.synced(),
        "sources": sources,
        "retired": sorted(designated.retired()),
    }
