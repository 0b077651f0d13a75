"""What a restarted controller reads back: stored incidents and step states as detection's types.

Detection state lives in memory, but everything it is made of is stored: the step states
(what each step's last change set), the open incidents with their history, and the rounds
themselves. These conversions are the inverse of what the pipeline writes, so an incident
read back is equal to the one that was saved, and updating it changes only what changed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from types import MappingProxyType
from typing import Any

from egresswatch.controller.detection.hysteresis import SavedState
from egresswatch.controller.detection.incidents import Incident, IncidentUpdate
from egresswatch.model import Step, StepState, Suspect
from egresswatch.storage import IncidentRecord, StateRecord

RESTORE_ROUNDS = 60  # per (source, target): enough for any hysteresis window and latency warm-up


def saved_states(records: Iterable[StateRecord], targets: set[str]) -> list[SavedState]:
    """The stored states of configured targets, as the detector restores them."""
    return [
        SavedState(r.source, r.target, r.step, r.state, r.since, r.reason)
        for r in records
        if r.target in targets
    ]


def incident_from_record(record: IncidentRecord) -> Incident:
    """The incident a stored record holds (the inverse of `pipeline.incident_record`)."""
    return Incident(
        id=record.id,
        target=record.target,
        started_at=record.started_at,
        detected_at=record.detected_at,
        ended_at=record.ended_at,
        sources=tuple(record.sources),
        first_failing_step=record.first_failing_step,
        suspect=record.suspect,
        evidence=tuple(record.evidence),
        next_command=record.next_command,
        history=tuple(_update(entry) for entry in record.history),
    )


def _update(entry: Mapping[str, Any]) -> IncidentUpdate:
    step = entry.get("first_failing_step")
    states: Mapping[str, Mapping[str, str]] = entry.get("states") or {}
    return IncidentUpdate(
        at=datetime.fromisoformat(str(entry["at"]).replace("Z", "+00:00")),
        first_failing_step=Step(step) if step else None,
        suspect=Suspect(entry["suspect"]),
        sources=tuple(entry.get("sources") or ()),
        states=MappingProxyType(
            {
                source: MappingProxyType({Step(k): StepState(v) for k, v in steps.items()})
                for source, steps in states.items()
            }
        ),
        silent=tuple(entry.get("silent") or ()),
        note=str(entry.get("note") or ""),
    )


def failing_steps(
    saved: Sequence[SavedState],
) -> dict[str, dict[str, dict[Step, datetime]]]:
    """target -> source -> FAILING step -> since, from restored states."""
    found: dict[str, dict[str, dict[Step, datetime]]] = {}
    for state in saved:
        if state.step is not None and state.state is StepState.FAILING:
            found.setdefault(state.target, {}).setdefault(state.source, {})[state.step] = (
                state.since
            )
    return found
