"""The v1 API's JSON documents, built from model and storage types (pure; no I/O).

Times are RFC 3339 in UTC with a `Z`; vocabularies are their `.value`; structured evidence is
made JSON-safe (enums to values, datetimes to text, anything else unknown to its `str`).
`openapi.py` describes exactly these shapes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Any
from urllib.parse import urlsplit

from egresswatch.controller.params import iso, iso_or_none
from egresswatch.model import Change, RoundResult, Step, StepState, Verdict
from egresswatch.report import step_document
from egresswatch.settings import Settings, TargetSettings
from egresswatch.storage import IncidentRecord, StateRecord, Timeline, TimelinePoint

Document = dict[str, Any]

_STEP_ORDER = {step: i for i, step in enumerate(Step)}


def json_safe(value: Any, depth: int = 0) -> Any:
    """`value` as plain JSON data: mappings, lists, strings, finite numbers, booleans, null."""
    if depth > 32:
        return str(value)
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, Enum):
        return json_safe(value.value, depth + 1)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, datetime):
        return iso(value) if value.utcoffset() is not None else value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): json_safe(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [json_safe(v, depth + 1) for v in value]
    return str(value)


def _code(value: Enum | None) -> Any:
    return value.value if value is not None else None


# -- changes and incidents ----------------------------------------------------------------------


def change_document(change: Change) -> Document:
    return {
        "source": change.source,
        "target": change.target,
        "step": _code(change.step),
        "previous": change.previous.value,
        "current": change.current.value,
        "started_at": iso(change.started_at),
        "detected_at": iso(change.detected_at),
        "reason": _code(change.reason),
        "detail": change.detail,
    }


def incident_document(incident: IncidentRecord) -> Document:
    return {
        "id": incident.id,
        "target": incident.target,
        "started_at": iso(incident.started_at),
        "detected_at": iso(incident.detected_at),
        "ended_at": iso_or_none(incident.ended_at),
        "open": incident.open,
        "sources": list(incident.sources),
        "first_failing_step": _code(incident.first_failing_step),
        "suspect": incident.suspect.value,
        "evidence": list(incident.evidence),
        "next_command": incident.next_command,
        "history": [json_safe(entry) for entry in incident.history],
    }


def page_document(items: Sequence[Document], next_cursor: str | None) -> Document:
    return {"items": list(items), "next_cursor": next_cursor}


# -- status -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceStatus:
    """One source's standing towards one target, from its step states."""

    source: str
    states: tuple[StateRecord, ...]

    @property
    def failing(self) -> list[StateRecord]:
        failing = [s for s in self.states if s.step is not None and s.state is StepState.FAILING]
        return sorted(failing, key=lambda s: _STEP_ORDER[s.step] if s.step else -1)

    def state(self) -> StepState:
        """unknown (silent, or never judged) > failing > degraded > ok."""
        pair = next((s for s in self.states if s.step is None), None)
        if not self.states or (pair is not None and pair.state is StepState.UNKNOWN):
            return StepState.UNKNOWN
        if self.failing:
            return StepState.FAILING
        if any(s.state is StepState.DEGRADED for s in self.states):
            return StepState.DEGRADED
        return StepState.OK

    def since(self, state: StepState) -> datetime | None:
        """When the current state began: the earliest flip into a bad state still held, or
        the latest flip of all for ok (the moment the last step came back)."""
        if state is StepState.UNKNOWN:
            pair = next((s for s in self.states if s.step is None), None)
            return pair.since if pair is not None and pair.state is state else None
        if state is StepState.OK:
            return max(s.since for s in self.states)
        return min(s.since for s in self.states if s.step is not None and s.state is state)

    def document(self) -> Document:
        state = self.state()
        failing = self.failing
        first = failing[0] if failing else None
        return {
            "source": self.source,
            "healthy": first is None,
            "state": state.value,
            "first_failing_step": _code(first.step) if first else None,
            "reason": _code(first.reason) if first else None,
            "since": iso_or_none(self.since(state)),
            "steps": [
                {
                    "step": _code(s.step),
                    "state": s.state.value,
                    "reason": _code(s.reason),
                    "since": iso(s.since),
                    "updated_at": iso(s.updated_at),
                }
                for s in self.states
            ],
        }


