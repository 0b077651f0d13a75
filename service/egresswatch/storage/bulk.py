"""Bulk inserts of rounds and step results, the fastest correct way on each database.

Rounds need their ids back, in order, to attach their step results:

- PostgreSQL: the ids come from the table's sequence (`nextval` over `generate_series`), then
  both tables are filled by one `INSERT ... SELECT FROM unnest(array, ...)` each: one statement
  and one round trip per table, about three times faster than executemany.
- SQLite: it has one writer at a time, and the caller's transaction already holds the write
  lock (it wrote before calling), so the next ids are max(id) + 1, ... and nobody else can take
  them before the commit; rows then go in with executemany, which SQLite runs quickly.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from egresswatch.storage import tables as t


class RoundRow(NamedTuple):
    source_id: int
    target_id: int
    started_at: datetime
    duration_s: float
    first_failing_step: str | None
    batch_id: int | None


class StepRow(NamedTuple):
    """A step result; `round` is the position of its round in the rows passed alongside."""

    round: int
    step: str
    status: str
    reason: str | None
    duration_s: float
    detail: str
    evidence: Any


_PG_IDS = "SELECT nextval(pg_get_serial_sequence('rounds', 'id')) FROM generate_series(1, $1)"
_PG_ROUNDS = (
    "INSERT INTO rounds (id, source_id, target_id, started_at, duration_s, first_failing_step,"
    " batch_id) SELECT * FROM unnest($1::bigint[], $2::int[], $3::int[], $4::timestamptz[],"
    " $5::float8[], $6::text[], $7::bigint[])"
)
_PG_STEPS = (
    "INSERT INTO step_results (round_id, step, status, reason, duration_s, detail, evidence)"
    " SELECT r, s, st, re, d, de, ev::jsonb FROM unnest($1::bigint[], $2::text[], $3::text[],"
    " $4::text[], $5::float8[], $6::text[], $7::text[]) AS u(r, s, st, re, d, de, ev)"
)


async def insert_rounds_and_steps(
    conn: AsyncConnection, rounds: Sequence[RoundRow], steps: Sequence[StepRow]
) -> list[int]:
    """Insert `rounds` and their `steps`; return the rounds' ids in order.

    Times must be timezone-aware (the caller checked). On SQLite the caller's transaction must
    already have written something (see the module docstring).
    """
    if not rounds:
        return []
    if conn.dialect.name == "postgresql":
        return await _postgresql(conn, rounds, steps)
    return await _sqlite(conn, rounds, steps)


async def _postgresql(
    conn: AsyncConnection, rounds: Sequence[RoundRow], steps: Sequence[StepRow]
) -> list[int]:
    ids = [int(pk) for pk in (await conn.exec_driver_sql(_PG_IDS, (len(rounds),))).scalars()]
    await conn.exec_driver_sql(
        _PG_ROUNDS, (ids, *(list(column) for column in zip(*rounds, strict=True)))
    )
    if steps:
        # The engine's JSON serializer, so evidence is written as the Core path would write it.
        evidence_type = t.step_results.c.evidence.type
        to_json = evidence_type.dialect_impl(conn.dialect).bind_processor(conn.dialect)
        assert to_json is not None
        columns = [list(column) for column in zip(*steps, strict=True)]
        columns[0] = [ids[position] for position in columns[0]]
        columns[6] = [to_json(evidence) for evidence in columns[6]]
        await conn.exec_driver_sql(_PG_STEPS, tuple(columns))
    return ids


async def _sqlite(
    conn: AsyncConnection, rounds: Sequence[RoundRow], steps: Sequence[StepRow]
) -> list[int]:
    last = (await conn.execute(sa.select(sa.func.max(t.rounds.c.id)))).scalar_one_or_none()
    first = (last or 0) + 1
    ids = list(range(first, first + len(rounds)))
    await conn.execute(
        sa.insert(t.rounds),
        [{"id": pk, **row._asdict()} for pk, row in zip(ids, rounds, strict=True)],
    )
    if steps:
        await conn.execute(
            sa.insert(t.step_results),
            [
                {
                    "round_id": ids[step.round],
                    "step": step.step,
                    "status": step.status,
                    "reason": step.reason,
                    "duration_s": step.duration_s,
                    "detail": step.detail,
                    "evidence": step.evidence,
                }
                for step in steps
            ],
        )
    return ids
