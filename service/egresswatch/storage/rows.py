"""Row helpers shared by the Store and History: dialect upserts, names to ids, rounds out.

Nothing here commits: each helper runs inside the caller's transaction.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from egresswatch.model import Reason, RoundResult, Status, Step, StepResult
from egresswatch.steps import STEPS, stored_evidence
from egresswatch.storage import tables as t

STEP_ORDER = {step: described.number for step, described in STEPS.items()}
# Ids per `IN (...)`: well under SQLite's limit of bound parameters (32,766).
ID_CHUNK = 5000
# Stored codes to members by dict lookup: calling an enum costs more than the rest of a row.
_STEPS = {step.value: step for step in Step}
_STATUSES = {status.value: status for status in Status}
_REASONS: dict[str | None, Reason | None] = {None: None}
_REASONS.update({reason.value: reason for reason in Reason})


def upsert(conn: AsyncConnection, table: sa.Table) -> Any:
    """The dialect's INSERT, which has `on_conflict_do_nothing/do_update` on both databases."""
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


async def create_names(
    conn: AsyncConnection,
    table: sa.Table,
    seen: Mapping[str, tuple[datetime, datetime]],
    defaults: Mapping[str, Any],
) -> dict[str, int]:
    """Ids of the names in `seen` in `table` (sources or targets), creating the missing rows.

    A created row gets `seen[name]` as (first_seen, last_seen) plus `defaults` (and url = name
    for a target); an existing row is left as it is. Rows are inserted in sorted name order,
    so concurrent transactions lock them in the same order (no deadlock on PostgreSQL).
    """
    names = sorted(seen)
    if not names:
        return {}
    new_rows = [
        {
            "name": name,
            "first_seen": seen[name][0],
            "last_seen": seen[name][1],
            **defaults,
            **({"url": name} if table is t.targets else {}),
        }
        for name in names
    ]
    await conn.execute(
        upsert(conn, table).on_conflict_do_nothing(index_elements=["name"]), new_rows
    )
    found = await conn.execute(sa.select(table.c.name, table.c.id).where(table.c.name.in_(names)))
    return {name: int(pk) for name, pk in found.all()}


async def ids_of(
    conn: AsyncConnection,
    table: sa.Table,
    seen: Mapping[str, tuple[datetime, datetime]],
    defaults: Mapping[str, Any],
) -> dict[str, int]:
    """Like `create_names`, but reads the existing ids first and inserts only the missing names.

    For writers without a name cache: an insert that conflicts still draws an id from the
    PostgreSQL sequence, and this runs for every write.
    """
    if not seen:
        return {}
    found = await conn.execute(
        sa.select(table.c.name, table.c.id).where(table.c.name.in_(sorted(seen)))
    )
    ids = {name: int(pk) for name, pk in found.all()}
    missing = {name: when for name, when in seen.items() if name not in ids}
    ids.update(await create_names(conn, table, missing, defaults))
    return ids


async def read_rounds(conn: AsyncConnection, *where: sa.ColumnElement[bool]) -> list[RoundResult]:
    """The rounds matching `where` (over rounds, sources and targets), oldest first.

    Steps come back in checklist order; a round without stored steps has none. Two queries:
    the rounds with their names, then their steps by round id. Joined in one, PostgreSQL
    plans the step lookups' cost into the rounds' access path and may scan all rounds.
    """
    return [found for _, found in await read_numbered_rounds(conn, *where)]


async def read_numbered_rounds(
    conn: AsyncConnection, *where: sa.ColumnElement[bool], limit: int | None = None
) -> list[tuple[int, RoundResult]]:
    """`read_rounds` with each round's id (oldest first); `limit` keeps the first ones."""
    r, s, tg = t.rounds, t.sources, t.targets
    query = (
        sa.select(r.c.id, r.c.started_at, s.c.name, tg.c.name)
        .select_from(r.join(tg, tg.c.id == r.c.target_id).join(s, s.c.id == r.c.source_id))
        .where(*where)
        .order_by(r.c.started_at, r.c.id)
        .limit(limit)
    )
    rounds = (await conn.execute(query)).all()
    steps = await read_steps(conn, [row[0] for row in rounds])
    return [
        (
            round_id,
            RoundResult(
                target=target,
                source=source,
                started_at=started_at,
                steps=tuple(sorted(steps.get(round_id, ()), key=lambda s: STEP_ORDER[s.step])),
            ),
        )
        for round_id, started_at, source, target in rounds
    ]


async def read_steps(conn: AsyncConnection, round_ids: list[int]) -> dict[int, list[StepResult]]:
    """The step results of these rounds, by round id (primary key lookups, in chunks).

    Evidence is read leniently (steps.stored_evidence): a row from another version still reads.
    """
    sr = t.step_results
    steps: dict[int, list[StepResult]] = {}
    for chunk in range(0, len(round_ids), ID_CHUNK):
        query = sa.select(
            sr.c.round_id,
            sr.c.step,
            sr.c.status,
            sr.c.reason,
            sr.c.duration_s,
            sr.c.detail,
            sr.c.evidence,
        ).where(sr.c.round_id.in_(round_ids[chunk : chunk + ID_CHUNK]))
        for round_id, step, status, reason, duration, detail, evidence in await conn.execute(query):
            kind = _STEPS[step]
            steps.setdefault(round_id, []).append(
                StepResult(
                    step=kind,
                    status=_STATUSES[status],
                    reason=_REASONS[reason],
                    duration_s=duration,
                    detail=detail,
                    evidence=stored_evidence(kind, evidence),
                )
            )
    return steps
