"""Rollups and pruning. The clock is passed in (`now`): nothing here sleeps or reads the time.

`rollup` computes, per (source, target, step) and minute or hour bucket, how many results ran,
failed, were skipped or errored, and latency quantiles in seconds. It works from the buckets
`Store.save_rounds` marked in `rollup_pending`, so rounds that arrive late are rolled up too, and
it recomputes each bucket from all its raw rows (delete, then insert): running it again never
counts twice. Quantiles are computed in Python (SQLite has no percentile function), one bucket at
a time, streaming rows ordered by key, so memory holds one key's durations plus one row per key.

`prune` deletes raw rounds older than the raw window, but never a round whose bucket is still
waiting for its rollup, then rollups older than theirs, in chunks of bounded size, each chunk
its own short transaction.

`run_retention` is the scheduled job: both, in that order, and it never raises.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from egresswatch.model import Status
from egresswatch.storage import tables as t
from egresswatch.storage.outage import Outage, is_unavailable
from egresswatch.storage.policy import (
    MINUTE_ROLLUPS_KEEP_S,
    RAW_KEEP_S,
    ROLLUP_RESOLUTIONS,
    ROLLUPS_KEEP_S,
    Resolution,
    RetentionWindows,
    bucket_start,
)
from egresswatch.storage.store import Store

log = logging.getLogger(__name__)

# Buckets recomputed per transaction: an hour bucket can hold millions of step results.
BUCKETS_PER_TRANSACTION = {Resolution.MINUTE: 30, Resolution.HOUR: 1}
STREAM_PARTITION = 5000  # rows fetched at a time while computing a bucket
INSERT_CHUNK = 1000
PRUNE_CHUNK = 5000


@dataclass(frozen=True)
class RollupReport:
    """What one `rollup` call did: buckets computed, rollup rows written, buckets skipped
    because their raw rows may already have been pruned (rounds that arrived too late)."""

    resolution: Resolution
    buckets: int
    rows: int
    skipped: int


@dataclass(frozen=True)
class PruneReport:
    """Rows deleted by one `prune` call."""

    rounds: int
    rollups: int
    batches: int


def quantile(ordered: list[float], q: float) -> float:
    """The q-quantile of sorted, non-empty `ordered`, interpolating linearly between ranks.

    The same definition as numpy's default and `statistics.quantiles(method="inclusive")`.
    """
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass
class _Bucket:
    """The results of one (source, target, step) in one bucket, while they stream past."""

    source_id: int
    target_id: int
    step: str
    failures: int = 0
    skipped: int = 0
    errors: int = 0
    durations: list[float] = field(default_factory=list)

    def add(self, status: str, duration_s: float) -> None:
        if status == Status.OK or status == Status.FAIL:
            self.durations.append(duration_s)
            self.failures += status == Status.FAIL
        elif status == Status.SKIPPED:
            self.skipped += 1
        else:
            self.errors += 1

    def row(self, resolution: Resolution, start: datetime) -> dict[str, Any]:
        ordered = sorted(self.durations)
        stats = (
            [quantile(ordered, q) for q in (0.5, 0.95, 0.99)] + [ordered[-1]]
            if ordered
            else [None] * 4
        )
        return {
            "resolution": resolution.value,
            "source_id": self.source_id,
            "target_id": self.target_id,
            "step": self.step,
            "bucket_start": start,
            "count": len(ordered),
            "failures": self.failures,
            "skipped": self.skipped,
            "errors": self.errors,
            **dict(zip(("p50_s", "p95_s", "p99_s", "max_s"), stats, strict=True)),
        }


def _engine(store_or_engine: Store | AsyncEngine) -> AsyncEngine:
    return store_or_engine.engine if isinstance(store_or_engine, Store) else store_or_engine


async def rollup(
    store_or_engine: Store | AsyncEngine,
    now: datetime,
    resolution: Resolution | str,
    *,
    raw_keep_s: float = RAW_KEEP_S,
) -> RollupReport:
    """Compute the rollups of every complete bucket (ending at or before `now`) marked pending.

    Idempotent. A pending bucket older than the raw window (`raw_keep_s`) that was rolled up
    before is unmarked and skipped, with a warning: `prune` may have deleted its raw rows since,
    and recomputing would replace a good rollup with a partial one. Its late rounds stay raw
    until pruned. (A pending bucket never rolled up still has all its raw rows, because `prune`
    keeps those, so it is computed however old it is: a rollup job that lagged loses nothing.)
    """
    resolution = Resolution(resolution)
    if resolution is Resolution.RAW:
        raise ValueError("rollup resolutions are minute and hour")
    engine = _engine(store_or_engine)
    complete_before = bucket_start(now, resolution)
    raw_floor = now - timedelta(seconds=raw_keep_s)
    pending = t.rollup_pending
    buckets = rows = skipped = 0
    after: datetime | None = None  # each bucket once per call, even if re-marked meanwhile
    while True:
        async with engine.begin() as conn:
            query = (
                sa.select(pending.c.bucket_start, pending.c.version)
                .where(
                    pending.c.resolution == resolution.value,
                    pending.c.bucket_start < complete_before,
                )
                .order_by(pending.c.bucket_start)
                .limit(BUCKETS_PER_TRANSACTION[resolution])
            )
            if after is not None:
                query = query.where(pending.c.bucket_start > after)
            marked = (await conn.execute(query)).all()
            if not marked:
                break
            for start, version in marked:
                if start < raw_floor and await _has_rollups(conn, resolution, start):
                    skipped += 1
                else:
                    rows += await _rollup_bucket(conn, resolution, start)
                    buckets += 1
                # Unmark only the version read: a round saved meanwhile re-marked it (version
                # + 1), and the bucket must be computed again next time.
                await conn.execute(
                    sa.delete(pending).where(
                        pending.c.resolution == resolution.value,
                        pending.c.bucket_start == start,
                        pending.c.version == version,
                    )
                )
                after = start
    if skipped:
        log.warning(
            "skipped %d %s buckets rolled up before and now older than the raw window: their"
            " late rounds are not in the rollups",
            skipped,
            resolution.value,
        )
    return RollupReport(resolution, buckets, rows, skipped)


async def _has_rollups(conn: AsyncConnection, resolution: Resolution, start: datetime) -> bool:
    ru = t.rollups
    query = sa.select(ru.c.id).where(
        ru.c.resolution == resolution.value, ru.c.bucket_start == start
    )
    return (await conn.execute(query.limit(1))).first() is not None


async def _rollup_bucket(conn: AsyncConnection, resolution: Resolution, start: datetime) -> int:
    """Replace the rollups of the bucket starting at `start` with ones computed from raw rows."""
    r, sr, ru = t.rounds, t.step_results, t.rollups
    await conn.execute(
        sa.delete(ru).where(ru.c.resolution == resolution.value, ru.c.bucket_start == start)
    )
    query = (
        sa.select(r.c.source_id, r.c.target_id, sr.c.step, sr.c.status, sr.c.duration_s)
        .select_from(r.join(sr, sr.c.round_id == r.c.id))
        .where(r.c.started_at >= start, r.c.started_at < start + resolution.bucket)
        .order_by(r.c.source_id, r.c.target_id, sr.c.step)
    )
    out: list[dict[str, Any]] = []
    current: _Bucket | None = None
    result = await conn.stream(query)
    try:
        async for partition in result.partitions(STREAM_PARTITION):
            for source_id, target_id, step, status, duration_s in partition:
                if current is None or (current.source_id, current.target_id, current.step) != (
                    source_id,
                    target_id,
                    step,
                ):
                    if current is not None:
                        out.append(current.row(resolution, start))
                    current = _Bucket(source_id, target_id, step)
                current.add(status, duration_s)
    finally:
        await result.close()
    if current is not None:
        out.append(current.row(resolution, start))
    for first in range(0, len(out), INSERT_CHUNK):
        await conn.execute(sa.insert(ru), out[first : first + INSERT_CHUNK])
    return len(out)


async def prune(
    store_or_engine: Store | AsyncEngine,
    now: datetime,
    raw_keep_s: float = RAW_KEEP_S,
    rollup_keep_s: float = ROLLUPS_KEEP_S,
    *,
    minute_keep_s: float = MINUTE_ROLLUPS_KEEP_S,
) -> PruneReport:
    """Delete rows past their window: raw rounds (and their steps) and ingest batches older
    than `raw_keep_s`, minute rollups older than `minute_keep_s`, hour rollups older than
    `rollup_keep_s`. Raw rounds whose buckets are not rolled up yet are kept."""
    engine = _engine(store_or_engine)
    raw_cutoff = now - timedelta(seconds=raw_keep_s)
    rounds = await _prune_rounds(engine, raw_cutoff)
    rollups = 0
    for resolution, keep_s in (
        (Resolution.MINUTE, minute_keep_s),
        (Resolution.HOUR, rollup_keep_s),
    ):
        ru = t.rollups
        rollups += await _delete_chunked(
            engine,
            ru,
            sa.and_(
                ru.c.resolution == resolution.value,
                ru.c.bucket_start < now - timedelta(seconds=keep_s),
            ),
        )
    ib = t.ingest_batches
    batches = await _delete_chunked(engine, ib, ib.c.received_at < raw_cutoff)
    return PruneReport(rounds, rollups, batches)


async def _prune_rounds(engine: AsyncEngine, cutoff: datetime) -> int:
    r, sr = t.rounds, t.step_results
    # One statement reads both the rounds and the earliest pending bucket, so it sees a round
    # and its pending mark together (save_rounds commits them together) or neither.
    earliest_pending = sa.select(sa.func.min(t.rollup_pending.c.bucket_start)).scalar_subquery()
    old = (
        sa.select(r.c.id)
        .where(
            r.c.started_at < cutoff,
            sa.or_(earliest_pending.is_(None), r.c.started_at < earliest_pending),
        )
        .order_by(r.c.started_at)
        .limit(PRUNE_CHUNK)
    )
    deleted = 0
    while True:
        async with engine.begin() as conn:
            ids = (await conn.execute(old)).scalars().all()
            if not ids:
                return deleted
            await conn.execute(sa.delete(sr).where(sr.c.round_id.in_(ids)))
            await conn.execute(sa.delete(r).where(r.c.id.in_(ids)))
            deleted += len(ids)


async def _delete_chunked(engine: AsyncEngine, table: sa.Table, condition: Any) -> int:
    """Delete rows of `table` (which has an `id` key) matching `condition`, a chunk at a time."""
    ids = sa.select(table.c.id).where(condition).limit(PRUNE_CHUNK)
    deleted = 0
    while True:
        async with engine.begin() as conn:
            result = await conn.execute(sa.delete(table).where(table.c.id.in_(ids)))
        deleted += result.rowcount
        if result.rowcount < PRUNE_CHUNK:
            return deleted


async def run_retention(
    store_or_engine: Store | AsyncEngine,
    now: datetime,
    windows: RetentionWindows,
    *,
    on_error: Callable[[], None],
    outage: Outage | None = None,
) -> None:
    """The retention job: roll up the complete minute buckets, then the hour buckets, then prune
    what is past its window. Never raises (a scheduled job must not): a failure is logged
    (a database outage by `outage`, once per outage), `on_error` is called (to count it), and
    the job's next period tries again."""
    try:
        for resolution in ROLLUP_RESOLUTIONS:
            await rollup(store_or_engine, now, resolution, raw_keep_s=windows.raw_s)
        report = await prune(
            store_or_engine,
            now,
            windows.raw_s,
            windows.rollups_s,
            minute_keep_s=windows.minute_rollups_s,
        )
        log.debug("retention done", extra={"report": str(report)})
    except Exception as error:
        on_error()
        if outage is not None and is_unavailable(error):
            outage.failed(error, "retention")
        else:
            log.exception("retention failed; it runs again on its next period")
