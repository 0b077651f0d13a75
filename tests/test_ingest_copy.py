"""The fast ingest path (storage/bulk.py: COPY on PostgreSQL, executemany on SQLite) stores what
the plain SQLAlchemy Core path stores, and the writer's close stores everything it holds."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy.ext.asyncio import AsyncConnection

from egresswatch.backoff import Backoff
from egresswatch.evidence import (
    DnsEvidence,
    DnsTry,
    HttpEvidence,
    TcpAttempt,
    TcpEvidence,
    TlsEvidence,
    TraceEvidence,
    TraceHop,
)
from egresswatch.jsonrecord import json_text
from egresswatch.model import Reason, RoundResult, Status, Step, StepResult
from egresswatch.storage import BatchedWriter, Store
from egresswatch.storage import tables as t
from tests.support.databases import store_fixture  # noqa: F401
from tests.test_storage import (
    RICH,
    T0,
    RecordingHooks,
    eventually,
    make_round,
    stored_rounds,
    unreachable,
)

AWKWARD = 'ünïcødé — «quotes» "double" \\ back\tslash\nnew line \u2028 emoji 🛰️ \x01 ctl'
LARGE = "x" * 70_000 + AWKWARD  # past PostgreSQL's 8 kB page: TOASTed, and past COPY's buffer


def awkward_rounds() -> list[RoundResult]:
    """Rounds whose evidence and details hold unicode, escapes, control characters (no NUL,
    which PostgreSQL's text cannot hold), floats, negatives, None and large values."""
    steps = (
        StepResult(
            Step.DNS_CLUSTER,
            Status.OK,
            None,
            0.1 + 0.2,  # 0.30000000000000004: floats must keep their repr
            AWKWARD,
            DnsEvidence(
                resolver="[fd00::10]:53",
                candidates=("näme.example.test.", "x.svc.cluster.local."),
                tried=(DnsTry("näme.example.test.", "AAAA", "[fd00::10]:53", "NXDOMAIN", 1e-7),),
                addresses=(),
                name=AWKWARD,
            ),
        ),
        StepResult(
            Step.TCP_CONNECT,
            Status.FAIL,
            Reason.CONN_TIMEOUT,
            5.0,
            LARGE,
            TcpEvidence(None, 443, "pinned", (TcpAttempt("203.0.113.7", "conn_timeout", 5000),)),
        ),
        StepResult(
            Step.TLS_HANDSHAKE,
            Status.SKIPPED,
            Reason.DEPENDENCY_FAILED,
            0.0,
            "",
            TlsEvidence(issuer=LARGE, days_left=-(2**40), verify_error=AWKWARD),
        ),
        StepResult(
            Step.HTTP_RESPONSE,
            Status.ERROR,
            Reason.PROBE_ERROR,
            1e-9,
            "probe broke",
            HttpEvidence("https://näme.example.test/ü?q=«»", None, status=None, total_ms=1e300),
        ),
        StepResult(
            Step.PATH_TRACE,
            Status.OK,
            None,
            2.5,
            "traced",
            TraceEvidence("203.0.113.7", 443, (TraceHop(1, "10.224.0.1", 0.3), TraceHop(2))),
        ),
    )
    return [
        RoundResult(
            f"https://t{i % 3}.example.test/",
            f"pod/ns/a-{i % 2}",
            T0 + timedelta(seconds=37 * i),
            steps[i % 5 :],
        )
        for i in range(12)
    ] + [RICH]


# -- the reference: what plain SQLAlchemy Core stores ---------------------------------------


async def core_insert(conn: AsyncConnection, rounds: list[RoundResult], batch: int) -> None:
    """The rounds through Core's INSERT, evidence through the JSON type (the engine's
    json_serializer): what the fast path must equal. Names must exist already."""
    sources = dict((await conn.execute(sa.select(t.sources.c.name, t.sources.c.id))).all())
    targets = dict((await conn.execute(sa.select(t.targets.c.name, t.targets.c.id))).all())
    for r in rounds:
        round_id = (
            await conn.execute(
                sa.insert(t.rounds).returning(t.rounds.c.id),
                {
                    "source_id": sources[r.source],
                    "target_id": targets[r.target],
                    "started_at": r.started_at,
                    "duration_s": sum(s.duration_s for s in r.steps),
                    "first_failing_step": r.first_failing_step,
                    "batch_id": batch,
                },
            )
        ).scalar_one()
        await conn.execute(
            sa.insert(t.step_results),
            [
                {
                    "round_id": round_id,
                    "step": s.step.value,
                    "status": s.status.value,
                    "reason": s.reason.value if s.reason else None,
                    "duration_s": s.duration_s,
                    "detail": s.detail,
                    "evidence": s.evidence.to_json(),
                }
                for s in r.steps
            ],
        )


async def stored(conn: AsyncConnection, ids: range | list[int]) -> list[tuple[Any, ...]]:
    """The rounds with these ids and their steps, as the database returns them (evidence as
    the database's own JSON text), ids left out so two copies compare equal."""
    r, sr = t.rounds, t.step_results
    rows = await conn.execute(
        sa.select(
            r.c.source_id,
            r.c.target_id,
            r.c.started_at,
            r.c.duration_s,
            r.c.first_failing_step,
            r.c.batch_id,
            sr.c.step,
            sr.c.status,
            sr.c.reason,
            sr.c.duration_s,
            sr.c.detail,
            sa.cast(sr.c.evidence, sa.Text),
        )
        .select_from(r.join(sr, sr.c.round_id == r.c.id))
        .where(r.c.id.in_(list(ids)))
        .order_by(r.c.id, sr.c.step)
    )
    return [tuple(row) for row in rows.all()]


async def round_ids(conn: AsyncConnection, batch: int | None) -> list[int]:
    where = t.rounds.c.batch_id == batch if batch is not None else t.rounds.c.batch_id.is_(None)
    found = await conn.execute(sa.select(t.rounds.c.id).where(where).order_by(t.rounds.c.id))
    return list(found.scalars())


async def test_the_fast_path_stores_what_core_stores(store: Store) -> None:
    rounds = awkward_rounds()
    assert await store.save_rounds(rounds, "batch-1", "pod/ns/a-0") == len(rounds)
    back = await store.rounds_between(rounds[0].target, T0, T0 + timedelta(hours=1))
    assert back == [r for r in rounds if r.target == rounds[0].target]  # read back whole
    async with store.engine.begin() as conn:
        batch = (await conn.execute(sa.select(t.ingest_batches.c.id))).scalar_one()
        fast_ids = await round_ids(conn, batch)
        # Ids from the sequence (or max + 1), in the order of the rounds, one per round.
        assert fast_ids == list(range(fast_ids[0], fast_ids[0] + len(rounds)))
        started = (
            await conn.execute(
                sa.select(t.rounds.c.started_at)
                .where(t.rounds.c.id.in_(fast_ids))
                .order_by(t.rounds.c.id)
            )
        ).scalars()
        assert list(started) == [r.started_at.astimezone(UTC) for r in rounds]
        await core_insert(conn, rounds, batch + 1000)
        core_ids = await round_ids(conn, batch + 1000)
        fast, core = await stored(conn, fast_ids), await stored(conn, core_ids)
        pending = (
            await conn.execute(
                sa.select(t.rollup_pending.c.resolution, t.rollup_pending.c.bucket_start)
            )
        ).all()
    assert len(fast) == sum(len(r.steps) for r in rounds)
    assert [row[:5] + row[6:] for row in fast] == [row[:5] + row[6:] for row in core]
    assert {row[5] for row in fast} == {batch}
    # Every minute and hour bucket of the rounds is marked for the rollup.
    expected = {("minute", r.started_at.replace(second=0, microsecond=0)) for r in rounds}
    expected |= {("hour", r.started_at.replace(minute=0, second=0, microsecond=0)) for r in rounds}
    assert {(res, when.astimezone(UTC)) for res, when in pending} == {
        (res, when.astimezone(UTC)) for res, when in expected
    }


async def test_later_batches_continue_the_ids_and_a_rejected_batch_stores_nothing(
    store: Store,
) -> None:
    await store.save_rounds([make_round(i) for i in range(3)])
    bad = RoundResult(  # one step twice: the step results' primary key refuses it
        make_round(9).target,
        make_round(9).source,
        T0,
        (StepResult(Step.DNS_CLUSTER, Status.OK), StepResult(Step.DNS_CLUSTER, Status.FAIL)),
    )
    with pytest.raises(sa.exc.IntegrityError):
        await store.save_rounds([make_round(3), bad])
    await store.save_rounds([make_round(i) for i in range(4, 6)])
    async with store.engine.connect() as conn:
        ids = await round_ids(conn, None)
    assert len(ids) == 5 and ids == sorted(ids)
    back = await store.rounds_between(make_round(0).target, T0, T0 + timedelta(hours=1))
    assert back == [make_round(i) for i in (0, 1, 2, 4, 5)]


async def test_a_nul_character_is_refused_as_bad_data_on_postgresql(store: Store) -> None:
    if store.engine.dialect.name != "postgresql":
        pytest.skip("SQLite's text holds a NUL")
    nul = make_round(0)
    nul = RoundResult(
        nul.target,
        nul.source,
        nul.started_at,
        (StepResult(Step.DNS_CLUSTER, Status.OK, None, 0.1, "a\x00b"),),
    )
    with pytest.raises(sa.exc.DataError):  # permanent: the writer isolates and counts it
        await store.save_rounds([nul])
    assert await stored_rounds(store) == 0


# -- evidence text ---------------------------------------------------------------------------


def test_evidence_text_is_the_engines_encoding_of_its_object() -> None:
    for r in awkward_rounds():
        for s in r.steps:
            assert s.evidence.to_json_text() == json_text(s.evidence.to_json())


@settings(max_examples=200, deadline=None)
@given(
    text=st.text(),
    number=st.floats(allow_nan=True, allow_infinity=True),
    integer=st.integers(min_value=-(2**70), max_value=2**70),
    names=st.lists(st.text(max_size=5), max_size=3),
)
def test_evidence_text_matches_for_any_values(
    text: str, number: float, integer: int, names: list[str]
) -> None:
    evidence = DnsEvidence(
        resolver=text,
        candidates=tuple(names),
        tried=(DnsTry(text, "A", "x", text, number), DnsTry("", "", "", "", integer)),
        addresses=tuple(names),
        name=text or None,
    )
    assert evidence.to_json_text() == json_text(evidence.to_json())
    tls = TlsEvidence(issuer=text, days_left=integer, tls_ms=number)
    assert tls.to_json_text() == json_text(tls.to_json())


# -- the writer at shutdown ------------------------------------------------------------------


async def test_close_stores_every_buffered_round_however_long_it_takes(store: Store) -> None:
    """50,000 rounds wait when close is called: all are stored, though writing them takes far
    longer than close_timeout_s (which bounds only a stall: no batch written)."""
    hooks = RecordingHooks()
    count = 50_000
    writer = BatchedWriter(store, max_delay_s=60, close_timeout_s=0.5, hooks=hooks)
    steps = make_round(0).steps  # shared: building 300,000 step results would cost seconds
    for i in range(count):  # buffered before the task starts: all of them wait for close
        writer.submit(
            RoundResult(
                "https://api.example.test/",
                f"pod/default/probe-{i // 3000}",
                T0 + timedelta(milliseconds=i),
                steps,
            )
        )
    writer.start()
    started = time.monotonic()
    await writer.close()
    took = time.monotonic() - started
    print(f"close wrote {count} rounds in {took:.1f}s on {store.engine.dialect.name}")
    assert (writer.written, writer.dropped, writer.depth) == (count, 0, 0)
    assert hooks.drops == []
    assert await stored_rounds(store) == count


async def test_close_waits_for_a_database_that_comes_back(store: Store, tmp_path: Path) -> None:
    """The database is away when close is called, back within close_timeout_s: a long backoff
    is cut short and every round is stored."""
    hooks = RecordingHooks()
    writer = BatchedWriter(
        store, max_delay_s=0, backoff=Backoff(30.0, 60.0), close_timeout_s=3.0, hooks=hooks
    )
    database = store.engine
    down = unreachable(store, tmp_path)
    store.engine = down
    try:
        writer.start()
        for i in range(7):
            writer.submit(make_round(i))
        await eventually(lambda: len(hooks.errors) >= 1)  # now in its 15-30 s backoff
        closing = asyncio.create_task(writer.close())
        await asyncio.sleep(0.3)
        store.engine = database  # back, while the writer would still sleep its 30 s backoff
        await asyncio.wait_for(closing, 10)
    finally:
        store.engine = database
        await down.dispose()
    assert (writer.written, writer.dropped) == (7, 0)
    back = await store.rounds_between(make_round(0).target, T0, T0 + timedelta(hours=1))
    assert back == [make_round(i) for i in range(7)]


class HangingSink:
    """A database that takes the statement and never answers (a seam we own: RoundSink)."""

    async def save_prepared(self, prepared: object, batch_id: str | None = None) -> int:
        await asyncio.Event().wait()
        return 0


async def test_close_gives_up_on_a_write_that_never_answers() -> None:
    hooks = RecordingHooks()
    writer = BatchedWriter(HangingSink(), max_delay_s=0, close_timeout_s=0.05, hooks=hooks)
    writer.start()
    for i in range(5):
        writer.submit(make_round(i))
    await asyncio.sleep(0.05)  # the first batch is in flight, hanging
    await asyncio.wait_for(writer.close(), 10)  # gives up after 10 x close_timeout_s
    assert (writer.written, writer.dropped, writer.depth) == (0, 5, 0)
    assert hooks.drops == [(5, "shutdown")]
