"""`GET /api/v1/targets/{target}/diagnosis`: the checklist of a target as it stood at a moment.

Per source, the latest round at or before the moment, its first failing step and the verdict
of `diagnosis.diagnose` (controls: the same source's rounds of the control targets; peers: the
other sources' rounds of this target), and the incident open at that moment, if any.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from egresswatch.controller.api import documents as docs
from egresswatch.controller.api.query import iso
from egresswatch.controller.diagnosis.rules import Context, Observation, diagnose
from egresswatch.kube.netpol import PolicyView
from egresswatch.model import Endpoint, Role, RoundResult, SourceKind
from egresswatch.plan_config import public_proxy_url
from egresswatch.settings import Settings
from egresswatch.storage import ClusterChanges, History, IncidentRecord, Store, TargetRecord

# A source whose kind was never registered is diagnosed as a node: the rules that blame a
# NetworkPolicy need to know the failing source is a pod, and must not guess it.
UNKNOWN_KIND_AS = SourceKind.NODE


@dataclass(frozen=True)
class TargetInfo:
    name: str
    role: Role
    url: str
    endpoint: Endpoint | None  # None for a stored target whose URL is not one (never configured)
    configured: bool
    use_proxy: bool = True


@dataclass(frozen=True)
class TargetCatalog:
    """Every target the API may speak of: the configured ones, then those only stored."""

    targets: Mapping[str, TargetInfo]

    @classmethod
    def of(cls, settings: Settings, stored: Sequence[TargetRecord]) -> TargetCatalog:
        targets = {
            r.name: TargetInfo(r.name, r.role, r.url, _endpoint(r.url), configured=False)
            for r in stored
        }
        for t in settings.targets:
            endpoint = t.endpoint
            targets[t.name] = TargetInfo(t.name, t.role, endpoint.url, endpoint, True, t.use_proxy)
        return cls(targets)

    def controls(self) -> list[TargetInfo]:
        return [
            t
            for t in self.targets.values()
            if t.configured and t.role is Role.CONTROL and t.endpoint is not None
        ]


async def _incident(incident: IncidentRecord, store: Store) -> dict[str, object]:
    """The incident open at the moment, with its cluster changes."""
    attached = await ClusterChanges(store.engine).of_incidents([incident.id])
    return docs.incident_document(incident, attached.get(incident.id, ()))


def _endpoint(url: str) -> Endpoint | None:
    try:
        return Endpoint.parse(url)
    except ValueError:
        return None


async def diagnosis_document(
    target: str,
    at: datetime,
    *,
    catalog: TargetCatalog,
    settings: Settings,
    store: Store,
    history: History,
    policies: PolicyView | None = None,
) -> dict[str, object]:
    """The diagnosis document of `target` (which must be in `catalog`) at `at`; `policies`
    (the cluster's NetworkPolicies, as they are now) judge the network_policy step."""
    info = catalog.targets[target]
    known = await store.sources()
    kinds = {s.name: s.kind for s in known}
    nodes = {s.name: s.node for s in known}
    rounds = await history.latest_rounds(at, target=target)
    controls: list[Observation] = []
    for control in catalog.controls():
        if control.name != target:
            found = await history.latest_rounds(at, target=control.name)
            controls.extend(_observation(r, control, kinds, nodes) for r in found)
    incident = await history.incident_at(target, at)
    context = Context(
        egress_devices=tuple(settings.egress_devices),
        upstream=settings.dns.upstream,
        proxy=public_proxy_url(settings) if info.use_proxy else None,
        policies=policies,
    )
    peers = (
        [_observation(r, info, kinds, nodes) for r in rounds] if info.endpoint is not None else []
    )
    sources = []
    for result in sorted(rounds, key=lambda r: r.source):
        verdict = None
        if info.endpoint is not None:
            verdict = diagnose(
                _observation(result, info, kinds, nodes),
                controls=[c for c in controls if c.source == result.source],
                peers=[p for p in peers if p.source != result.source],
                context=context,
            )
        kind = kinds.get(result.source)
        first = result.first_failing_step
        sources.append(
            {
                "source": result.source,
                "source_kind": kind.value if kind is not None else None,
                "first_failing_step": first.value if first is not None else None,
                "round": docs.round_summary(result),
                "verdict": docs.verdict_document(verdict) if verdict is not None else None,
            }
        )
    return {
        "target": target,
        "role": info.role.value,
        "url": info.url,
        "at": iso(at),
        "incident": await _incident(incident, store) if incident is not None else None,
        "sources": sources,
    }


def _observation(
    result: RoundResult,
    info: TargetInfo,
    kinds: Mapping[str, SourceKind | None],
    nodes: Mapping[str, str | None],
) -> Observation:
    assert info.endpoint is not None
    return Observation(
        source=result.source,
        source_kind=kinds.get(result.source) or UNKNOWN_KIND_AS,
        target=info.name,
        role=info.role,
        endpoint=info.endpoint,
        round=result,
        node=nodes.get(result.source),
    )
