"""Small frozen records the Store returns about sources and targets."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from egresswatch.model import Role, SourceKind


@dataclass(frozen=True)
class SourceRecord:
    """A source as stored: `kind` is None until `Store.register_source` named it."""

    name: str
    kind: SourceKind | None
    first_seen: datetime
    last_seen: datetime


@dataclass(frozen=True)
class TargetRecord:
    """A target as stored: `active` while the config names it (`Store.sync_targets`)."""

    name: str
    url: str
    role: Role
    active: bool
    first_seen: datetime
    last_seen: datetime
