"""A target's results over time, from raw rows or rollups: the value types and their queries.

`Store.timeline` is the entry point; this module holds what it returns and the two readers.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from egresswatch.model import Reason, Status, Step
from egresswatch.storage import tables as t
from egresswatch.storage.policy import Resolution, bucket_start

_RAN = (Status.OK, Status.FAIL)


@dataclass(frozen=True)
class TimelinePoint:
    """One step from one source at one time: a raw result, or a rollup bucket.

    `count` results ran (ok or fail) and `failures` of them failed; `skipped` and `errors` count
    the rest. Latencies (seconds) are over the results that ran, None when none did. A raw point
    is a bucket of one result and also carries its `status` and `reason`.
    """

    time: datetime
    source: str
    step: Step
    count: int
    failures: int
    skipped: int
    errors: int
    p50_s: float | None
    p95_s: float | None
    p99_s: float | None
    max_s: float | None
    status: Status | None = None
    reason: Reason | None = None


@dataclass(frozen=True)
class Timeline:
    """The points of `target` in [start, end), ordered by time, source and step.

    `resolution` says what they are: raw results, or minute or hour rollups (a rollup point's
    time is its bucket start; buckets not rolled up yet, such as the current one, are absent).
    """

    target: str
    start: datetime
    end: datetime
    resolution: Resolution
    points: tuple[TimelinePoint, ...]


def raw_point(
    time: datetime, source: str, step: str, status: str, reason: str | None, duration_s: float
) -> TimelinePoint:
    state = Status(status)
    ran = state in _RAN
    latency = duration_s if ran else None
    return TimelinePoint(
        time=time,
        source=source,
        step=Step(step),
        count=int(ran),
        failures=int(state is Status.FAIL),
        skipped=int(state is Status.SKIPPED),
        errors=int(state is Status.ERROR),
        p50_s=latency,
        p95_s=latency,
        p99_s=latency,
        max_s=latency,
        status=state,
        reason=Reason(reason) if reason is not None else None,
    )


async def read_raw(
    conn: AsyncConnection,
    target_id: int,
    start: datetime,
    end: datetime,
    step: Step | None,
    source: str | None,
) -> list[TimelinePoint]:
    r, s, sr = t.rounds, t.sources, t.step_results
    query = (
        sa.select(r.c.started_at, s.c.name, sr.c.step, sr.c.status, sr.c.reason, sr.c.duration_s)
        .select_from(r.join(s, s.c.id == r.c.source_id).join(sr, sr.c.round_id == r.c.id))
        .where(r.c.target_id == target_id, r.c.started_at >= start, r.c.started_at < end)
        .order_by(r.c.started_at, s.c.name, r.c.id)
    )
    if step is not None:
        query = query.where(sr.c.step == step.value)
    if source is not None:
        query = query.where(s.c.name == source)
    rows = (await conn.execute(query)).all()
    points = [raw_point(*row) for row in rows]
    # Steps of one round in checklist order, not in the database's order.
    order = {step: i for i, step in enumerate(Step)}
    points.sort(key=lambda p: (p.time, p.source, order[p.step]))
    return points


async def read_rollups(
    conn: AsyncConnection,
    target_id: int,
    start: datetime,
    end: datetime,
    resolution: Resolution,
    step: Step | None,
    source: str | None,
) -> list[TimelinePoint]:
    ru, s = t.rollups, t.sources
    query = (
        sa.select(
            ru.c.bucket_start,
            s.c.name,
            ru.c.step,
            ru.c["count"],
            ru.c.failures,
            ru.c.skipped,
            ru.c.errors,
            ru.c.p50_s,
            ru.c.p95_s,
            ru.c.p99_s,
            ru.c.max_s,
        )
        .select_from(ru.join(s, s.c.id == ru.c.source_id))
        .where(
            ru.c.target_id == target_id,
            ru.c.resolution == resolution.value,
            # The bucket holding `start` overlaps the range: include it.
            ru.c.bucket_start >= bucket_start(start, resolution),
            ru.c.bucket_start < end,
        )
        .order_by(ru.c.bucket_start, s.c.name)
    )
    if step is not None:
        query = query.where(ru.c.step == step.value)
    if source is not None:
        query = query.where(s.c.name == source)
    rows = (await conn.execute(query)).all()
    points = [TimelinePoint(row[0], row[1], Step(row[2]), *row[3:]) for row in rows]
    order = {step: i for i, step in enumerate(Step)}
    points.sort(key=lambda p: (p.time, p.source, order[p.step]))
    return points
