"""The v1 API's JSON documents, built from model and storage types (pure; no I/O).

Times are RFC 3339 in UTC with a `Z`; vocabularies are their `.value`; structured evidence is
made JSON-safe (enums to values, datetimes to text, anything else unknown to its `str`).
`openapi.py` describes exactly these shapes.
"""

from __future__ import annotations

import json
import math
import operator
from collections.abc import Mapping, Sequence
from datetime import datetime
from enum import Enum
from typing import Any

from egresswatch.controller.api.query import iso, iso_or_none
from egresswatch.kube.changes import ClusterChange
from egresswatch.model import Change, Reason, RoundResult, Step, StepState, Verdict
from egresswatch.report import step_document
from egresswatch.settings import Settings
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


def incident_document(
    incident: IncidentRecord, cluster_changes: Sequence[ClusterChange] = ()
) -> Document:
    """An incident, with the cluster changes attached to it when it opened."""
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
        "cluster_changes": [cluster_change_document(c) for c in cluster_changes],
    }


def cluster_change_document(change: ClusterChange) -> Document:
    return {
        "seen_at": iso(change.seen_at),
        "kind": change.kind,
        "namespace": change.namespace,
        "name": change.name,
        "action": change.action,
        "details": list(change.details),
        "summary": change.summary,
    }


def page_document(items: Sequence[Document], next_cursor: str | None) -> Document:
    return {"items": list(items), "next_cursor": next_cursor}


# -- status -------------------------------------------------------------------------------------


# The status document holds every step state of every (target, source): thousands of entries,
# built on each request. Their codes are looked up here (a StrEnum's `.value` is a Python-level
# property, five times slower), and each source is read in one pass.
_CODES: dict[str, str] = {
    member: member.value for kind in (Step, StepState, Reason) for member in kind
}


def _step_state_document(record: StateRecord) -> Document:
    step, reason = record.step, record.reason
    return {
        "step": None if step is None else _CODES[step],
        "state": _CODES[record.state],
        "reason": None if reason is None else _CODES[reason],
        "since": iso(record.since),
        "updated_at": iso(record.updated_at),
    }


def source_status_document(source: str, states: Sequence[StateRecord]) -> Document:
    """One source's standing towards one target, from its step states (one pass over them).

    - `state`: unknown (silent, or never judged) > failing > degraded > ok;
    - `first_failing_step`, `reason`: the failing step first in checklist order;
    - `since`: when the current state began: for unknown the silence's start, for failing or
      degraded the earliest flip into it still held, for ok the latest flip of all (the moment
      the last step came back).
    """
    pair: StateRecord | None = None  # the whole pair's state (step None)
    first: StateRecord | None = None  # the first failing step, in checklist order
    first_order = len(_STEP_ORDER)
    failing_since: datetime | None = None
    degraded_since: datetime | None = None
    degraded = False
    latest: datetime | None = None
    steps = []
    for record in states:
        step, state, since = record.step, record.state, record.since
        if step is None:
            if pair is None:
                pair = record
        elif state is StepState.FAILING:
            order = _STEP_ORDER[step]
            if order < first_order:
                first, first_order = record, order
            if failing_since is None or since < failing_since:
                failing_since = since
        elif state is StepState.DEGRADED:
            # Only the steps say degraded: the whole pair's record keeps the state it came
            # back from silence with, which a step that recovered since no longer holds.
            degraded = True
            if degraded_since is None or since < degraded_since:
                degraded_since = since
        if latest is None or since > latest:
            latest = since
        steps.append(_step_state_document(record))

    current: datetime | None
    if not steps or (pair is not None and pair.state is StepState.UNKNOWN):
        state, current = StepState.UNKNOWN, pair.since if pair is not None else None
    elif first is not None:
        state, current = StepState.FAILING, failing_since
    elif degraded:
        state, current = StepState.DEGRADED, degraded_since
    else:
        state, current = StepState.OK, latest
    return {
        "source": source,
        "healthy": first is None,
        "state": _CODES[state],
        "first_failing_step": None if first is None else _code(first.step),
        "reason": None if first is None else _code(first.reason),
        "since": iso_or_none(current),
        "steps": steps,
    }


