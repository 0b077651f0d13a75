"""The queries behind `History`: keyset cursors, filters and rows to records.

Lists are paged by keyset on (sort time, id), newest first: a page asks for the rows strictly
after the last row of the previous one in that order, so rows inserted between two fetches are
never repeated and never push an old row off the page it would have been on (offset paging
does both). A cursor is the urlsafe base64 of a small JSON: the sort key of that last row and a
fingerprint of the list and its filters, so a cursor cannot be replayed against another query.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from egresswatch.model import Change, Reason, StepState, Suspect
from egresswatch.model import Step as StepId
from egresswatch.storage import tables as t
from egresswatch.storage.records import IncidentRecord, StateRecord

MAX_LIMIT = 1000
WHOLE_PAIR = ""  # step_states.step for a state of the whole (source, target)

# Stored codes to members by dict lookup: calling the enum costs more than the rest of a row.
_STEPS: dict[str | None, StepId | None] = {None: None, WHOLE_PAIR: None}
_STEPS.update({step.value: step for step in StepId})
_STATES = {state.value: state for state in StepState}
_REASONS: dict[str | None, Reason | None] = {None: None}
_REASONS.update({reason.value: reason for reason in Reason})


class BadCursor(ValueError):
    """A cursor that does not decode, or was made for another list or other filters."""


def check_limit(limit: int) -> None:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit must be an integer from 1 to {MAX_LIMIT}, not {limit!r}")


def check_aware(**moments: datetime | None) -> None:
    """ValueError naming the first naive datetime: a time without a zone is ambiguous."""
    for name, moment in moments.items():
        if moment is not None and moment.utcoffset() is None:
            raise ValueError(f"{name} must be timezone-aware, not {moment!r}")


# -- cursors ----------------------------------------------------------------------------------


def fingerprint(kind: str, filters: Mapping[str, Any]) -> str:
    """A short digest of the list and its filters (instants compared in UTC)."""

    def normal(value: Any) -> Any:
        if isinstance(value, datetime):
            return value.astimezone(UTC).isoformat()
        return value

    text = json.dumps([kind, {k: normal(v) for k, v in sorted(filters.items())}])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def encode_cursor(query: str, at: datetime, key: int | str) -> str:
    text = json.dumps(
        {"q": query, "t": at.astimezone(UTC).isoformat(), "i": key}, separators=(",", ":")
    )
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode_cursor(cursor: str, query: str, key_type: type[int] | type[str]) -> tuple[datetime, Any]:
    """The (time, id) a cursor points after; BadCursor when it is not one of `query`'s."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        data = json.loads(raw)
        at = datetime.fromisoformat(data["t"])
        key = data["i"]
        made_for = data["q"]
    except (binascii.Error, ValueError, TypeError, KeyError) as error:
        raise BadCursor(f"not a cursor of this list: {cursor!r}") from error
    if made_for != query:
        raise BadCursor("the cursor belongs to another query: repeat the filters it was made with")
    if type(key) is not key_type or at.utcoffset() is None:
        raise BadCursor(f"not a cursor of this list: {cursor!r}")
    if isinstance(key, int) and not -(2**63) <= key < 2**63:
        # A tampered cursor: no id is outside 64 bits, and the database would refuse to bind it.
        raise BadCursor(f"not a cursor of this list: {cursor!r}")
    return at, key


def after(
    time: sa.ColumnElement[datetime], key: sa.ColumnElement[Any], at: datetime, last: Any
) -> sa.ColumnElement[bool]:
    """Rows after (at, last) in (time DESC, key DESC) order.

    Written with a plain `time <= at` first, not a row-value comparison: that bound is an index
    range on both databases.
    """
    return sa.and_(time <= at, sa.or_(time < at, key < last))


def name_id(table: sa.Table, name: str) -> sa.ScalarSelect[Any]:
    """The id of a source or target name, as a subquery (NULL, so no rows, when unknown).

    A subquery, not a join on the name: the planner then filters the big table by id through
    its index instead of joining first.
    """
    return sa.select(table.c.id).where(table.c.name == name).scalar_subquery()


# -- changes ----------------------------------------------------------------------------------


def changes_query() -> sa.Select[Any]:
    c, s, tg = t.changes, t.sources, t.targets
    return sa.select(
        c.c.id,
        s.c.name,
        tg.c.name,
        c.c.step,
        c.c.previous,
        c.c.current,
        c.c.started_at,
        c.c.detected_at,
        c.c.reason,
        c.c.detail,
    ).select_from(c.join(s, s.c.id == c.c.source_id).join(tg, tg.c.id == c.c.target_id))


def change_of(row: Sequence[Any]) -> Change:
    _, source, target, step, previous, current, started_at, detected_at, reason, detail = row
    return Change(
        source=source,
        target=target,
        step=_STEPS[step],
        previous=_STATES[previous],
        current=_STATES[current],
        started_at=started_at,
        detected_at=detected_at,
        reason=_REASONS[reason],
        detail=detail,
    )


def change_row(change: Change, source_id: int, target_id: int) -> dict[str, Any]:
    return {
        "source_id": source_id,
        "target_id": target_id,
        "step": change.step.value if change.step is not None else None,
        "previous": change.previous.value,
        "current": change.current.value,
        "started_at": change.started_at,
        "detected_at": change.detected_at,
        "reason": change.reason.value if change.reason is not None else None,
        "detail": change.detail,
    }


