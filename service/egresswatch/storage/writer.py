"""BatchedWriter: rounds go into a memory buffer at once and reach the database in batches.

`submit` never blocks and never touches the database. `on_written` is told each batch once
it is stored (the controller judges rounds only then), in the order they were submitted. One
named background task writes up to `max_batch` rounds at a time, as soon as that many are
waiting or when the oldest has waited `max_delay_s`. While one batch is in the database, the
next full batch is prepared (storage/prepared.py: evidence encoded, rows built) in parts, so the
client's CPU and the server's overlap; batches are still written one at a time, on one
connection, each committed before the next starts: ids and commits keep the submission order.
While the database is down it keeps the batch and retries with capped, jittered exponential
backoff (egresswatch/backoff.py): rounds are buffered, not lost. Only beyond
`max_buffer` rounds does it drop, the oldest first, counting and logging every drop.

At shutdown (`close`) everything buffered is written, however long that takes while the
database takes the batches: a writer that fell behind catches up rather than dropping. It gives
up only when writes keep failing (the database is away) for `close_timeout_s`, or one write
hangs for `CLOSE_HANG_FACTOR` times that; the rounds left are then dropped, counted, logged.

A batch the database rejects for its content (an integrity or data error: retrying cannot help)
is written again round by round, so one bad round costs only itself; those rounds are dropped
and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Protocol

from egresswatch.backoff import Backoff
from egresswatch.model import RoundResult
from egresswatch.storage.outage import Outage, is_unavailable
from egresswatch.storage.prepared import PreparedRounds, prepare_rounds
from egresswatch.storage.writer_hooks import NoHooks, WriterHooks, is_permanent

__all__ = ["BatchedWriter", "NoHooks", "RoundSink", "WriterHooks", "is_permanent"]

log = logging.getLogger(__name__)

DROP_LOG_INTERVAL_S = 10.0
# Rounds prepared between two turns of the event loop while a batch is being written (~0.2 ms
# of CPU). A write is a dozen turns (a statement's answer, then the task that reads it), and
# the server's work is its last COPY: with 50 a turn the write finished only after the
# preparing, and little overlapped (12,500 rounds/s); with 5, 18,500 (docs/performance.md).
PREPARE_STEP = 5


class RoundSink(Protocol):
    """Where batches go: `Store` is one."""

    async def save_prepared(self, prepared: PreparedRounds, batch_id: str | None = None) -> int: ...


class _Ready:
    """The next batch, prepared while the previous one was written; still in the buffer.

    Valid while nothing left the buffer's head meanwhile (`taken`, the writer's count of rounds
    that left the buffer from the left, is unchanged: no overflow drop).
    """

    def __init__(self, taken: int, rounds: list[RoundResult], prepared: PreparedRounds) -> None:
        self.taken = taken
        self.rounds = rounds
        self.prepared = prepared


class BatchedWriter:
    """Buffers submitted rounds and writes them in batches from one background task.

    Lifecycle: `start()` once, inside the event loop; `submit()` from that loop's thread as
    often as needed; `await close()` writes everything buffered and stops the task. It gives up
    (the rest counted as dropped) only after `close_timeout_s` of failing writes, or one write
    running `CLOSE_HANG_FACTOR * close_timeout_s`; while closing it retries at least every
    `close_timeout_s / CLOSE_TRIES` seconds, so a database back in time gets everything.
    """

    CLOSE_TRIES = 10
    CLOSE_HANG_FACTOR = 10

    # Rounds a transaction at most. Full batches form only while rounds wait (a backlog: the
    # delay sends the others sooner). 2,000: 25,963-27,105 rounds/s into PostgreSQL against
    # 21,571-22,850 with 500, less client and server CPU a round (fewer transactions); a
    # SQLite write of 2,000 holds its lock about 0.15 s; a rejected batch costs 2,000 single
    # writes (docs/performance.md, "Issue 14, third pass").
    DEFAULT_MAX_BATCH = 2000

    def __init__(
        self,
        sink: RoundSink,
        *,
        max_batch: int = DEFAULT_MAX_BATCH,
        max_delay_s: float = 1.0,
        max_buffer: int = 1_000_000,
        backoff: Backoff | None = None,
        close_timeout_s: float = 10.0,
        hooks: WriterHooks | None = None,
        name: str = "egresswatch-storage-writer",
        on_written: Callable[[Sequence[RoundResult]], None] | None = None,
        outage: Outage | None = None,
        prepare: Callable[[Sequence[RoundResult], int], PreparedRounds] = prepare_rounds,
    ) -> None:
        if max_batch < 1 or max_buffer < max_batch:
            raise ValueError("need 1 <= max_batch <= max_buffer")
        self._sink = sink
        self._prepare = prepare  # rounds (numbered from the int) to rows: prepared.py
        self._max_batch = max_batch
        self._max_delay_s = max_delay_s
        self._max_buffer = max_buffer
        self._backoff = backoff or Backoff()
        self._close_timeout_s = close_timeout_s
        self._hooks: WriterHooks = hooks or NoHooks()
        self._on_written = on_written
        self._outage = outage or Outage()
        self._name = name
        self._buffer: deque[RoundResult] = deque()
        self._in_flight: list[RoundResult] = []
        self._taken = 0  # rounds that ever left the buffer's head (written or dropped)
        self._ready: _Ready | None = None
        self._first_waiting_at = 0.0  # monotonic time the oldest buffered round arrived
        self._wakeup = asyncio.Event()
        self._closing = False
        self._close_requested = asyncio.Event()  # cuts a retry's backoff short at close
        # Monotonic times: the write attempt running started, the failing writes started (None:
        # no attempt running; the last attempt succeeded), close was called.
        self._attempt_started: float | None = None
        self._failing_since: float | None = None
        self._close_started = 0.0
        self._task: asyncio.Task[None] | None = None
        self._last_drop_log = -DROP_LOG_INTERVAL_S
        self.dropped = 0  # rounds given up, for any reason
        self.written = 0  # rounds that reached the database

    @property
    def depth(self) -> int:
        """Rounds not yet written: the buffer and the batch being written."""
        return len(self._buffer) + len(self._in_flight)

    def start(self) -> None:
        if self._task is not None:
            raise RuntimeError("BatchedWriter already started")
        self._task = asyncio.create_task(self._run(), name=self._name)
        self._task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error(
                "%s died; %d rounds unwritten", self._name, self.depth, exc_info=task.exception()
            )

    def submit(self, round_result: RoundResult) -> None:
        """Queue one round for writing. Never blocks, never raises for a full buffer."""
        if self._closing:
            raise RuntimeError("BatchedWriter is closed")
        if not self._buffer:
            self._first_waiting_at = time.monotonic()
            self._wakeup.set()  # start the delay timer
        self._buffer.append(round_result)
        if self.depth > self._max_buffer:  # the buffer holds >= 1 round: max_buffer >= max_batch
            self._buffer.popleft()
            self._taken += 1
            self._drop(1, "overflow")
        elif len(self._buffer) == self._max_batch:
            self._wakeup.set()
        self._hooks.buffer_depth(self.depth)

    async def close(self) -> None:
        """Write everything buffered, then stop. Idempotent."""
        self._closing = True
        self._wakeup.set()
        task = self._task
        if task is None or task.done():
            if self.depth:  # never started, or died: nobody will write these
                self._drop(self.depth, "shutdown")
                self._buffer.clear()
                self._in_flight = []
            return
        self._close_started = time.monotonic()
        self._close_requested.set()
        if self.depth >= self._max_batch:
            log.info("%s: writing the %d buffered rounds before stopping", self._name, self.depth)
        # No deadline for the whole flush, only for a database that is away or hangs.
        why = None
        while why is None:
            await asyncio.wait({task}, timeout=self._close_timeout_s / self.CLOSE_TRIES)
            if task.done():
                return
            why = self._stuck()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        left = self.depth
        self._buffer.clear()
        self._in_flight = []
        if left:
            log.error("%s: %s while closing: giving up", self._name, why)
            self._drop(left, "shutdown")
        self._hooks.buffer_depth(0)

    def _stuck(self) -> str | None:
        """Why closing should stop waiting for the database, or None while it may still come."""
        now = time.monotonic()
        failing, attempt = self._failing_since, self._attempt_started
        if failing is not None and now - max(failing, self._close_started) >= self._close_timeout_s:
            return f"writes failed for {self._close_timeout_s:.1f}s"
        hang_s = self._close_timeout_s * self.CLOSE_HANG_FACTOR
        if attempt is not None and now - max(attempt, self._close_started) >= hang_s:
            return f"a write got no answer for {hang_s:.1f}s"
        return None

    # -- the task -------------------------------------------------------------------------

    async def _run(self) -> None:
        writing: asyncio.Task[None] | None = None
        try:
            while True:
                if not self._buffer:
                    if self._closing:
                        return
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    continue
                await self._wait_for_batch()
                batch, prepared = self._take()
                self._in_flight = batch
                writing = asyncio.create_task(
                    self._write(batch, prepared), name=f"{self._name}-batch"
                )
                await self._prepare_next(writing)
                await writing
                writing = None
                self._in_flight = []
                self._hooks.buffer_depth(self.depth)
        finally:
            if writing is not None:  # cancelled (close gave up): so is the write
                writing.cancel()
                await asyncio.gather(writing, return_exceptions=True)

    def _take(self) -> tuple[list[RoundResult], PreparedRounds | None]:
        """The next batch off the buffer, with its rows when they were prepared in advance."""
        ready, self._ready = self._ready, None
        prepared = None
        count = min(self._max_batch, len(self._buffer))
        if ready is not None and ready.taken == self._taken and len(ready.rounds) <= count:
            count, prepared = len(ready.rounds), ready.prepared
        batch = [self._buffer.popleft() for _ in range(count)]
        self._taken += count
        if self._buffer:
            self._first_waiting_at = time.monotonic()
        return batch, prepared

    async def _prepare_next(self, writing: asyncio.Task[None]) -> None:
        """While `writing` runs, prepare the next batch if a full one waits (or we are closing),
        `PREPARE_STEP` rounds per turn of the loop so the write's statements are not held up.
        Gives up quietly when a round cannot be prepared (its write will say why) or when
        rounds leave the buffer meanwhile (an overflow)."""
        count = min(self._max_batch, len(self._buffer))
        if count == 0 or (count < self._max_batch and not self._closing):
            return  # a partial batch waits for its delay, as ever
        taken = self._taken
        rounds = list(itertools.islice(self._buffer, count))
        prepared = PreparedRounds()
        for start in range(0, count, PREPARE_STEP):
            try:
                prepared.extend(self._prepare(rounds[start : start + PREPARE_STEP], start))
            except Exception:
                return
            if not writing.done():
                await asyncio.sleep(0)  # the write's next statement, if its answer came
            if self._taken != taken:
                return
        self._ready = _Ready(taken, rounds, prepared)

    async def _wait_for_batch(self) -> None:
        """Return when a full batch waits, the oldest round waited max_delay_s, or on close."""
        deadline = self._first_waiting_at + self._max_delay_s
        while len(self._buffer) < self._max_batch and not self._closing:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                return

    async def _write(
        self, batch: list[RoundResult], prepared: PreparedRounds | None = None
    ) -> None:
        """Write `batch` (`prepared`: its rows, made now when None), retrying transient failures
        until it is written (or cancelled)."""
        failures = 0
        while True:
            try:
                if prepared is None:
                    prepared = self._prepare(batch, 0)
                await self._save(prepared)
            except Exception as error:  # a scheduled job never raises: classify, then retry
                self._hooks.batch_written(False, len(batch))
                self._hooks.database_error(error)
                if is_permanent(error):
                    log.error(
                        "database rejected a batch of %d rounds (%s): writing them one by one",
                        len(batch),
                        type(error).__name__,
                    )
                    await self._write_one_by_one(batch)
                    return
                delay = self._backoff.delay_s(failures)
                if self._closing:
                    delay = min(delay, self._close_timeout_s / self.CLOSE_TRIES)
                failures += 1
                self._transient(error, failures, delay)
                await self._pause(delay)
                continue
            if failures:
                log.info("wrote %d rounds after %d failed tries", len(batch), failures)
            self._outage.recovered()
            self._written(batch)
            return

    async def _save(self, prepared: PreparedRounds) -> None:
        """One write attempt, timed for `_stuck`."""
        self._attempt_started = time.monotonic()
        try:
            await self._sink.save_prepared(prepared)
        except Exception:
            if self._failing_since is None:
                self._failing_since = time.monotonic()
            raise
        else:
            self._failing_since = None
        finally:
            self._attempt_started = None

    async def _pause(self, delay: float) -> None:
        """Sleep `delay` seconds before a retry, or until `close` shortens the wait."""
        if self._closing:
            await asyncio.sleep(delay)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._close_requested.wait(), delay)

    def _transient(self, error: Exception, failures: int, delay: float) -> None:
        """A failed write that a retry may fix. An outage is the Outage's to log (once, then a
        count); anything else is logged at its first failure, with the error's first line."""
        if is_unavailable(error):
            self._outage.failed(error, "writer")
            level = logging.DEBUG
        else:
            level = logging.ERROR if failures == 1 else logging.WARNING
        log.log(
            level,
            "cannot write rounds (%s: %s); %d rounds buffered, retry %d in %.1fs",
            type(error).__name__,
            _first_line(error),
            self.depth,
            failures,
            delay,
        )

    async def _write_one_by_one(self, batch: list[RoundResult]) -> None:
        for position, round_result in enumerate(batch):
            try:
                await self._save(self._prepare([round_result], 0))
            except Exception as error:
                self._hooks.database_error(error)
                if not is_permanent(error):
                    # The database went away meanwhile: back to retrying what is left.
                    await self._write(batch[position:])
                    return
                log.error(
                    "dropping a round the database rejects: %s from %s at %s (%s)",
                    round_result.target,
                    round_result.source,
                    round_result.started_at.isoformat(),
                    type(error).__name__,
                )
                self._landed(1)
                self._drop(1, "rejected")
            else:
                self._written([round_result])

    def _landed(self, count: int) -> None:
        """`count` rounds at the head of the batch in flight are settled (stored or dropped):
        `depth` drops with `written`, in the same turn of the loop, not when the write's task
        is awaited (a new list: the batch being written is not changed under its loop)."""
        self._in_flight = self._in_flight[count:]

    def _written(self, batch: Sequence[RoundResult]) -> None:
        self._landed(len(batch))
        self.written += len(batch)
        self._hooks.batch_written(True, len(batch))
        self._hooks.rows_written(len(batch), sum(len(r.steps) for r in batch))
        if self._on_written is not None:
            try:
                self._on_written(batch)
            except Exception:  # the rounds are stored; a consumer's bug must not stop writing
                log.exception("%s: on_written failed", self._name)

    def _drop(self, count: int, why: str) -> None:
        self.dropped += count
        self._hooks.rounds_dropped(count, why)
        # Loud, but at most one line per DROP_LOG_INTERVAL_S while a long outage overflows.
        now = time.monotonic()
        if why != "overflow" or now - self._last_drop_log >= DROP_LOG_INTERVAL_S:
            self._last_drop_log = now
            log.error(
                "DROPPED %d rounds (%s): %d dropped since start; buffer holds %d (cap %d)",
                count,
                why,
                self.dropped,
                self.depth,
                self._max_buffer,
            )


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:200] if text else ""
