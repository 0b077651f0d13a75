"""Small frozen records the Store and History return: sources, targets, incidents, states."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from egresswatch.model import Reason, Role, SourceKind, Step, StepState, Suspect


@dataclass(frozen=True)
class SourceRecord:
    """A source as stored: `kind` is None until `Store.register_source` named it."""

    name: str
    kind: SourceKind | None
    first_seen: datetime
    last_seen: datetime
    node: str | None = None  # the node it runs on, when its agent says (NODE_NAME)


@dataclass(frozen=True)
class TargetRecord:
    """A target as stored: `active` while the config names it (`Store.sync_targets`)."""

    name: str
    url: str
    role: Role
    active: bool
    first_seen: datetime
    last_seen: datetime


@dataclass(frozen=True)
class IncidentRecord:
    """A period in which `target` fails from one or more `sources` (DESIGN.md §2).

    `started_at` is the first failed round, not the detection; `ended_at` is None while the
    incident is open. `history` holds the incident's updates as JSON-able mappings, oldest
    first: {"at": RFC 3339 text, "first_failing_step", "suspect", "sources",
    "states": {source: {step: state}}}. The controller chooses `id` and saves the record again,
    under the same id, whenever the incident changes.
    """

    id: str
    target: str
    started_at: datetime
    detected_at: datetime
    ended_at: datetime | None
    sources: tuple[str, ...]
    first_failing_step: Step | None
    suspect: Suspect
    evidence: tuple[str, ...]
    next_command: str | None
    history: tuple[Mapping[str, Any], ...]

    @property
    def open(self) -> bool:
        return self.ended_at is None


@dataclass(frozen=True)
class StateRecord:
    """The current state of one step of a (source, target): what its latest change set.

    `step` None is the state of the whole pair (the source went silent, or came back).
    `since` is the `started_at` of that change (when it really began), `updated_at` its
    `detected_at`.
    """

    source: str
    target: str
    step: Step | None
    state: StepState
    since: datetime
    reason: Reason | None
    updated_at: datetime
