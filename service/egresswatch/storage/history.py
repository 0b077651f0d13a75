"""History: changes, incidents and current step states in; the lists the HTTP API shows out.

Speaks `egresswatch.model` types and the frozen records of `storage.records`; rows never leave
the storage package. Works the same on SQLite (aiosqlite) and PostgreSQL (asyncpg).

Lists come in pages, newest first, with an opaque cursor for the next page (keyset paging, see
`history_queries`): stable while rows are inserted between fetches, nothing lost or repeated.
Every time passed in must be timezone-aware (ValueError otherwise); every time returned is
aware UTC.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Generic, TypeVar

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from egresswatch.model import Change, Role, RoundResult, Step
from egresswatch.storage import tables as t
from egresswatch.storage.history_queries import (
    BadCursor,
    after,
    change_of,
    change_row,
    changes_query,
    check_aware,
    check_limit,
    decode_cursor,
    encode_cursor,
    fingerprint,
    has_source,
    incident_of,
    incident_row,
    incidents_query,
    latest_per_step,
    name_id,
    state_reader,
    state_row,
    states_query,
)
from egresswatch.storage.records import IncidentRecord, StateRecord
from egresswatch.storage.rows import STEP_ORDER, ids_of, read_rounds, upsert

__all__ = ["BadCursor", "History", "IncidentRecord", "Page", "StateRecord"]

T = TypeVar("T")

# Targets first seen through a change or an incident are created like Store.save_rounds does.
# A step's text as one string each (the whole pair's is empty): what states() keys by.
_STEP_TEXT = {"": "", **{step.value: step.value for step in Step}}
_NEW_TARGET = {"role": Role.ENDPOINT.value, "active": True}


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a list; pass `next_cursor` back, with the same filters, for the next one.

    `next_cursor` is None on the last page.
    """

    items: list[T]
    next_cursor: str | None


