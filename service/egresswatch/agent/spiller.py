"""When the sink's rounds go to the spill file, and when they are made durable.

Contract of :class:`Spiller` (the sink's helper; it does nothing without a spill file):

- :meth:`controller_away` (an attempt failed): every round not delivered, the batch in flight
  first under its id, is written to the spill file; until :meth:`controller_back` (a batch
  was delivered), :meth:`submitted` writes memory out whenever a whole batch waits, and the
  named task ``egresswatch-spill`` does every `interval_s`. While the controller takes the
  batches the task sleeps without a timer (an idle agent's wake-ups are most of its CPU).
- Every write is made durable (fsync, in a thread) before the next one is synced; a write
  the memory bound forced (agent/buffer.py) is synced the same way.
- A SIGKILL therefore loses only the rounds that came after the last fsync: at most one
  `interval_s` (a debug line "spill file synced" says up to which submitted round the file
  is durable).
- :meth:`keep_for_next_start` (shutdown) writes and syncs what is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from egresswatch.agent.buffer import RoundBuffer
from egresswatch.agent.sink_types import SinkStats

__all__ = ["SPILL_TASK_NAME", "Spiller"]

log = logging.getLogger(__name__)

SPILL_TASK_NAME = "egresswatch-spill"


class Spiller:
    """See the module docstring. `report()` is called after each sync (the sink's gauges)."""

    def __init__(
        self,
        buffer: RoundBuffer,
        stats: SinkStats,
        *,
        interval_s: float,
        batch_max_rounds: int,
        report: Callable[[], None],
    ) -> None:
        self._buffer = buffer
        self._stats = stats
        self._interval_s = interval_s
        self._batch_max = batch_max_rounds
        self._report = report
        self.away = False  # the controller failed the last attempt: everything is spilled
        self._unsynced = False  # spill writes not yet made durable
        self._written_through = 0  # every round submitted up to this count is in the file
        self._flush = asyncio.Event()  # the spill file wants writing or syncing
        self._task: asyncio.Task[None] | None = None
        self.wakeups = 0  # how often the task woke: what it costs (tests)

    def start(self) -> None:
        if self._buffer.spill is not None:
            loop = asyncio.get_running_loop()
            self._task = loop.create_task(self._keep_spilling(), name=SPILL_TASK_NAME)

    async def stop(self) -> None:
        """Stop the task (a sync in progress is waited for by its thread). Idempotent."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def submitted(self, spilled: int) -> None:
        """A round was buffered; `spilled` rounds went to the file for the memory bound."""
        if spilled:
            self._spilled(spilled)
        if self.away and self._buffer.memory_rounds >= self._batch_max:
            self.spill_all()

    def controller_away(self) -> None:
        """An attempt failed: from now until a batch is delivered, everything is spilled."""
        if self.away or self._buffer.spill is None:
            return
        self.away = True
        self.spill_all()
        self._flush.set()  # the task waits untimed while the controller is there: wake it

    def controller_back(self) -> None:
        self.away = False

    def spill_all(self) -> None:
        submitted = self._stats.submitted
        if spilled := self._buffer.spill_all():
            self._written_through = submitted
            self._spilled(spilled)

    async def keep_for_next_start(self) -> int:
        """Write and sync everything undelivered; the rounds that could not be kept (the
        batch in flight, when the file refused it). Memory is empty afterwards."""
        self.spill_all()
        if self._unsynced:
            await self._sync()
        spill = self._buffer.spill
        if spill is not None and spill.pending_rounds:
            log.warning(
                "rounds not delivered at shutdown are kept in the spill file for the next start",
                extra={"rounds": spill.pending_rounds, "path": str(spill.path)},
            )
        return self._buffer.clear_memory()

    async def _keep_spilling(self) -> None:
        while True:
            if self.away:  # memory goes to the file every interval_s
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._interval_s):
                        await self._flush.wait()
            else:  # while batches are delivered nothing is due on a timer: no idle wake-ups
                await self._flush.wait()
            self.wakeups += 1
            self._flush.clear()
            if self.away and self._buffer.memory_rounds:
                self.spill_all()
            if self._unsynced:
                await self._sync()

    async def _sync(self) -> None:
        """fsync the spill file; what was written before is then durable."""
        spill = self._buffer.spill
        if spill is None:
            return
        self._unsynced = False
        through = self._written_through
        try:
            await spill.sync()
        except OSError as exc:
            log.error("cannot sync the spill file", extra={"problem": str(exc)})
            return
        log.debug(
            "spill file synced",
            extra={"through": through, "rounds": spill.pending_rounds, "bytes": spill.size_bytes},
        )
        self._report()

    def _spilled(self, rounds: int) -> None:
        self._stats.spilled += rounds
        self._unsynced = True
        self._flush.set()
