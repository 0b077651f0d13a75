"""The agent's spill file and buffer (agent/spill.py, agent/buffer.py): framing, a torn or
corrupt tail, the bound, the order, compaction, the owner check, and the buffer's memory bound
moving the oldest rounds to the file. Real files in tmp_path; no process, no network."""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import datetime
from pathlib import Path

import pytest

from egresswatch.agent.buffer import Round, RoundBuffer, round_cost
from egresswatch.agent.http_client import ControllerClient
from egresswatch.agent.sink import HttpSink, SinkTuning
from egresswatch.agent.sink_types import DropReason, SinkStats
from egresswatch.agent.spill import COMPACT_MIN_BYTES, MAGIC, SpillError, SpillFile
from egresswatch.agent.spiller import Spiller
from egresswatch.model import SourceKind
from tests.support.agent_http import controller_client
from tests.support.rounds import round_
from tests.support.service import free_port, wait_for

SOURCE = "node-a"


def spill_at(path: Path, max_bytes: int = 1 << 20, source: str = SOURCE) -> SpillFile:
    spill = SpillFile(path, source=source, source_kind="node", max_bytes=max_bytes)
    spill.open()
    return spill


def rounds(first: int, count: int, size: int = 100) -> list[tuple[str, bytes]]:
    """Round documents numbered first.. (JSON, `size` bytes or so each)."""
    return [
        ("shop", json.dumps({"n": n, "pad": "x" * size}).encode())
        for n in range(first, first + count)
    ]


def drain(spill: SpillFile) -> list[tuple[str, list[int]]]:
    """Every pending batch, oldest first, acknowledged: (id, round numbers)."""
    found = []
    while (batch := spill.first()) is not None:
        found.append((batch.batch_id, [json.loads(doc)["n"] for _, doc in batch.rounds]))
        spill.ack(batch.batch_id)
    return found


def test_batches_come_back_in_order_under_their_ids_after_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "agent.spill"
    spill = spill_at(path)
    for i in range(3):
        assert spill.append(f"b{i}", rounds(i * 10, 10)) == 0
    spill.close()  # as a SIGKILL would leave it: no sync, no goodbye

    again = spill_at(path)
    assert (again.pending_batches, again.pending_rounds) == (3, 30)
    found = drain(again)
    assert [batch_id for batch_id, _ in found] == ["b0", "b1", "b2"]
    assert [n for _, numbers in found for n in numbers] == list(range(30))
    # Nothing pending: the file is cut back to its header.
    assert path.stat().st_size == again.size_bytes < 200
    again.close()


def test_an_acknowledged_batch_is_not_sent_again_after_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "agent.spill"
    spill = spill_at(path)
    spill.append("b0", rounds(0, 5))
    spill.append("b1", rounds(5, 5))
    first = spill.first()
    assert first is not None and first.batch_id == "b0"
    spill.ack("b0")
    spill.close()
    again = spill_at(path)
    assert [batch_id for batch_id, _ in drain(again)] == ["b1"]