def status_document(
    settings: Settings, states: Sequence[StateRecord], sources: Sequence[str], now: datetime
) -> Document:
    """Per configured target, per source seen: healthy or not, first failing step, since."""
    by_pair: dict[tuple[str, str], list[StateRecord]] = {}
    for record in states:
        by_pair.setdefault((record.target, record.source), []).append(record)
    targets = []
    for target in settings.targets:
        names = sorted({*sources, *(s for t, s in by_pair if t == target.name)})
        rows = [SourceStatus(name, tuple(by_pair.get((target.name, name), ()))) for name in names]
        documents = [row.document() for row in rows]
        targets.append(
            {
                "target": target.name,
                "role": target.role.value,
                "url": target.endpoint.url,
                "healthy": all(d["healthy"] for d in documents),
                "sources": documents,
            }
        )
    return {
        "generated_at": iso(now),
        "healthy": all(t["healthy"] for t in targets),
        "targets": targets,
    }


# -- rounds, timelines, verdicts ----------------------------------------------------------------


def round_summary(result: RoundResult) -> Document:
    """A stored round: when, its first failing step, and every step as the checklist shows it."""
    first = result.first_failing_step
    return {
        "target": result.target,
        "source": result.source,
        "started_at": iso(result.started_at),
        "first_failing_step": _code(first),
        "steps": [json_safe(step_document(step)) for step in result.steps],
    }


def point_document(point: TimelinePoint) -> Document:
    return {
        "time": iso(point.time),
        "source": point.source,
        "step": point.step.value,
        "count": point.count,
        "failures": point.failures,
        "skipped": point.skipped,
        "errors": point.errors,
        "p50_s": json_safe(point.p50_s),
        "p95_s": json_safe(point.p95_s),
        "p99_s": json_safe(point.p99_s),
        "max_s": json_safe(point.max_s),
        "status": _code(point.status),
        "reason": _code(point.reason),
    }


def timeline_document(timeline: Timeline) -> Document:
    return {
        "target": timeline.target,
        "from": iso(timeline.start),
        "to": iso(timeline.end),
        "resolution": timeline.resolution.value,
        "points": [point_document(p) for p in timeline.points],
    }


def verdict_document(verdict: Verdict) -> Document:
    return {
        "suspect": verdict.suspect.value,
        "first_failing_step": _code(verdict.first_failing_step),
        "evidence": list(verdict.evidence),
        "next_command": verdict.next_command,
        "facts": json_safe(verdict.facts),
    }


# -- the agent's plan ---------------------------------------------------------------------------


def plan_target(settings: Settings, target: TargetSettings) -> Document:
    """What an agent needs to probe one target: every default filled in, durations in seconds."""
    interval, timeout, step_timeout = settings.timing(target)
    probes = settings.probes
    return {
        "name": target.name,
        "url": target.url,
        "address": target.address,
        "role": target.role.value,
        "interval_s": interval,
        "timeout_s": timeout,
        "step_timeout_s": step_timeout,
        "expect_status": str(target.expect_status or probes.expect_status),
        "method": target.method or probes.method,
        "trace_every_s": probes.trace_every,
        "trace_max_hops": probes.trace_max_hops,
        "trace_hop_timeout_s": probes.trace_hop_timeout,
        "pinned_ips": [str(ip) for ip in target.pinned_ips],
        "use_proxy": target.use_proxy,
    }


def public_proxy_url(settings: Settings) -> str | None:
    """The configured proxy's URL without its user and password, for plans and next commands."""
    if settings.proxy is None:
        return None
    text = settings.proxy.url.strip()
    parts = urlsplit(text if "://" in text else f"http://{text}")
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:  # settings validated it; never echo a malformed one
        return None
    return f"{parts.scheme.lower()}://{host}{port}"


def plan_document(settings: Settings, source: str, now: datetime) -> Document:
    """The whole plan. Never a secret: the proxy's URL loses its user and password, and only
    says whether the proxy wants credentials (the agent holds its own)."""
    proxy = settings.proxy
    url = public_proxy_url(settings)
    return {
        "source": source,
        "generated_at": iso(now),
        "targets": [plan_target(settings, t) for t in settings.targets],
        "dns": {"upstream": settings.dns.upstream},
        "proxy": (
            None
            if proxy is None or url is None
            else {
                "url": url,
                "no_proxy": list(proxy.no_proxy),
                "authenticated": proxy.username is not None
                or urlsplit(proxy.url if "://" in proxy.url else f"http://{proxy.url}").username
                is not None,
            }
        ),
        "proxy_from_environment": settings.proxy_from_environment,
    }