class History:
    """Reads and writes changes, incidents and step states over an injected AsyncEngine."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        # What the last `states()` of all targets read: a fingerprint of all its rows; per
        # state (source, target, step), its row's fingerprint and its record; and the records
        # in order. Fingerprints, not the rows: the rows' text was 3 KB a target, held for as
        # long as the process runs (issue 14, docs/performance.md "How cost grows with targets").
        self._states_print: tuple[int, int] = (-1, 0)
        self._states_read: dict[tuple[Any, ...], tuple[int, StateRecord]] = {}
        self._states_sorted: list[StateRecord] = []

    # -- writing ---------------------------------------------------------------------------

    async def save_changes(self, changes: Sequence[Change]) -> None:
        """Append `changes` to the change log and update the step states, in one transaction.

        A step state (per source, target and step, step None for the whole pair) takes the
        latest change by `detected_at`: an older change arriving late is logged but does not
        overwrite a newer state; on equal `detected_at` the one saved last wins. Sources and
        targets are created by name on first sight. ValueError for naive datetimes.
        """
        await self._save(changes, log=True)

    async def save_states(self, changes: Sequence[Change]) -> None:
        """Update the step states from `changes` as save_changes does, without logging them as
        changes (first judgements: Detector.take_baselines)."""
        await self._save(changes, log=False)

    async def _save(self, changes: Sequence[Change], *, log: bool) -> None:
        if not changes:
            return
        for change in changes:
            check_aware(started_at=change.started_at, detected_at=change.detected_at)
        async with self.engine.begin() as conn:
            source_ids, target_ids = await self._ids(
                conn, [(c.source, c.target, c.started_at) for c in changes]
            )
            if log:
                await conn.execute(
                    sa.insert(t.changes),
                    [change_row(c, source_ids[c.source], target_ids[c.target]) for c in changes],
                )
            await self._upsert_states(conn, changes, source_ids, target_ids)

    async def _upsert_states(
        self,
        conn: AsyncConnection,
        changes: Sequence[Change],
        source_ids: Mapping[str, int],
        target_ids: Mapping[str, int],
    ) -> None:
        """Each (source, target, step) takes its latest change, unless a newer is stored."""
        statement = upsert(conn, t.step_states)
        new = statement.excluded
        statement = statement.on_conflict_do_update(
            index_elements=["target_id", "source_id", "step"],
            set_={
                "state": new.state,
                "since": new.since,
                "reason": new.reason,
                "updated_at": new.updated_at,
            },
            where=t.step_states.c.updated_at <= new.updated_at,
        )
        await conn.execute(
            statement,
            [
                state_row(c, source_ids[c.source], target_ids[c.target])
                for c in latest_per_step(changes)
            ],
        )

    async def save_incident(self, incident: IncidentRecord) -> None:
        """Insert the incident, or replace the stored one with the same id (all fields).

        Its target is created by name on first sight. ValueError for naive datetimes.
        """
        check_aware(
            started_at=incident.started_at,
            detected_at=incident.detected_at,
            ended_at=incident.ended_at,
        )
        async with self.engine.begin() as conn:
            _, target_ids = await self._ids(conn, [(None, incident.target, incident.started_at)])
            row = incident_row(incident, target_ids[incident.target])
            statement = upsert(conn, t.incidents).values(row)
            statement = statement.on_conflict_do_update(
                index_elements=["id"],
                set_={name: statement.excluded[name] for name in row if name != "id"},
            )
            await conn.execute(statement)

    @staticmethod
    async def _ids(
        conn: AsyncConnection, names: Sequence[tuple[str | None, str, datetime]]
    ) -> tuple[dict[str, int], dict[str, int]]:
        """Ids of the (source, target) names, each seen at a time; sources first, as the Store
        does, so concurrent writers lock those rows in one order."""
        sources: dict[str, tuple[datetime, datetime]] = {}
        targets: dict[str, tuple[datetime, datetime]] = {}
        for source, target, when in names:
            for seen, name in ((sources, source), (targets, target)):
                if name is not None:
                    first, last = seen.get(name, (when, when))
                    seen[name] = (min(first, when), max(last, when))
        source_ids = await ids_of(conn, t.sources, sources, {})
        target_ids = await ids_of(conn, t.targets, targets, _NEW_TARGET)
        return source_ids, target_ids

    # -- reading ---------------------------------------------------------------------------

    async def changes(
        self,
        *,
        target: str | None = None,
        source: str | None = None,
        step: Step | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> Page[Change]:
        """The change log, newest first: by `detected_at`, then by storage order, descending.

        `since` and `until` select changes that *started* in [since, until) (`started_at`:
        when the flip really began, which is what a person asks about), while the order is by
        detection, the order in which changes were written. `step` selects one step's changes
        (the whole-pair changes have step None and are selected by no step). ValueError for a
        `limit` outside 1..1000 or naive times, BadCursor for a cursor not made by this call
        with these filters.

        Cost: pages walk an index in detection order (all changes, or one target's, or one
        source's), so a window far in the past reads the changes detected since then; at the
        change log's size (thousands a month) that is milliseconds.
        """
        check_limit(limit)
        check_aware(since=since, until=until)
        query_id = fingerprint(
            "changes",
            {"target": target, "source": source, "step": step, "since": since, "until": until},
        )
        c = t.changes
        query = changes_query()
        if target is not None:
            query = query.where(c.c.target_id == name_id(t.targets, target))
        if source is not None:
            query = query.where(c.c.source_id == name_id(t.sources, source))
        if step is not None:
            query = query.where(c.c.step == step.value)
        if since is not None:
            query = query.where(c.c.started_at >= since)
        if until is not None:
            query = query.where(c.c.started_at < until)
        if cursor is not None:
            at, last = decode_cursor(cursor, query_id, int)
            query = query.where(after(c.c.detected_at, c.c.id, at, last))
        query = query.order_by(c.c.detected_at.desc(), c.c.id.desc()).limit(limit + 1)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        next_cursor = None
        if len(rows) > limit:
            rows = rows[:limit]
            next_cursor = encode_cursor(query_id, rows[-1].detected_at, rows[-1].id)
        return Page([change_of(row) for row in rows], next_cursor)

    async def incidents(
        self,
        *,
        target: str | None = None,
        source: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        open: bool | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> Page[IncidentRecord]:
        """Incidents, newest `started_at` first (then by id, descending).

        `since`/`until` select the incidents overlapping [since, until): started before `until`
        and not ended by `since` (an open one has not ended). `source` selects the incidents
        whose sources include it; `open` True only open ones, False only closed ones.
        ValueError and BadCursor as for `changes`.
        """
        check_limit(limit)
        check_aware(since=since, until=until)
        query_id = fingerprint(
            "incidents",
            {"target": target, "source": source, "since": since, "until": until, "open": open},
        )
        i = t.incidents
        query = incidents_query()
        if target is not None:
            query = query.where(i.c.target_id == name_id(t.targets, target))
        if since is not None:
            query = query.where(sa.or_(i.c.ended_at.is_(None), i.c.ended_at > since))
        if until is not None:
            query = query.where(i.c.started_at < until)
        if open is not None:
            query = query.where(i.c.ended_at.is_(None) if open else i.c.ended_at.is_not(None))
        if cursor is not None:
            at, last = decode_cursor(cursor, query_id, str)
            query = query.where(after(i.c.started_at, i.c.id, at, last))
        query = query.order_by(i.c.started_at.desc(), i.c.id.desc()).limit(limit + 1)
        async with self.engine.connect() as conn:
            if source is not None:
                query = query.where(has_source(conn.dialect.name, source))
            rows = (await conn.execute(query)).all()
        next_cursor = None
        if len(rows) > limit:
            rows = rows[:limit]
            next_cursor = encode_cursor(query_id, rows[-1].started_at, rows[-1].id)
        return Page([incident_of(row) for row in rows], next_cursor)

    async def incident(self, incident_id: str) -> IncidentRecord | None:
        """The incident with this id, or None."""
        query = incidents_query().where(t.incidents.c.id == incident_id)
        async with self.engine.connect() as conn:
            row = (await conn.execute(query)).one_or_none()
        return incident_of(row) if row is not None else None

    async def incident_at(self, target: str, at: datetime) -> IncidentRecord | None:
        """The incident of `target` open at `at`: started_at <= at < ended_at, or still open.

        Should two overlap, the one that started last. None when the target was not failing.
        """
        check_aware(at=at)
        i = t.incidents
        query = (
            incidents_query()
            .where(
                i.c.target_id == name_id(t.targets, target),
                i.c.started_at <= at,
                sa.or_(i.c.ended_at.is_(None), i.c.ended_at > at),
            )
            .order_by(i.c.started_at.desc(), i.c.id.desc())
            .limit(1)
        )
        async with self.engine.connect() as conn:
            row = (await conn.execute(query)).one_or_none()
        return incident_of(row) if row is not None else None

    async def states(self, target: str | None = None) -> list[StateRecord]:
        """The current step states (of `target`, or all), by target, source, then checklist
        order with the whole-pair state (step None) first.

        A state whose row is unchanged since the last call for all targets comes back as the
        same (immutable) record object, not converted again: the API's status reads every state
        on each request, and converting thousands of rows costs more than reading them. A
        caller may reuse what it derived from a record it saw before (the status document
        does). Unchanged means the same 64-bit fingerprint (`hash`) of the row: two different
        rows of one state sharing one is a chance of 2^-64 a change.
        """
        query = states_query()
        if target is not None:
            query = query.where(t.step_states.c.target_id == name_id(t.targets, target))
        async with self.engine.connect() as conn:
            rows = [tuple(row) for row in (await conn.execute(query)).all()]
            state_of = state_reader(conn.dialect.name)
        prints = [hash(row) for row in rows]
        whole = (len(prints), hash(tuple(prints)))
        if target is None and whole == self._states_print:
            return list(self._states_sorted)  # nothing changed
        seen = self._states_read
        read: dict[tuple[Any, ...], tuple[int, StateRecord]] = {}
        records = []
        for row, printed in zip(rows, prints, strict=True):
            key = row[:3]  # source, target, step: the primary key
            before = seen.get(key)
            record = before[1] if before is not None and before[0] == printed else state_of(row)
            # Kept under the record's own names (and one text a step): the row's are new
            # strings at every call, 170 bytes a state held twice.
            read[(record.source, record.target, _STEP_TEXT.get(key[2], key[2]))] = (printed, record)
            records.append(record)
        records.sort(
            key=lambda r: (r.target, r.source, -1 if r.step is None else STEP_ORDER[r.step])
        )
        if target is None:  # the states that exist now, no more
            self._states_print, self._states_read = whole, read
            self._states_sorted = list(records)
        return records

    async def latest_rounds(
        self,
        at: datetime,
        *,
        target: str | None = None,
        source: str | None = None,
        lookback_s: float = 3600.0,
    ) -> list[RoundResult]:
        """Per (source, target): its latest round started in (at - lookback_s, at].

        The checklist as it stood at `at`: pairs without a round in that window are absent.
        Ordered by target, then source. One index descent per (source, target) pair
        (ix_rounds_source_id_target_id_started_at), however many rounds are stored.
        ValueError for a naive `at` or a lookback that is not positive.
        """
        check_aware(at=at)
        if not lookback_s > 0:
            raise ValueError(f"lookback_s must be positive, not {lookback_s!r}")
        r, s, tg = t.rounds, t.sources, t.targets
        latest = (
            sa.select(r.c.id)
            .where(
                r.c.source_id == s.c.id,
                r.c.target_id == tg.c.id,
                r.c.started_at <= at,
                r.c.started_at > at - timedelta(seconds=lookback_s),
            )
            .order_by(r.c.started_at.desc(), r.c.id.desc())
            .limit(1)
            .scalar_subquery()
        )
        pairs: sa.Select[Any] = sa.select(latest).select_from(s.join(tg, sa.true()))
        if target is not None:
            pairs = pairs.where(tg.c.name == target)
        if source is not None:
            pairs = pairs.where(s.c.name == source)
        async with self.engine.connect() as conn:
            ids = [pk for pk in (await conn.execute(pairs)).scalars() if pk is not None]
            found = await read_rounds(conn, r.c.id.in_(ids)) if ids else []
        return sorted(found, key=lambda round_: (round_.target, round_.source))

    async def recent_rounds(self, *, per_pair: int, since: datetime) -> list[RoundResult]:
        """Per (source, target): its last `per_pair` rounds started at or after `since`.

        What a restarted controller replays to rebuild its detector and the diagnosis's latest
        rounds. Oldest first. One window query (ROW_NUMBER per pair over the
        (source, target, started_at) index), on SQLite and PostgreSQL alike.
        """
        check_aware(since=since)
        if per_pair < 1:
            raise ValueError(f"per_pair must be at least 1, not {per_pair!r}")
        r = t.rounds
        ranked = (
            sa.select(
                r.c.id,
                sa.func.row_number()
                .over(
                    partition_by=(r.c.source_id, r.c.target_id),
                    order_by=(r.c.started_at.desc(), r.c.id.desc()),
                )
                .label("rank"),
            )
            .where(r.c.started_at >= since)
            .subquery()
        )
        ids = sa.select(ranked.c.id).where(ranked.c.rank <= per_pair)
        async with self.engine.connect() as conn:
            return await read_rounds(conn, r.c.id.in_(ids))
