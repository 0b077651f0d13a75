"""The BatchedWriter prepares the next batch while the database writes the previous one.

A gated sink (a seam we own: RoundSink) holds the first write open so the tests can look at
what was prepared meanwhile; the order test writes to the real databases.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import replace
from datetime import timedelta, timezone

import sqlalchemy as sa

from egresswatch.model import RoundResult
from egresswatch.storage import BatchedWriter, Store
from egresswatch.storage import tables as t
from egresswatch.storage.policy import ROLLUP_RESOLUTIONS, bucket_start
from egresswatch.storage.prepared import PreparedRounds, prepare_rounds
from tests.support.databases import store_fixture  # noqa: F401
from tests.test_storage import T0, eventually, make_round


class GatedSink:
    """Takes batches; the first write waits until `gate` is set."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.saved: list[PreparedRounds] = []

    async def save_prepared(self, prepared: PreparedRounds, batch_id: str | None = None) -> int:
        if not self.saved:
            await self.gate.wait()
        self.saved.append(prepared)
        return len(prepared)


class CountingPrepare:
    """prepare_rounds, remembering how many rounds it was given and what it returned."""

    def __init__(self) -> None:
        self.rounds = 0
        self.made: list[PreparedRounds] = []

    def __call__(self, rounds: Sequence[RoundResult], first: int) -> PreparedRounds:
        self.rounds += len(rounds)
        self.made.append(prepare_rounds(rounds, first))
        return self.made[-1]


def starts(prepared: PreparedRounds) -> list[int]:
    """The rounds' positions in submission order (make_round(i) starts i seconds after T0)."""
    return [int((r.started_at - T0).total_seconds()) for r in prepared.rounds]


async def test_the_next_batch_is_prepared_while_one_is_written() -> None:
    sink, prepare = GatedSink(), CountingPrepare()
    written: list[Sequence[RoundResult]] = []
    writer = BatchedWriter(
        sink, max_batch=20, max_delay_s=60, prepare=prepare, on_written=written.append
    )
    writer.start()
    for i in range(40):
        writer.submit(make_round(i))
    # The first write is held open: the second batch gets prepared meanwhile.
    await eventually(lambda: prepare.rounds == 40)
    assert sink.saved == []
    sink.gate.set()
    await writer.close()
    assert [starts(p) for p in sink.saved] == [list(range(20)), list(range(20, 40))]
    assert prepare.rounds == 40  # nothing prepared twice
    assert [[r.started_at for r in batch] for batch in written] == [
        [make_round(i).started_at for i in range(20)],
        [make_round(i).started_at for i in range(20, 40)],
    ]


async def test_rounds_dropped_meanwhile_void_the_prepared_batch() -> None:
    """The buffer overflows while the second batch waits prepared: the oldest rounds go, and
    what is written next is the buffer's head then, prepared again."""
    sink = GatedSink()
    writer = BatchedWriter(sink, max_batch=10, max_buffer=30, max_delay_s=60)
    writer.start()
    for i in range(20):
        writer.submit(make_round(i))
    await eventually(lambda: writer._ready is not None)  # rounds 10-19, prepared
    for i in range(20, 35):  # 35 > 30 held: rounds 10-14 are dropped
        writer.submit(make_round(i))
    assert writer.dropped == 5
    sink.gate.set()
    await writer.close()
    assert [starts(p) for p in sink.saved] == [
        list(range(10)),
        list(range(15, 25)),
        list(range(25, 35)),
    ]


async def test_ids_and_judging_keep_the_submission_order(store: Store) -> None:
    """Many batches through the pipelined writer into a real database: each batch judged
    once, in order, and the ids follow the order the rounds were submitted in."""
    judged: list[RoundResult] = []
    writer = BatchedWriter(store, max_batch=100, max_delay_s=60, on_written=judged.extend)
    steps = make_round(0).steps
    rounds = [
        RoundResult(
            f"https://t{i % 3}.example.test/",
            f"pod/ns/a-{i % 7}",
            T0 + timedelta(seconds=i),
            steps,
        )
        for i in range(1000)
    ]
    writer.start()
    for r in rounds:
        writer.submit(r)
    await writer.close()
    assert judged == rounds
    query = sa.select(t.rounds.c.started_at).order_by(t.rounds.c.id)
    async with store.engine.connect() as conn:
        by_id = list((await conn.execute(query)).scalars())
    assert by_id == [r.started_at for r in rounds]


def test_prepared_buckets_are_every_rounds_own_in_any_order_and_zone() -> None:
    # Buckets are computed once per finest bucket and reused for the rounds inside it: rounds
    # that leave it and come back, cross an hour, or carry another zone must still count.
    offsets = [0, 59, 61, 30, 3599, 3600, 7260, 45, 7261, -1, 86_400]
    rounds = [make_round(i) for i in offsets]
    shifted = make_round(3 * 3600 + 125)
    rounds.append(
        replace(shifted, started_at=shifted.started_at.astimezone(timezone(timedelta(hours=-5))))
    )
    expected = {
        (resolution.value, bucket_start(r.started_at, resolution))
        for r in rounds
        for resolution in ROLLUP_RESOLUTIONS
    }
    assert prepare_rounds(rounds).buckets == expected
    assert len(expected) == 14  # 8 minutes in 6 hours (see offsets)
