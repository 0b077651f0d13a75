"""Bulk inserts of rounds and step results, the fastest correct way on each database.

Rounds need their ids back, in order, to attach their step results:

- PostgreSQL: the ids come from the table's sequence (`nextval` over `generate_series`), then
  both tables are filled by a binary COPY each (asyncpg's `copy_to_table` on the connection
  under the SQLAlchemy one, inside its transaction), its stream written in one pass by
  copy_binary.py: no statement to parse, no arrays to unpack, no tuple per row. This replaced
  `copy_records_to_table`, which replaced `INSERT ... SELECT FROM unnest(...)` (itself three
  times faster than executemany); docs/performance.md has the numbers. COPY's errors are asyncpg's
  own: they are raised as the `sqlalchemy.exc` error of their SQLSTATE class (integrity,
  data), so the writer tells bad rows from an outage as it does for every other statement.
- SQLite: it has one writer at a time, and the caller's transaction already holds the write
  lock (it wrote before calling), so the next ids are max(id) + 1, ... and nobody else can take
  them before the commit; rows then go in with executemany, which SQLite runs quickly.

Evidence arrives as JSON text (`Record.to_json_text`, the text the engine's `json_serializer`
would make of `to_json()`): it is encoded once, and goes in as it is on both databases.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy import exc
from sqlalchemy.ext.asyncio import AsyncConnection

from egresswatch.storage import tables as t
from egresswatch.storage.copy_binary import rounds_copy, steps_copy


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
    evidence: str  # JSON text of an object


_PG_IDS = "SELECT nextval(pg_get_serial_sequence('rounds', 'id')) FROM generate_series(1, $1)"
_PG_EVIDENCE_TYPE = (
    "SELECT format_type(atttypid, NULL) FROM pg_attribute"
    " WHERE attrelid = 'step_results'::regclass AND attname = 'evidence'"
)
_EVIDENCE_JSONB = "egresswatch_evidence_jsonb"  # the key in a connection's `info`
_ROUND_COLUMNS = (
    "id",
    "source_id",
    "target_id",
    "started_at",
    "duration_s",
    "first_failing_step",
    "batch_id",
)
_STEP_COLUMNS = ("round_id", "step", "status", "reason", "duration_s", "detail", "evidence")
# SQLSTATE classes of errors in the rows themselves (retrying cannot help), by the error class
# SQLAlchemy raises for them from any other statement.
_ROW_ERRORS: dict[str, type[exc.DBAPIError]] = {"23": exc.IntegrityError, "22": exc.DataError}
# SQLite stores JSON as text, and the evidence text is made: rows go in as they are.
_SQLITE_ROUNDS = f"INSERT INTO rounds ({', '.join(_ROUND_COLUMNS)}) VALUES ({', '.join('?' * 7)})"
_SQLITE_STEPS = (
    f"INSERT INTO step_results ({', '.join(_STEP_COLUMNS)}) VALUES ({', '.join('?' * 7)})"
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
    # The raw asyncpg connection under this AsyncConnection: same session, same transaction.
    raw = await conn.get_raw_connection()
    # The evidence column's type decides its binary form: asked once per connection (its
    # `info` lives as long as it), since a schema changes only under a new one.
    jsonb = raw.info.get(_EVIDENCE_JSONB)
    if jsonb is None:
        jsonb = raw.info[_EVIDENCE_JSONB] = (
            await conn.exec_driver_sql(_PG_EVIDENCE_TYPE)
        ).scalar_one() == "jsonb"
    # The streams are made before the first COPY: a row that cannot be encoded stores nothing.
    round_data = rounds_copy(ids, rounds)
    step_data = steps_copy(ids, steps, jsonb=jsonb) if steps else None
    driver = raw.driver_connection
    await _copy(driver, "rounds", _ROUND_COLUMNS, round_data)
    if step_data is not None:
        await _copy(driver, "step_results", _STEP_COLUMNS, step_data)
    return ids


async def _copy(driver: Any, table: str, columns: Sequence[str], data: bytes) -> None:
    """Binary COPY of `data` (copy_binary.py) into `table`; asyncpg's row errors raised as
    SQLAlchemy's."""
    try:
        # A memoryview: asyncpg would take bytes for a file's path (os.fspath accepts them).
        source = memoryview(data)
        await driver.copy_to_table(table, source=source, columns=list(columns), format="binary")
    except Exception as error:
        raised = _ROW_ERRORS.get(str(getattr(error, "sqlstate", "") or "")[:2])
        if raised is None or not type(error).__module__.startswith("asyncpg"):
            raise
        raise raised(f"COPY {table}", None, error) from error


async def _sqlite(
    conn: AsyncConnection, rounds: Sequence[RoundRow], steps: Sequence[StepRow]
) -> list[int]:
    last = (await conn.execute(sa.select(sa.func.max(t.rounds.c.id)))).scalar_one_or_none()
    first = (last or 0) + 1
    ids = list(range(first, first + len(rounds)))
    # Plain tuples to the driver's executemany: SQLAlchemy's per-row parameter handling was
    # half of what storing a local round cost. The times go through the column type's own
    # bind processor, so they are stored exactly as every other statement stores them.
    column_type = t.rounds.c.started_at.type
    when = column_type.dialect_impl(conn.dialect).bind_processor(conn.dialect)
    assert when is not None  # UTCDateTime always converts
    await conn.exec_driver_sql(
        _SQLITE_ROUNDS,
        [(pk, r[0], r[1], when(r[2]), *r[3:]) for pk, r in zip(ids, rounds, strict=True)],
    )
    if steps:
        await conn.exec_driver_sql(_SQLITE_STEPS, [(ids[s[0]], *s[1:]) for s in steps])
    return ids
