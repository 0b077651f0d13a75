"""The Store and the BatchedWriter, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from egresswatch.backoff import Backoff
from egresswatch.evidence import (
    DnsEvidence,
    DnsTry,
    TcpAttempt,
    TcpEvidence,
    TlsEvidence,
    TraceEvidence,
    TraceHop,
)
from egresswatch.model import (
    PROBE_STEPS,
    Reason,
    Role,
    RoundResult,
    SourceKind,
    Status,
    Step,
    StepResult,
)
from egresswatch.storage import BatchedWriter, Store, make_engine
from egresswatch.storage.tables import rounds as rounds_table
from tests.support.databases import store_fixture  # noqa: F401

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def make_round(
    i: int,
    *,
    target: str = "https://api.example.test/",
    source: str = "pod/default/probe-a",
    failing: Step | None = None,
) -> RoundResult:
    """Round `i`: six probe steps, started i seconds after T0, optionally failing one step."""
    steps = []
    for n, step in enumerate(PROBE_STEPS):
        if step is failing:
            steps.append(StepResult(step, Status.FAIL, Reason.CONN_TIMEOUT, 5.0, "timed out"))
        else:
            steps.append(StepResult(step, Status.OK, None, 0.001 * (n + 1) + i * 1e-6, "ok"))
    return RoundResult(target, source, T0 + timedelta(seconds=i), tuple(steps))


RICH = RoundResult(
    target="https://shop.example.test:8443/health",
    source="node/aks-nodepool1-0",
    # Another zone, microseconds: stored as the same instant in UTC.
    started_at=datetime(2026, 3, 1, 13, 30, 15, 123456, tzinfo=timezone(timedelta(hours=1))),
    steps=(
        StepResult(
            Step.DNS_CLUSTER,
            Status.OK,
            None,
            0.0012,
            "10.0.0.10:53 answered shop.example.test. A 203.0.113.7",
            DnsEvidence(
                resolver="10.0.0.10:53",
                candidates=("shop.example.test.",),
                tried=(DnsTry("shop.example.test.", "A", "10.0.0.10:53", "NOERROR", 1.2),),
                addresses=("203.0.113.7",),
                name="shop.example.test.",
            ),
        ),
        StepResult(
            Step.DNS_UPSTREAM,
            Status.SKIPPED,
            Reason.NOT_CONFIGURED,
            0.0,
            "no upstream resolver configured",
        ),
        StepResult(
            Step.TCP_CONNECT,
            Status.OK,
            None,
            0.004,
            "connected",
            TcpEvidence("203.0.113.7", 8443, "dns_cluster", (TcpAttempt("203.0.113.7", "ok"),)),
        ),
        StepResult(
            Step.TLS_HANDSHAKE,
            Status.FAIL,
            Reason.TLS_UNTRUSTED,
            0.031,
            "certificate verify failed: unable to get local issuer — «Corp Proxy CA»",
            TlsEvidence(
                issuer="O=Corp Proxy CA — «intercepting»",
                version="TLSv1.3",
                verify_error="unable to get local issuer certificate",
                days_left=-3,
            ),
        ),
        StepResult(
            Step.HTTP_RESPONSE,
            Status.SKIPPED,
            Reason.DEPENDENCY_FAILED,
            0.0,
            "tls_handshake did not succeed",
        ),
        StepResult(
            Step.PATH_TRACE,
            Status.ERROR,
            Reason.PROBE_ERROR,
            1.5,
            "probe broke",
            TraceEvidence(
                destination="203.0.113.7",
                hops=(TraceHop(1, "10.224.0.1", 0.3, "time_exceeded"), TraceHop(2)),
                last_hop="10.224.0.1",
                stopped="error",
            ),
        ),
    ),
)


async def test_rounds_round_trip_with_every_field(store: Store) -> None:
    others = [make_round(i, failing=Step.TCP_CONNECT if i == 2 else None) for i in range(5)]
    assert await store.save_rounds([RICH, *others]) == 6

    back = await store.rounds_between(RICH.target, T0, T0 + timedelta(hours=2))
    assert back == [RICH]
    assert back[0].started_at.tzinfo is UTC
    assert back[0].started_at == datetime(2026, 3, 1, 12, 30, 15, 123456, tzinfo=UTC)
    assert back[0].first_failing_step is Step.TLS_HANDSHAKE

    back = await store.rounds_between(others[0].target, T0, T0 + timedelta(seconds=4))
    assert back == others[:4]  # the end is exclusive
    assert back[2].first_failing_step is Step.TCP_CONNECT
    assert await store.rounds_between(others[0].target, T0, T0, source="nobody") == []
    assert await store.rounds_between("unknown", T0, T0 + timedelta(days=1)) == []


async def test_rounds_filtered_by_source_and_sources_recorded(store: Store) -> None:
    a = [make_round(i, source="pod/a") for i in range(3)]
    b = [make_round(i, source="pod/b") for i in range(3, 5)]
    await store.save_rounds(a + b)
    target = a[0].target
    assert await store.rounds_between(target, T0, T0 + timedelta(minutes=1), "pod/b") == b
    await store.register_source("pod/a", SourceKind.POD)
    sources = {s.name: s for s in await store.sources()}
    assert sources["pod/a"].kind is SourceKind.POD
    assert sources["pod/b"].kind is None
    assert (sources["pod/b"].first_seen, sources["pod/b"].last_seen) == (
        b[0].started_at,
        b[1].started_at,
    )
    # last_seen moves forward (to the minute: not every batch writes it), never back.
    await store.save_rounds([make_round(30, source="pod/b")])
    sources = {s.name: s for s in await store.sources()}
    assert sources["pod/b"].last_seen == b[1].started_at
    await store.save_rounds([make_round(120, source="pod/b"), make_round(-60, source="pod/b")])
    sources = {s.name: s for s in await store.sources()}
    assert sources["pod/b"].last_seen == T0 + timedelta(seconds=120)


async def test_naive_times_are_refused(store: Store) -> None:
    naive = RoundResult("t", "s", datetime(2026, 3, 1, 12, 0), ())
    with pytest.raises(ValueError, match="naive datetime"):
        await store.save_rounds([naive])


async def test_a_batch_id_is_stored_once(store: Store) -> None:
    batch = [make_round(i) for i in range(3)]
    assert await store.save_rounds(batch, batch_id="agent-1:000001") == 3
    assert await store.save_rounds(batch, batch_id="agent-1:000001") == 0
    assert await store.save_rounds(batch[:1], batch_id="agent-1:000002") == 1
    assert len(await store.rounds_between(batch[0].target, T0, T0 + timedelta(hours=1))) == 4


async def test_batch_ids_are_per_source(store: Store) -> None:
    """Another source's batch that reuses an id is its own, not a retry of the first."""
    one = [make_round(i, source="pod/a") for i in range(2)]
    other = [make_round(i, source="pod/b") for i in range(3)]
    assert await store.save_rounds(one, batch_id="000001", source="pod/a") == 2
    assert await store.save_rounds(other, batch_id="000001", source="pod/b") == 3
    assert await store.save_rounds(other, batch_id="000001", source="pod/b") == 0  # a retry
    assert await store.save_rounds(one, batch_id="000001") == 0  # source from its rounds
    assert len(await store.rounds_between(one[0].target, T0, T0 + timedelta(hours=1))) == 5


