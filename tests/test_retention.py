"""Rollups, pruning and the timeline's choice of resolution, over synthetic days.

The clock is injected (`now`): nothing sleeps. Expected numbers are computed here, from the
rounds the test made, with the statistics module.
"""

from __future__ import annotations

import random
import statistics
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from egresswatch.model import PROBE_STEPS, Reason, RoundResult, Status, Step, StepResult
from egresswatch.storage import Resolution, RetentionWindows, Store, choose_resolution, retention
from egresswatch.storage.policy import bucket_start
from egresswatch.storage.retention import prune, quantile, rollup
from egresswatch.storage.tables import rollup_pending, rollups
from egresswatch.storage.timeline import TimelinePoint
from tests.support.databases import store_fixture  # noqa: F401

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
TARGET = "https://api.example.test/"
SOURCES = ("node/b", "pod/a")
DAY = timedelta(days=1)


def synthetic_rounds(start: datetime, count: int, every_s: float, seed: int) -> list[RoundResult]:
    """`count` rounds per source from `start`, with varied durations and statuses."""
    rng = random.Random(seed)
    made = []
    for i in range(count):
        for source in SOURCES:
            steps = []
            for step in PROBE_STEPS:
                duration = round(rng.lognormvariate(-4, 1), 6)
                if step is Step.TCP_CONNECT and rng.random() < 0.2:
                    steps.append(StepResult(step, Status.FAIL, Reason.CONN_TIMEOUT, duration))
                elif step is Step.PATH_TRACE and i % 3:
                    steps.append(StepResult(step, Status.SKIPPED, Reason.NOT_DUE))
                elif step is Step.DNS_UPSTREAM and i % 11 == 5:
                    steps.append(StepResult(step, Status.ERROR, Reason.PROBE_ERROR, duration))
                else:
                    steps.append(StepResult(step, Status.OK, None, duration))
            at = start + timedelta(seconds=i * every_s, microseconds=rng.randrange(1000))
            made.append(RoundResult(TARGET, source, at, tuple(steps)))
    return made


def expected_points(made: list[RoundResult], resolution: Resolution) -> list[TimelinePoint]:
    groups: dict[tuple[datetime, str, Step], list[StepResult]] = defaultdict(list)
    for r in made:
        for s in r.steps:
            groups[(bucket_start(r.started_at, resolution), r.source, s.step)].append(s)
    points = []
    order = list(Step)
    for (time, source, step), results in sorted(
        groups.items(), key=lambda kv: (kv[0][0], kv[0][1], order.index(kv[0][2]))
    ):
        ran = sorted(s.duration_s for s in results if s.status in (Status.OK, Status.FAIL))
        if len(ran) >= 2:
            cuts = statistics.quantiles(ran, n=100, method="inclusive")
            stats: list[float | None] = [statistics.median(ran), cuts[94], cuts[98], max(ran)]
        else:
            stats = [ran[0]] * 4 if ran else [None] * 4
        points.append(
            TimelinePoint(
                time,
                source,
                step,
                count=len(ran),
                failures=sum(s.status is Status.FAIL for s in results),
                skipped=sum(s.status is Status.SKIPPED for s in results),
                errors=sum(s.status is Status.ERROR for s in results),
                p50_s=stats[0],
                p95_s=stats[1],
                p99_s=stats[2],
                max_s=stats[3],
            )
        )
    return points