@pytest.mark.parametrize("cut", [1, 5, 9, 60])
def test_a_torn_tail_is_cut_and_the_good_prefix_kept(
    tmp_path: Path, cut: int, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "agent.spill"
    spill = spill_at(path)
    spill.append("b0", rounds(0, 4))
    spill.append("b1", rounds(4, 4))
    good = spill.size_bytes
    spill.append("b2", rounds(8, 4))
    spill.close()
    with path.open("r+b") as file:  # killed in the middle of writing b2
        file.truncate(path.stat().st_size - cut)

    with caplog.at_level(logging.ERROR):
        again = spill_at(path)
    assert [r.getMessage() for r in caplog.records].count(
        "spill file has a torn or corrupt tail: the rounds before it are kept"
    ) == 1
    assert path.stat().st_size == good
    again.append("b3", rounds(12, 1))  # writing goes on after the good prefix
    assert [batch_id for batch_id, _ in drain(again)] == ["b0", "b1", "b3"]


def test_a_corrupt_frame_is_found_by_its_checksum(tmp_path: Path) -> None:
    path = tmp_path / "agent.spill"
    spill = spill_at(path)
    spill.append("b0", rounds(0, 4))
    spill.append("b1", rounds(4, 4))
    inside_b1 = spill.size_bytes - 30  # in the padding of its last round: still JSON
    spill.append("b2", rounds(8, 4))
    spill.close()
    data = bytearray(path.read_bytes())
    assert data[inside_b1 : inside_b1 + 1] == b"x"
    data[inside_b1] = ord("y")
    path.write_bytes(bytes(data))
    again = spill_at(path)
    # b2 is behind the corrupt frame: nothing tells where it starts, so it goes too.
    assert [batch_id for batch_id, _ in drain(again)] == ["b0"]


def test_the_bound_drops_the_oldest_but_never_the_batch_in_flight(tmp_path: Path) -> None:
    path = tmp_path / "agent.spill"
    spill = spill_at(path, max_bytes=20_000)
    dropped = 0
    for i in range(30):
        dropped += spill.append(f"b{i}", rounds(i * 5, 5), keep_first=True)
        assert path.stat().st_size <= 20_000
    assert dropped > 0
    found = drain(spill)
    numbers = [n for _, batch in found for n in batch]
    assert found[0] == ("b0", [0, 1, 2, 3, 4])  # in flight: kept
    newest = numbers[5:]
    assert newest == list(range(150 - len(newest), 150))  # then the newest, in order
    assert dropped + len(numbers) == 150


def test_a_batch_larger_than_the_bound_is_dropped_alone(tmp_path: Path) -> None:
    spill = spill_at(tmp_path / "agent.spill", max_bytes=4_000)
    spill.append("small", rounds(0, 1))
    assert spill.append("huge", rounds(1, 100)) == 100
    assert [batch_id for batch_id, _ in drain(spill)] == ["small"]


def test_acknowledged_bytes_are_compacted_away(tmp_path: Path) -> None:
    path = tmp_path / "agent.spill"
    spill = spill_at(path, max_bytes=64 << 20)
    big = COMPACT_MIN_BYTES // 10
    for i in range(30):
        spill.append(f"b{i}", rounds(i, 1, size=big))
    peak = path.stat().st_size
    for i in range(20):
        batch = spill.first()
        assert batch is not None and batch.batch_id == f"b{i}"
        spill.ack(batch.batch_id)
    # Compacted when the acknowledged bytes outweighed the pending ones (15 each), then 5
    # more acknowledged: the file holds 15 batches' bytes, not 30.
    assert path.stat().st_size < peak * 0.6
    spill.close()
    again = spill_at(path, max_bytes=64 << 20)
    assert [batch_id for batch_id, _ in drain(again)] == [f"b{i}" for i in range(20, 30)]


def test_another_sources_file_is_refused_naming_the_flag(tmp_path: Path) -> None:
    path = tmp_path / "agent.spill"
    spill_at(path).close()
    with pytest.raises(SpillError, match=r"--spill-file: .* belongs to another source"):
        spill_at(path, source="node-b")
    other = tmp_path / "notes.txt"
    other.write_text("hello")
    with pytest.raises(SpillError, match=r"--spill-file: .* is not an egresswatch spill file"):
        spill_at(other)
    assert other.read_text() == "hello"  # refused, not overwritten


def test_a_file_killed_while_its_header_was_written_starts_afresh(tmp_path: Path) -> None:
    path = tmp_path / "agent.spill"
    path.write_bytes(MAGIC + b"\x10\x00")
    spill = spill_at(path)
    spill.append("b0", rounds(0, 1))
    spill.close()
    assert [batch_id for batch_id, _ in drain(spill_at(path))] == ["b0"]


async def test_sync_makes_writes_durable_from_a_thread(tmp_path: Path) -> None:
    spill = spill_at(tmp_path / "agent.spill")
    spill.append("b0", rounds(0, 1))
    await spill.sync()
    spill.close()
    assert [batch_id for batch_id, _ in drain(spill_at(tmp_path / "agent.spill"))] == ["b0"]


# -- the buffer --------------------------------------------------------------------------------


class Drops:
    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def __call__(self, rounds: int, why: DropReason) -> None:
        self.counts[why] = self.counts.get(why, 0) + rounds


def make_buffer(spill: SpillFile | None, max_bytes: int, drops: Drops) -> RoundBuffer:
    ids = iter(range(10**6))
    return RoundBuffer(
        max_bytes=max_bytes,
        batch_max_rounds=4,
        spill=spill,
        new_id=lambda: f"id{next(ids)}",
        drop=drops,
    )


def numbers(batch_rounds: tuple[Round, ...]) -> list[int]:
    return [json.loads(r.document)["n"] for r in batch_rounds]


def test_past_the_memory_bound_the_oldest_go_to_the_spill_file_in_order(tmp_path: Path) -> None:
    drops = Drops()
    items = [Round(t, d) for t, d in rounds(0, 50)]
    bound = 10 * round_cost(items[-1])
    buffer = make_buffer(spill_at(tmp_path / "agent.spill"), bound, drops)
    in_flight = None
    for i, item in enumerate(items):
        buffer.add(item)
        assert buffer.memory_bytes <= bound
        if i == 2:
            in_flight = buffer.take()  # rounds 0-2, taken before the rest came
    assert in_flight is not None and numbers(in_flight.rounds) == [0, 1, 2]
    assert buffer.spilled_rounds > 0 and drops.counts == {}
    # The batch in flight was spilled first, under its id: it is acknowledged when settled.
    assert buffer.spill is not None
    first = buffer.spill.first()
    assert first is not None and first.batch_id == in_flight.batch_id
    buffer.settled()
    seen = [0, 1, 2]
    while (batch := buffer.take()) is not None:
        seen += numbers(batch.rounds)
        buffer.settled()
    assert seen == list(range(50))
    assert buffer.spilled_rounds == 0


def test_without_a_spill_file_the_oldest_are_dropped_and_counted() -> None:
    drops = Drops()
    items = [Round(t, d) for t, d in rounds(0, 50)]
    bound = 10 * round_cost(items[-1])
    buffer = make_buffer(None, bound, drops)
    for item in items:
        buffer.add(item)
        assert buffer.memory_bytes <= bound
    assert drops.counts == {"buffer_full": 40}
    batch = buffer.take()
    assert batch is not None and numbers(batch.rounds) == [40, 41, 42, 43]


def test_spill_all_keeps_the_batch_in_flight_first(tmp_path: Path) -> None:
    drops = Drops()
    buffer = make_buffer(spill_at(tmp_path / "agent.spill"), 1 << 20, drops)
    for _, document in rounds(0, 10):
        buffer.add(Round("shop", document))
    taken = buffer.take()
    assert taken is not None
    assert buffer.spill_all() == 10
    assert buffer.memory_rounds == 0 and buffer.waiting == 6
    buffer.clear_memory()  # a SIGKILL: memory gone, the file stays
    assert buffer.spill is not None
    buffer.spill.close()
    again = spill_at(tmp_path / "agent.spill")
    found = drain(again)
    assert found[0] == (taken.batch_id, [0, 1, 2, 3])
    assert [n for _, batch in found for n in batch] == list(range(10))


async def test_the_spill_task_sleeps_untimed_while_the_controller_takes_the_batches(
    tmp_path: Path,
) -> None:
    """An idle agent's wake-ups are most of its CPU: the task writes memory out every
    interval only while the controller is away, and wakes for nothing otherwise."""
    buffer = make_buffer(spill_at(tmp_path / "agent.spill"), 1 << 20, Drops())
    spiller = Spiller(buffer, SinkStats(), interval_s=0.01, batch_max_rounds=4, report=lambda: None)
    spiller.start()
    try:
        await asyncio.sleep(0.2)  # twenty intervals with the controller there
        assert spiller.wakeups == 0
        buffer.add(Round("shop", b"{}"))
        spiller.controller_away()  # now every interval
        await wait_for(lambda: spiller.wakeups >= 3)
        assert buffer.memory_rounds == 0 and buffer.spilled_rounds == 1
        spiller.controller_back()
        await asyncio.sleep(0.05)  # the interval in progress ends; then no timer
        woke = spiller.wakeups
        await asyncio.sleep(0.2)
        assert spiller.wakeups == woke
    finally:
        await spiller.stop()


# -- the sink ----------------------------------------------------------------------------------


def away_sink(client: ControllerClient, spill: SpillFile, *, batch_interval_s: float) -> HttpSink:
    """A started sink of 4-round batches to `client` (a controller that is away), spilling
    every 50 ms."""
    sink = HttpSink(
        client,
        source=SOURCE,
        source_kind=SourceKind.NODE,
        token=lambda: None,
        tuning=SinkTuning(
            batch_max_rounds=4, batch_interval_s=batch_interval_s, spill_interval_s=0.05
        ),
        spill=spill,
    )
    sink.start()
    return sink


async def test_a_sink_closed_while_the_controller_is_away_keeps_its_rounds_in_the_file(
    tmp_path: Path,
) -> None:
    path = tmp_path / "agent.spill"
    spill = spill_at(path)
    # Nothing listens there.
    async with controller_client(f"http://127.0.0.1:{free_port()}") as client:
        sink = away_sink(client, spill, batch_interval_s=0.05)
        for i in range(10):
            sink.submit(round_(i, source=SOURCE))
        await wait_for(lambda: sink.stats.failed_attempts > 0 and spill.pending_rounds == 10)
        await sink.close(0.2)
    spill.close()
    assert sink.stats.dropped == {} and sink.stats.spilled >= 10
    again = spill_at(path)
    kept = []
    while (batch := again.first()) is not None:
        kept += [json.loads(document)["started_at"] for _, document in batch.rounds]
        again.ack(batch.batch_id)
    assert [datetime.fromisoformat(t) for t in kept] == [round_(i).started_at for i in range(10)]


async def test_while_the_controller_is_away_rounds_reach_the_file_every_spill_interval(
    tmp_path: Path,
) -> None:
    """What a SIGKILL can lose is one spill interval (1 s), however long a round may wait
    for its batch while the controller is there (batch_interval_s, 5 s by default)."""
    spill = spill_at(tmp_path / "agent.spill")
    async with controller_client(f"http://127.0.0.1:{free_port()}") as client:
        sink = away_sink(client, spill, batch_interval_s=60.0)
        for i in range(4):  # a whole batch: sent at once, and refused (nothing listens)
            sink.submit(round_(i, source=SOURCE))
        await wait_for(lambda: sink.stats.failed_attempts > 0 and spill.pending_rounds == 4)
        sink.submit(round_(4, source=SOURCE))  # alone: in the file within a spill interval
        await wait_for(lambda: spill.pending_rounds == 5, timeout_s=5.0)
        await sink.close(0.2)
    spill.close()
    assert sink.stats.dropped == {}


def test_the_default_batch_and_spill_intervals() -> None:
    tuning = SinkTuning()
    assert (tuning.batch_interval_s, tuning.spill_interval_s) == (5.0, 1.0)
    with pytest.raises(ValueError, match="intervals and timeouts must be positive"):
        SinkTuning(spill_interval_s=0)


def test_a_file_another_agent_holds_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "agent.spill"
    holder = spill_at(path)
    with pytest.raises(SpillError, match=r"--spill-file: .* is in use by another process"):
        spill_at(path)
    holder.close()
    spill_at(path).close()  # free again once the holder let go