async def test_concurrent_uploads_of_one_batch_store_it_once(store: Store) -> None:
    batch = [make_round(i) for i in range(20)]
    stored = await asyncio.gather(*(store.save_rounds(batch, batch_id="b") for _ in range(4)))
    assert sorted(stored) == [0, 0, 0, 20]


async def test_concurrent_saves_keep_each_round_with_its_steps(store: Store) -> None:
    """Ids are taken in bulk (a sequence on PostgreSQL, max + 1 under SQLite's write lock):
    concurrent transactions must never hand one id to two rounds."""
    batches = [
        [make_round(b * 100 + i, source=f"pod/{b}", failing=PROBE_STEPS[b % 6]) for i in range(30)]
        for b in range(6)
    ]
    assert await asyncio.gather(*(store.save_rounds(batch) for batch in batches)) == [30] * 6
    assert await store.save_rounds([]) == 0
    back = await store.rounds_between(batches[0][0].target, T0, T0 + timedelta(hours=1))
    assert back == sorted((r for batch in batches for r in batch), key=lambda r: r.started_at)


async def test_a_failed_transaction_leaves_no_stale_ids(store: Store) -> None:
    """Ids of rows created in a rolled-back transaction must not stay in the cache."""
    duplicate_step = RoundResult(
        "https://new.example.test/",
        "pod/new",
        T0,
        (StepResult(Step.DNS_CLUSTER, Status.OK), StepResult(Step.DNS_CLUSTER, Status.OK)),
    )
    with pytest.raises(sa.exc.IntegrityError):
        await store.save_rounds([duplicate_step])
    good = RoundResult(duplicate_step.target, duplicate_step.source, T0, duplicate_step.steps[:1])
    await store.save_rounds([make_round(0, source="pod/other", target="https://other/")])
    assert await store.save_rounds([good]) == 1
    assert await store.rounds_between(good.target, T0, T0 + timedelta(seconds=1)) == [good]