def assert_points_equal(got: tuple[TimelinePoint, ...], want: list[TimelinePoint]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert (g.time, g.source, g.step, g.count, g.failures, g.skipped, g.errors) == (
            w.time,
            w.source,
            w.step,
            w.count,
            w.failures,
            w.skipped,
            w.errors,
        )
        for name in ("p50_s", "p95_s", "p99_s", "max_s"):
            assert getattr(g, name) == pytest.approx(getattr(w, name), rel=1e-9), name


async def rollup_rows(store: Store) -> list[tuple[Any, ...]]:
    columns = [c for c in rollups.c if c.name != "id"]
    async with store.engine.connect() as conn:
        rows = await conn.execute(sa.select(*columns).order_by(*columns[:6]))
        return [tuple(row) for row in rows]


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tiny chunks, so a few hundred rows cross every chunk boundary."""
    monkeypatch.setattr(retention, "STREAM_PARTITION", 7)
    monkeypatch.setattr(retention, "INSERT_CHUNK", 5)
    monkeypatch.setattr(retention, "PRUNE_CHUNK", 7)
    monkeypatch.setattr(
        retention, "BUCKETS_PER_TRANSACTION", {Resolution.MINUTE: 2, Resolution.HOUR: 1}
    )


async def test_rollups_match_numbers_computed_here(store: Store) -> None:
    # Three minutes at 12:00-12:03 and a few rounds an hour later: 2 hour buckets, 4 minutes.
    made = synthetic_rounds(T0, 36, 5, seed=1) + synthetic_rounds(T0 + timedelta(hours=1), 4, 7, 2)
    await store.save_rounds(made)
    now = T0 + timedelta(hours=3)
    minute = await rollup(store, now, "minute")
    hour = await rollup(store.engine, now, Resolution.HOUR)
    assert (minute.buckets, hour.buckets) == (4, 2)
    assert minute.rows == len(expected_points(made, Resolution.MINUTE))

    timeline = await store.timeline(TARGET, T0 - timedelta(hours=4), now, now=now)  # > 6 h
    assert timeline.resolution is Resolution.MINUTE
    assert_points_equal(timeline.points, expected_points(made, Resolution.MINUTE))

    timeline = await store.timeline(TARGET, now - 8 * DAY, now, now=now)  # > 7 d
    assert timeline.resolution is Resolution.HOUR
    assert_points_equal(timeline.points, expected_points(made, Resolution.HOUR))


async def test_rollup_waits_for_complete_buckets_and_never_counts_twice(store: Store) -> None:
    made = synthetic_rounds(T0, 12, 5, seed=3)  # 12:00:00 to 12:00:55
    await store.save_rounds(made)
    assert (await rollup(store, T0 + timedelta(seconds=59), "minute")).buckets == 0
    assert (await rollup(store, T0 + timedelta(seconds=60), "minute")).buckets == 1
    first = await rollup_rows(store)
    assert len(first) == len(SOURCES) * len(PROBE_STEPS)

    assert (await rollup(store, T0 + timedelta(minutes=5), "minute")).buckets == 0
    assert await rollup_rows(store) == first

    # A round that arrives late (an agent that was buffering) is rolled up into its minute.
    late = synthetic_rounds(T0 + timedelta(seconds=58), 1, 1, seed=4)
    await store.save_rounds(late)
    assert (await rollup(store, T0 + timedelta(minutes=6), "minute")).buckets == 1
    now = T0 + timedelta(minutes=6)
    timeline = await store.timeline(TARGET, T0 - timedelta(hours=7), now, now=now)
    assert_points_equal(timeline.points, expected_points(made + late, Resolution.MINUTE))


async def test_a_bucket_marked_again_while_rolling_up_is_rolled_up_again(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    await store.save_rounds(synthetic_rounds(T0, 3, 5, seed=5))
    compute = retention._rollup_bucket

    async def marked_meanwhile(
        conn: AsyncConnection, resolution: Resolution, start: datetime
    ) -> int:
        # What save_rounds does when a round for this bucket commits during the computation.
        await conn.execute(sa.update(rollup_pending).values(version=rollup_pending.c.version + 1))
        return await compute(conn, resolution, start)

    monkeypatch.setattr(retention, "_rollup_bucket", marked_meanwhile)
    assert (await rollup(store, T0 + timedelta(minutes=1), "minute")).buckets == 1
    monkeypatch.setattr(retention, "_rollup_bucket", compute)
    assert (await rollup(store, T0 + timedelta(minutes=1), "minute")).buckets == 1
    assert (await rollup(store, T0 + timedelta(minutes=1), "minute")).buckets == 0


async def test_prune_keeps_rollups_and_drops_old_raw_rows(store: Store) -> None:
    old = synthetic_rounds(T0, 20, 10, seed=6)  # day 0, 12:00-12:03
    recent = synthetic_rounds(T0 + 20 * DAY, 5, 10, seed=7)  # day 20
    await store.save_rounds(old, batch_id="old-batch")
    await store.save_rounds(recent)
    now = T0 + 20 * DAY + timedelta(hours=2)

    # Nothing is rolled up yet: pruning must keep every raw round.
    report = await prune(store, now)
    assert report.rounds == 0
    assert len(await store.rounds_between(TARGET, T0, T0 + DAY)) == len(old)

    await rollup(store, now, "minute")
    await rollup(store, now, "hour")
    report = await prune(store, now, raw_keep_s=14 * 86400, rollup_keep_s=400 * 86400)
    assert report.rounds == len(old)
    assert report.batches == 0  # the batch was received "now" by the store's clock
    assert await store.rounds_between(TARGET, T0, T0 + DAY) == []
    assert await store.rounds_between(TARGET, T0 + 20 * DAY, now) == sorted(
        recent, key=lambda r: r.started_at
    )
    # The old range is now answered from rollups, with the same numbers as before pruning.
    timeline = await store.timeline(TARGET, T0, T0 + timedelta(hours=1), now=now)
    assert timeline.resolution is Resolution.MINUTE
    assert_points_equal(timeline.points, expected_points(old, Resolution.MINUTE))

    # Past the minute rollups' window (31 d) only hours remain; past 400 d nothing.
    later = T0 + 40 * DAY
    report = await prune(store, later)
    assert report.rollups == len(expected_points(old, Resolution.MINUTE))
    timeline = await store.timeline(TARGET, T0, T0 + timedelta(hours=1), now=later)
    assert timeline.resolution is Resolution.HOUR
    assert_points_equal(timeline.points, expected_points(old, Resolution.HOUR))
    await prune(store, T0 + 421 * DAY)
    assert await rollup_rows(store) == []


async def test_prune_drops_old_ingest_batches(store: Store) -> None:
    at_t0 = Store(store.engine, clock=lambda: T0)  # the batch is received at T0
    await at_t0.save_rounds(synthetic_rounds(T0, 1, 1, seed=8), batch_id="b-1")
    await rollup(at_t0, T0 + timedelta(hours=2), "minute")
    await rollup(at_t0, T0 + timedelta(hours=2), "hour")
    report = await prune(at_t0, T0 + 15 * DAY)
    assert (report.rounds, report.batches) == (len(SOURCES), 1)
    # The batch id is forgotten with its rounds: the window for agent retries is over.
    assert await at_t0.save_rounds(synthetic_rounds(T0, 1, 1, seed=8), batch_id="b-1") == 2


async def test_a_lagging_rollup_loses_nothing(store: Store) -> None:
    """Buckets never rolled up keep their raw rows however old, and are rolled up late."""
    old = synthetic_rounds(T0, 6, 5, seed=9)
    await store.save_rounds(old)
    now = T0 + 20 * DAY
    assert (await prune(store, now)).rounds == 0
    assert (await rollup(store, now, "minute")).buckets == 1
    assert (await rollup(store, now, "hour")).buckets == 1
    assert (await prune(store, now)).rounds == len(old)
    timeline = await store.timeline(TARGET, T0, T0 + timedelta(hours=1), now=now)
    assert_points_equal(timeline.points, expected_points(old, Resolution.MINUTE))


async def test_rounds_later_than_the_raw_window_do_not_replace_rollups(store: Store) -> None:
    old = synthetic_rounds(T0, 6, 5, seed=9)
    await store.save_rounds(old)
    await rollup(store, T0 + DAY, "minute")
    now = T0 + 20 * DAY
    await prune(store, now, minute_keep_s=400 * 86400)  # keeps the minute rollups
    before = await rollup_rows(store)
    assert before
    # Rounds 20 days late: their minute has a rollup whose raw rows are gone.
    await store.save_rounds(synthetic_rounds(T0 + timedelta(seconds=40), 1, 1, seed=10))
    report = await rollup(store, now, "minute")
    assert (report.buckets, report.skipped) == (0, 1)
    assert await rollup_rows(store) == before


async def test_timeline_picks_raw_minute_or_hour(store: Store) -> None:
    made = synthetic_rounds(T0, 24, 5, seed=11)  # 12:00 to 12:02
    await store.save_rounds(made)
    now = T0 + timedelta(hours=1)
    await rollup(store, now, "minute")
    await rollup(store, now, "hour")

    raw = await store.timeline(TARGET, T0, now, Step.TCP_CONNECT, now=now, source="pod/a")
    assert raw.resolution is Resolution.RAW
    mine = [r for r in made if r.source == "pod/a"]
    assert [(p.time, p.status, p.reason) for p in raw.points] == [
        (r.started_at, r.steps[2].status, r.steps[2].reason) for r in mine
    ]
    assert {p.step for p in raw.points} == {Step.TCP_CONNECT}

    minute = await store.timeline(TARGET, now - 2 * DAY, now, Step.TCP_CONNECT, now=now)
    assert minute.resolution is Resolution.MINUTE
    assert [(p.time, p.source) for p in minute.points] == [
        (T0 + timedelta(minutes=m), s) for m in range(2) for s in SOURCES
    ]
    assert all(p.status is None for p in minute.points)

    hour = await store.timeline(TARGET, now - 30 * DAY, now, now=now)
    assert hour.resolution is Resolution.HOUR
    assert {p.time for p in hour.points} == {T0}

    assert (await store.timeline("unknown", T0, now, now=now)).points == ()


@pytest.mark.parametrize(
    ("start", "end", "now", "expected"),
    [
        (T0, T0 + timedelta(hours=6), T0 + timedelta(hours=6), Resolution.RAW),
        (T0, T0 + timedelta(hours=6, seconds=1), T0 + DAY, Resolution.MINUTE),
        (T0, T0 + timedelta(hours=1), T0 + 14 * DAY, Resolution.RAW),
        (T0, T0 + timedelta(hours=1), T0 + 14 * DAY + timedelta(seconds=1), Resolution.MINUTE),
        (T0, T0 + 7 * DAY, T0 + 7 * DAY, Resolution.MINUTE),
        (T0, T0 + 7 * DAY + timedelta(seconds=1), T0 + 8 * DAY, Resolution.HOUR),
        (T0, T0 + timedelta(hours=1), T0 + 32 * DAY, Resolution.HOUR),
    ],
)
def test_choose_resolution(
    start: datetime, end: datetime, now: datetime, expected: Resolution
) -> None:
    assert choose_resolution(start, end, now, RetentionWindows()) is expected


@pytest.mark.parametrize("size", [2, 3, 10, 99, 100, 101, 1000])
def test_quantile_matches_the_statistics_module(size: int) -> None:
    values = sorted(random.Random(size).expovariate(10) for _ in range(size))
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    assert quantile(values, 0.5) == pytest.approx(statistics.median(values))
    assert quantile(values, 0.95) == pytest.approx(cuts[94])
    assert quantile(values, 0.99) == pytest.approx(cuts[98])
    assert quantile([0.25], 0.99) == 0.25


def test_buckets_are_utc_floors() -> None:
    moment = datetime(2026, 3, 1, 13, 59, 59, 999999, tzinfo=UTC)
    assert bucket_start(moment, Resolution.MINUTE) == datetime(2026, 3, 1, 13, 59, tzinfo=UTC)
    assert bucket_start(moment, Resolution.HOUR) == datetime(2026, 3, 1, 13, tzinfo=UTC)
    with pytest.raises(ValueError, match="naive"):
        bucket_start(datetime(2026, 3, 1), Resolution.MINUTE)