class StatusDocuments:
    """Builds status documents (and their JSON), reusing each source's part of the previous
    one when its step states are the very same record objects as then.

    `History.states()` gives the same (immutable) record for a state unchanged since its
    previous call, and a source's part depends only on its name and its records, so between two
    requests only the sources whose states changed are rendered and encoded again: rendering
    and encoding thousands of step states costs more than reading them. What is kept of a part
    is its JSON and whether it is healthy, not its objects: seven dicts a (source, target)
    were 2 KB a target, held between requests (docs/performance.md, "How cost grows with
    targets"); :meth:`document` reads the JSON back.
    """

    def __init__(self) -> None:
        # (target, source) -> (its records, healthy, the part as JSON), of the last document.
        self._parts: dict[tuple[str, str], tuple[Sequence[StateRecord], bool, str]] = {}
        # A target's url or address -> its endpoint's URL (parsing it costs ~40 us a target).
        self._urls: dict[str, str] = {}

    def json_text(
        self,
        settings: Settings,
        states: Sequence[StateRecord],
        sources: Sequence[str],
        now: datetime,
        extra: Document | None = None,
    ) -> str:
        """The status document as JSON (per configured target, per source seen: healthy or
        not, first failing step, since; `extra`'s entries, the designated sources, before the
        targets), each source's part encoded only when its records changed."""
        by_target: dict[str, dict[str, list[StateRecord]]] = {}
        for record in states:
            by_target.setdefault(record.target, {}).setdefault(record.source, []).append(record)
        before, urls_before = self._parts, self._urls
        parts: dict[tuple[str, str], tuple[Sequence[StateRecord], bool, str]] = {}
        urls: dict[str, str] = {}
        targets, healthy = [], True
        for target in settings.targets:
            location = target.url or target.address or ""
            url = urls_before.get(location)
            if url is None:
                url = target.endpoint.url
            urls[location] = url
            pairs = by_target.get(target.name, {})
            texts, all_healthy = [], True
            for name in sorted({*sources, *pairs}):
                key = (target.name, name)
                records: Sequence[StateRecord] = pairs.get(name, ())
                seen = before.get(key)
                if seen is None or not _same(seen[0], records):
                    part = source_status_document(name, records)
                    seen = (records, bool(part["healthy"]), json.dumps(part))
                parts[key] = seen
                texts.append(seen[2])
                all_healthy = all_healthy and seen[1]
            healthy = healthy and all_healthy
            document: Document = {
                "target": target.name,
                "role": target.role.value,
                "url": url,
                "healthy": all_healthy,
                "sources": [],
            }
            targets.append(_json_ending_with_list(document, "sources", texts))
        self._parts, self._urls = parts, urls
        head = {"generated_at": iso(now), "healthy": healthy, **(extra or {}), "targets": []}
        return _json_ending_with_list(head, "targets", targets)


def _json_ending_with_list(document: Document, key: str, items: Sequence[str]) -> str:
    """`json.dumps(document)`, where `document[key]` is its last entry, a list, and `items` is
    the JSON of each of its elements (json.dumps encodes a value alike wherever it is)."""
    assert next(reversed(document)) == key, f"{key!r} must be the last entry"
    head = json.dumps({k: v for k, v in document.items() if k != key})[:-1]
    return f"{head}{', ' if len(document) > 1 else ''}{json.dumps(key)}: [{', '.join(items)}]}}"


def _same(these: Sequence[StateRecord], those: Sequence[StateRecord]) -> bool:
    """The same record objects, in the same order."""
    return len(these) == len(those) and all(map(operator.is_, these, those))


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