def latest_per_step(changes: Sequence[Change]) -> list[Change]:
    """The latest change of each (source, target, step) by detected_at; on a tie the later one
    in `changes`. Sorted by key, so concurrent writers lock step_states rows in one order."""
    latest: dict[tuple[str, str, str], Change] = {}
    for change in changes:
        key = (change.target, change.source, change.step.value if change.step else WHOLE_PAIR)
        if key not in latest or change.detected_at >= latest[key].detected_at:
            latest[key] = change
    return [latest[key] for key in sorted(latest)]


# -- incidents --------------------------------------------------------------------------------


def incidents_query() -> sa.Select[Any]:
    i, tg = t.incidents, t.targets
    return sa.select(
        i.c.id,
        tg.c.name,
        i.c.started_at,
        i.c.detected_at,
        i.c.ended_at,
        i.c.sources,
        i.c.first_failing_step,
        i.c.suspect,
        i.c.evidence,
        i.c.next_command,
        i.c.history,
    ).select_from(i.join(tg, tg.c.id == i.c.target_id))


def incident_of(row: Sequence[Any]) -> IncidentRecord:
    id_, target, started, detected, ended, sources, step, suspect, evidence, command, hist = row
    return IncidentRecord(
        id=id_,
        target=target,
        started_at=started,
        detected_at=detected,
        ended_at=ended,
        sources=tuple(sources),
        first_failing_step=_STEPS[step],
        suspect=Suspect(suspect),
        evidence=tuple(evidence),
        next_command=command,
        history=tuple(hist),
    )


def incident_row(incident: IncidentRecord, target_id: int) -> dict[str, Any]:
    step = incident.first_failing_step
    return {
        "id": incident.id,
        "target_id": target_id,
        "started_at": incident.started_at,
        "detected_at": incident.detected_at,
        "ended_at": incident.ended_at,
        "sources": list(incident.sources),
        "first_failing_step": step.value if step is not None else None,
        "suspect": incident.suspect.value,
        "evidence": list(incident.evidence),
        "next_command": incident.next_command,
        "history": [dict(update) for update in incident.history],
    }


def has_source(dialect: str, source: str) -> sa.ColumnElement[bool]:
    """incidents.sources (a JSON list of names) holds `source`."""
    sources = t.incidents.c.sources
    if dialect == "postgresql":
        # jsonb containment: `["a", "b"] @> ["a"]`.
        return sa.type_coerce(sources, postgresql.JSONB).contains(
            sa.type_coerce([source], postgresql.JSONB)
        )
    each = sa.func.json_each(sources).table_valued("value")
    return sa.exists(sa.select(sa.literal(1)).select_from(each).where(each.c.value == source))


# -- states -----------------------------------------------------------------------------------


def raw(column: sa.Column[Any]) -> sa.ColumnElement[Any]:
    """`column` as the driver returns it: without its type's result processing."""
    return sa.type_coerce(column, sa.types.NullType())


def utc_reader(dialect: str) -> Callable[[Any], datetime]:
    """What UTCDateTime returns (an aware UTC datetime), from the value the driver returns for
    a UTCDateTime column read `raw`.

    For reading thousands of times at once (every step state, on each status request): the
    type's own processing costs more per value than fetching the row, mostly in
    `datetime.replace(tzinfo=...)`; parsing the SQLite text with its zone costs a tenth of it.
    """

    def utc(moment: datetime) -> datetime:  # UTCDateTime.process_result_value
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)

    if dialect == "sqlite":

        def from_text(value: str) -> datetime:
            try:  # UTCDateTime's text on SQLite: naive UTC, `YYYY-MM-DD HH:MM:SS.ffffff`
                return datetime.fromisoformat(value + "+00:00")
            except ValueError:  # text with a zone of its own, not written by UTCDateTime
                return utc(datetime.fromisoformat(value))

        return from_text

    def from_driver(value: datetime) -> datetime:  # asyncpg: aware, normally UTC already
        return value if value.tzinfo is UTC else utc(value)

    return from_driver


def states_query() -> sa.Select[Any]:
    """The step states with their names; the two times `raw` (read them with `state_reader`)."""
    ss, s, tg = t.step_states, t.sources, t.targets
    return sa.select(
        s.c.name,
        tg.c.name,
        ss.c.step,
        ss.c.state,
        raw(ss.c.since),
        ss.c.reason,
        raw(ss.c.updated_at),
    ).select_from(ss.join(s, s.c.id == ss.c.source_id).join(tg, tg.c.id == ss.c.target_id))


def state_reader(dialect: str) -> Callable[[Sequence[Any]], StateRecord]:
    """A row of `states_query` on `dialect` to its record."""
    utc = utc_reader(dialect)
    steps, states, reasons = _STEPS, _STATES, _REASONS

    def state_of(row: Sequence[Any]) -> StateRecord:
        source, target, step, state, since, reason, updated_at = row
        # Interned: a source's name is in every one of its states, a target's in seven, and
        # History keeps them all (issue 14).
        return StateRecord(
            source=sys.intern(source),
            target=sys.intern(target),
            step=steps[step],
            state=states[state],
            since=utc(since),
            reason=reasons[reason],
            updated_at=utc(updated_at),
        )

    return state_of


def state_row(change: Change, source_id: int, target_id: int) -> dict[str, Any]:
    return {
        "source_id": source_id,
        "target_id": target_id,
        "step": change.step.value if change.step is not None else WHOLE_PAIR,
        "state": change.current.value,
        "since": change.started_at,
        "reason": change.reason.value if change.reason is not None else None,
        "updated_at": change.detected_at,
    }