async def test_sync_targets_marks_the_configured_ones_active(store: Store) -> None:
    await store.save_rounds([make_round(0, target="seen-only.example.test:443")])
    await store.sync_targets(
        [
            ("api", "https://api.example.test/", Role.ENDPOINT),
            ("k8s", "https://kubernetes.io/", "control"),
        ]
    )
    targets = {t.name: t for t in await store.targets()}
    assert {n: t.active for n, t in targets.items()} == {
        "api": True,
        "k8s": True,
        "seen-only.example.test:443": False,
    }
    assert (targets["k8s"].url, targets["k8s"].role) == ("https://kubernetes.io/", Role.CONTROL)

    await store.sync_targets([("k8s", "https://kubernetes.io/healthz", Role.CONTROL)])
    targets = {t.name: t for t in await store.targets()}
    assert (targets["api"].active, targets["k8s"].active) == (False, True)
    assert targets["k8s"].url == "https://kubernetes.io/healthz"


# -- the writer ------------------------------------------------------------------------------


@dataclass
class RecordingHooks:
    depths: list[int] = field(default_factory=list)
    batches: list[tuple[bool, int]] = field(default_factory=list)
    rows: list[tuple[int, int]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    drops: list[tuple[int, str]] = field(default_factory=list)

    def buffer_depth(self, depth: int) -> None:
        self.depths.append(depth)

    def batch_written(self, ok: bool, rounds: int) -> None:
        self.batches.append((ok, rounds))

    def rows_written(self, rounds: int, step_results: int) -> None:
        self.rows.append((rounds, step_results))

    def database_error(self, error: BaseException) -> None:
        self.errors.append(type(error).__name__)

    def rounds_dropped(self, rounds: int, why: str) -> None:
        self.drops.append((rounds, why))


async def eventually(condition: Callable[[], bool], within: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def stored_rounds(store: Store) -> int:
    async with store.engine.connect() as conn:
        return (
            await conn.execute(sa.select(sa.func.count()).select_from(rounds_table))
        ).scalar_one()


async def test_writer_flushes_full_batches_at_once_and_the_rest_on_close(store: Store) -> None:
    hooks = RecordingHooks()
    writer = BatchedWriter(store, max_batch=10, max_delay_s=60, hooks=hooks)
    writer.start()
    for i in range(25):
        writer.submit(make_round(i))
    await eventually(lambda: writer.written == 20)
    assert writer.depth == 5
    await writer.close()
    assert writer.written == 25
    assert hooks.batches == [(True, 10), (True, 10), (True, 5)]
    assert hooks.rows == [(10, 60), (10, 60), (5, 30)]
    assert hooks.depths[-1] == 0
    assert await stored_rounds(store) == 25


async def test_writer_flushes_after_the_delay(store: Store) -> None:
    writer = BatchedWriter(store, max_batch=500, max_delay_s=0.2)
    writer.start()
    started = asyncio.get_running_loop().time()
    for i in range(3):
        writer.submit(make_round(i))
    await eventually(lambda: writer.written == 3, within=5)
    assert asyncio.get_running_loop().time() - started >= 0.2
    await writer.close()
    assert await stored_rounds(store) == 3


def unreachable(store: Store, tmp_path: Path) -> AsyncEngine:
    """An engine of the store's kind whose database cannot be reached: a refused port, or a
    SQLite file whose directory was replaced by a regular file."""
    db_url = store.engine.url
    if db_url.get_backend_name() != "sqlite":
        return make_engine(db_url.set(host="127.0.0.1", port=1))  # nothing listens on port 1
    gone = tmp_path / "gone"
    engine = make_engine(db_url.set(database=str(gone / "egresswatch.db")))
    gone.rmdir()
    gone.write_text("")
    return engine


async def test_writer_buffers_while_the_database_is_down(store: Store, tmp_path: Path) -> None:
    hooks = RecordingHooks()
    writer = BatchedWriter(
        store,
        max_batch=50,
        max_delay_s=0.02,
        backoff=Backoff(0.02, 0.1),
        hooks=hooks,
    )
    database = store.engine
    down = unreachable(store, tmp_path)
    store.engine = down
    writer.start()
    try:
        for i in range(120):
            writer.submit(make_round(i))
        await eventually(lambda: len(hooks.errors) >= 3)
        assert writer.written == 0
        assert writer.depth == 120
        assert all(ok is False for ok, _ in hooks.batches)
        store.engine = database  # the database is back
        await eventually(lambda: writer.written == 120)
    finally:
        store.engine = database
        await writer.close()
        await down.dispose()
    assert writer.dropped == 0
    assert sum(rows for rows, _ in hooks.rows) == 120
    back = await store.rounds_between(make_round(0).target, T0, T0 + timedelta(hours=1))
    assert back == [make_round(i) for i in range(120)]


async def test_writer_drops_the_oldest_beyond_its_cap(store: Store, tmp_path: Path) -> None:
    hooks = RecordingHooks()
    writer = BatchedWriter(
        store, max_batch=10, max_buffer=100, max_delay_s=0, backoff=Backoff(0.01, 30.0), hooks=hooks
    )
    database = store.engine
    down = unreachable(store, tmp_path)
    store.engine = down
    writer.start()
    try:
        for i in range(10):
            writer.submit(make_round(i))
        await eventually(lambda: len(hooks.errors) >= 1)  # the first batch is in flight
        for i in range(10, 150):
            writer.submit(make_round(i))
        assert (writer.depth, writer.dropped) == (100, 50)
        assert sum(n for n, why in hooks.drops if why == "overflow") == 50
        store.engine = database
        await eventually(lambda: writer.depth == 0)
    finally:
        store.engine = database
        await writer.close()
        await down.dispose()
    # The batch in flight is kept; the oldest waiting in the buffer went first.
    kept = [make_round(i) for i in [*range(10), *range(60, 150)]]
    back = await store.rounds_between(kept[0].target, T0, T0 + timedelta(hours=1))
    assert back == kept


async def test_writer_isolates_a_round_the_database_rejects(store: Store) -> None:
    hooks = RecordingHooks()
    writer = BatchedWriter(store, max_batch=5, max_delay_s=0.01, hooks=hooks)
    bad = RoundResult(
        make_round(2).target,
        make_round(2).source,
        T0 + timedelta(seconds=2),
        (StepResult(Step.DNS_CLUSTER, Status.OK), StepResult(Step.DNS_CLUSTER, Status.FAIL)),
    )
    writer.start()
    for r in [make_round(0), make_round(1), bad, make_round(3), make_round(4)]:
        writer.submit(r)
    await writer.close()
    assert (writer.written, writer.dropped) == (4, 1)
    assert hooks.drops == [(1, "rejected")]
    back = await store.rounds_between(bad.target, T0, T0 + timedelta(hours=1))
    assert back == [make_round(i) for i in (0, 1, 3, 4)]


async def test_writer_close_gives_up_after_its_timeout(store: Store, tmp_path: Path) -> None:
    hooks = RecordingHooks()
    writer = BatchedWriter(
        store, max_delay_s=0, backoff=Backoff(0.01, 30.0), close_timeout_s=0.2, hooks=hooks
    )
    down = unreachable(store, tmp_path)
    store.engine = down
    try:
        writer.start()
        for i in range(7):
            writer.submit(make_round(i))
        await writer.close()
    finally:
        await down.dispose()
    assert (writer.written, writer.dropped, writer.depth) == (0, 7, 0)
    assert hooks.drops == [(7, "shutdown")]
    with pytest.raises(RuntimeError, match="closed"):
        writer.submit(make_round(8))
