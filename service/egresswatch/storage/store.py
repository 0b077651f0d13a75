"""The Store: rounds in, rounds and timelines out, over an injected AsyncEngine.

Speaks `egresswatch.model` types and the small frozen types of `storage.timeline`; table rows
never leave the storage package. Works the same on SQLite (aiosqlite) and PostgreSQL (asyncpg).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from egresswatch.model import Role, RoundResult, SourceKind, Step
from egresswatch.storage import tables as t
from egresswatch.storage.bulk import RoundRow, insert_rounds_and_steps
from egresswatch.storage.policy import (
    Resolution,
    RetentionWindows,
    choose_resolution,
)
from egresswatch.storage.prepared import PreparedRounds, prepare_rounds
from egresswatch.storage.records import SourceRecord, TargetRecord
from egresswatch.storage.rows import create_names, read_rounds, upsert
from egresswatch.storage.timeline import Timeline, read_raw, read_rollups

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
LAST_SEEN_STEP = timedelta(minutes=1)  # sources' and targets' last_seen are this precise


def utc_now() -> datetime:
    return datetime.now(UTC)


class Store:
    """Reads and writes egresswatch's results.

    `clock` gives the time recorded for ingested batches; `windows` tells `timeline` which rows
    still exist. Name-to-id caches of sources and targets live here, updated only after the
    transaction that created the ids committed (a rolled-back id must never be reused).
    """

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        clock: Clock = utc_now,
        windows: RetentionWindows | None = None,
    ) -> None:
        self.engine = engine
        self.windows = windows or RetentionWindows()
        self._clock = clock
        self._source_ids: dict[str, int] = {}
        self._target_ids: dict[str, int] = {}
        # Per table, the last_seen this Store last wrote for each name (after commit).
        self._last_seen_written: dict[str, dict[str, datetime]] = {"sources": {}, "targets": {}}

    # -- writing ---------------------------------------------------------------------------

    async def save_rounds(
        self,
        rounds: Sequence[RoundResult],
        batch_id: str | None = None,
        source: str | None = None,
    ) -> int:
        """Store `rounds` in one transaction and return how many were stored.

        With a `batch_id` (an agent's ingest batch, from `source`: by default its first round's)
        the batch is recorded too; when that source sent that id before, nothing is stored and
        0 is returned, so a retried upload is harmless. Ids are per source: another source's
        batch with the same id is stored.
        Sources and targets are created by name on first sight (targets active, url = name,
        role endpoint, until `sync_targets` says otherwise). Every minute and hour bucket the
        rounds fall in is marked for `retention.rollup`, in the same transaction.
        Raises ValueError for a naive `started_at`, and the database's errors (sqlalchemy.exc.*);
        nothing is stored then.
        """
        return await self.save_prepared(prepare_rounds(rounds), batch_id, source)

    async def save_prepared(
        self,
        prepared: PreparedRounds,
        batch_id: str | None = None,
        source: str | None = None,
    ) -> int:
        """`save_rounds` of rounds already prepared (storage/prepared.py); `prepared` is not
        changed, so a failed write can be tried again with it."""
        if not prepared and batch_id is None:
            return 0
        async with self.engine.begin() as conn:
            batch_pk: int | None = None
            if batch_id is not None:
                sender = source if source is not None else _first_source(prepared)
                batch_pk = await self._claim_batch(conn, batch_id, sender, len(prepared))
                if batch_pk is None:
                    log.info("ingest batch %s was stored before: ignoring it", batch_id)
                    return 0
            if not prepared:
                return 0
            new_sources, source_ids, sources_seen = await self._resolve_names(
                conn, t.sources, self._source_ids, prepared.sources, {}
            )
            new_targets, target_ids, targets_seen = await self._resolve_names(
                conn,
                t.targets,
                self._target_ids,
                prepared.targets,
                {"role": Role.ENDPOINT.value, "active": True},
            )
            round_rows = [
                RoundRow(
                    source_ids[r.source],
                    target_ids[r.target],
                    r.started_at,
                    r.duration_s,
                    r.first_failing_step,
                    batch_pk,
                )
                for r in prepared.rounds
            ]
            # Written before the rounds: on SQLite this takes the write lock bulk.py relies on.
            await _mark_pending(conn, prepared.buckets)
            await insert_rounds_and_steps(conn, round_rows, prepared.steps)
        self._source_ids.update(new_sources)
        self._target_ids.update(new_targets)
        self._last_seen_written["sources"].update(sources_seen)
        self._last_seen_written["targets"].update(targets_seen)
        return len(prepared)

    async def _claim_batch(
        self, conn: AsyncConnection, batch_id: str, source: str, rounds: int
    ) -> int | None:
        """Record the batch; its primary key, or None when the source's batch id is stored."""
        row = {
            "batch_id": batch_id,
            "source": source,
            "received_at": self._clock(),
            "rounds": rounds,
        }
        # ON CONFLICT DO NOTHING, not a SELECT first: two concurrent uploads of one batch
        # cannot both pass (the second waits on the unique index, then finds the conflict).
        statement = (
            upsert(conn, t.ingest_batches)
            .values(row)
            .on_conflict_do_nothing(index_elements=["source", "batch_id"])
            .returning(t.ingest_batches.c.id)
        )
        pk = (await conn.execute(statement)).scalar_one_or_none()
        return int(pk) if pk is not None else None

    async def _resolve_names(
        self,
        conn: AsyncConnection,
        table: sa.Table,
        cache: Mapping[str, int],
        seen: Mapping[str, tuple[datetime, datetime]],
        defaults: Mapping[str, Any],
    ) -> tuple[dict[str, int], dict[str, int], dict[str, datetime]]:
        """Ids for the names in `seen` (first, last time seen), creating missing rows.

        Returns (ids created or first read in this transaction, ids of all `seen` names,
        last_seen values written), and moves `last_seen` forward. Names are handled in sorted
        order so that two concurrent transactions lock the same rows in the same order (no
        deadlock on PostgreSQL).
        """
        names = sorted(seen)
        missing = {name: seen[name] for name in names if name not in cache}
        fresh = await create_names(conn, table, missing, defaults)
        ids = {name: cache[name] if name in cache else fresh[name] for name in names}
        # last_seen to the minute, not to the batch: every batch touches the same few rows, and
        # on PostgreSQL an update holds their row locks until commit, serializing concurrent
        # ingests. Written when it moved LAST_SEEN_STEP past what this Store last wrote.
        written = self._last_seen_written[table.name]
        stale = [
            name
            for name in names
            if name not in written or seen[name][1] >= written[name] + LAST_SEEN_STEP
        ]
        if stale:
            when = sa.bindparam("b_last_seen", type_=t.UTCDateTime())
            await conn.execute(
                sa.update(table)
                .where(table.c.id == sa.bindparam("b_id"), table.c.last_seen < when)
                .values(last_seen=when),
                [{"b_id": ids[name], "b_last_seen": seen[name][1]} for name in stale],
            )
        return fresh, ids, {name: seen[name][1] for name in stale}

    async def sync_targets(self, targets: Sequence[tuple[str, str, str | Role]]) -> None:
        """Make the configured targets, (name, url, role), the active ones.

        Creates or updates each named target and marks it active; every other stored target
        becomes inactive (its history stays).
        """
        now = self._clock()
        async with self.engine.begin() as conn:
            names = sorted({name for name, _, _ in targets})
            if targets:
                statement = upsert(conn, t.targets)
                statement = statement.on_conflict_do_update(
                    index_elements=["name"],
                    set_={
                        "url": statement.excluded.url,
                        "role": statement.excluded.role,
                        "active": True,
                    },
                )
                rows = {
                    name: {
                        "name": name,
                        "url": url,
                        "role": Role(role).value,
                        "active": True,
                        "first_seen": now,
                        "last_seen": now,
                    }
                    for name, url, role in targets
                }
                await conn.execute(statement, [rows[name] for name in names])
            await conn.execute(
                sa.update(t.targets)
                .where(t.targets.c.name.not_in(names), t.targets.c.active.is_(True))
                .values(active=False)
            )

    async def register_source(self, name: str, kind: SourceKind, node: str | None = None) -> None:
        """Create or update a source with its kind and node (rounds name their source, not its
        kind or the node it runs on)."""
        now = self._clock()
        async with self.engine.begin() as conn:
            statement = upsert(conn, t.sources).values(
                name=name, kind=kind.value, node=node, first_seen=now, last_seen=now
            )
            statement = statement.on_conflict_do_update(
                index_elements=["name"],
                set_={"kind": statement.excluded.kind, "node": statement.excluded.node},
            )
            await conn.execute(statement)

    # -- reading ---------------------------------------------------------------------------

    async def sources(self) -> list[SourceRecord]:
        """Every source ever seen, by name."""
        s = t.sources
        columns = (s.c.name, s.c.kind, s.c.first_seen, s.c.last_seen, s.c.node)
        query = sa.select(*columns).order_by(s.c.name)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [
            SourceRecord(name, SourceKind(kind) if kind else None, first, last, node)
            for name, kind, first, last, node in rows
        ]

    async def targets(self) -> list[TargetRecord]:
        """Every target ever configured or seen, active or not, by name."""
        tg = t.targets
        query = sa.select(
            tg.c.name, tg.c.url, tg.c.role, tg.c.active, tg.c.first_seen, tg.c.last_seen
        ).order_by(tg.c.name)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [
            TargetRecord(name, url, Role(role), bool(active), first, last)
            for name, url, role, active, first, last in rows
        ]

    async def rounds_between(
        self, target: str, start: datetime, end: datetime, source: str | None = None
    ) -> list[RoundResult]:
        """The raw rounds of `target` started in [start, end), oldest first.

        Steps come back in checklist order. Empty when the target is unknown or its rounds in
        that range were pruned.
        """
        r, s, tg = t.rounds, t.sources, t.targets
        where = [tg.c.name == target, r.c.started_at >= start, r.c.started_at < end]
        if source is not None:
            where.append(s.c.name == source)
        async with self.engine.connect() as conn:
            return await read_rounds(conn, *where)

    async def timeline(
        self,
        target: str,
        start: datetime,
        end: datetime,
        step: Step | None = None,
        *,
        now: datetime,
        source: str | None = None,
    ) -> Timeline:
        """`target`'s results in [start, end): raw, minute or hour points (policy.py says which).

        Raw for a range of at most 6 h inside the raw window, minute rollups for at most 7 d
        inside the minute rollups' window, hour rollups otherwise. `step` and `source` narrow it.
        """
        resolution = choose_resolution(start, end, now, self.windows)
        async with self.engine.connect() as conn:
            target_id = (
                await conn.execute(sa.select(t.targets.c.id).where(t.targets.c.name == target))
            ).scalar_one_or_none()
            if target_id is None:
                points = []
            elif resolution is Resolution.RAW:
                points = await read_raw(conn, target_id, start, end, step, source)
            else:
                points = await read_rollups(conn, target_id, start, end, resolution, step, source)
        return Timeline(target, start, end, resolution, tuple(points))


def _first_source(prepared: PreparedRounds) -> str:
    return prepared.rounds[0].source if prepared.rounds else ""


async def _mark_pending(conn: AsyncConnection, touched: Iterable[tuple[str, datetime]]) -> None:
    """Mark these (resolution, bucket start) as needing (re)computation (tables.rollup_pending).

    Sorted: concurrent transactions lock the rows in the same order (no deadlock).
    """
    buckets = sorted(touched)
    statement = upsert(conn, t.rollup_pending)
    statement = statement.on_conflict_do_update(
        index_elements=["resolution", "bucket_start"],
        set_={"version": t.rollup_pending.c.version + 1},
    )
    await conn.execute(
        statement, [{"resolution": res, "bucket_start": b, "version": 1} for res, b in buckets]
    )
