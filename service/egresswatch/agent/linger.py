"""How long a round waits for others to join its batch before the sink posts it.

Rounds wait up to `batch_interval_s` (5 s by default): each POST costs an agent wake-ups and CPU,
a sizeable part of its budget at 50 targets every 30 s. But a round that fails, or the first
healthy round of a target whose last round failed, is what opens or closes an incident: such a
round waits at most `urgent_interval_s` (1 s), so detection is not later than with 1 s batches.
While nothing fails, batches go every `batch_interval_s`; during an outage, about every second.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

__all__ = ["Linger"]


class Linger:
    """The batch's deadline, moved earlier by urgent rounds. Used on the event loop only.

    `time.monotonic` is the clock of asyncio's loops (`BaseEventLoop.time`), so a deadline
    computed in `submitted` (a plain call) is one `asyncio.timeout_at` understands.
    """

    def __init__(self, batch_interval_s: float, urgent_interval_s: float) -> None:
        self._batch_s = batch_interval_s
        self._urgent_s = min(urgent_interval_s, batch_interval_s)
        # Targets whose last round failed: their next healthy round is a recovery. At most one
        # entry a target name, removed once the target's rounds are healthy again.
        self._failing: set[str] = set()
        self._hurry_at: float | None = None  # the earliest deadline an urgent round asked for
        self._timeout: asyncio.Timeout | None = None  # the wait in progress, if any

    def submitted(self, target: str, *, failing: bool) -> None:
        """Note a round as it is buffered; an urgent one brings the batch's deadline closer."""
        urgent = failing or target in self._failing
        if failing:
            self._failing.add(target)
        else:
            self._failing.discard(target)
        if not urgent:
            return
        at = time.monotonic() + self._urgent_s
        if self._hurry_at is None or at < self._hurry_at:
            self._hurry_at = at
        timeout = self._timeout
        if timeout is not None:
            when = timeout.when()
            if when is None or at < when:
                timeout.reschedule(at)

    async def wait(self, full: asyncio.Event) -> None:
        """Return when `full` is set or the batch's time is up."""
        deadline = time.monotonic() + self._batch_s
        if self._hurry_at is not None:
            deadline = min(deadline, self._hurry_at)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(deadline) as timeout:
                self._timeout = timeout
                try:
                    await full.wait()
                finally:
                    self._timeout = None

    def taken(self, still_waiting: int) -> None:
        """A batch left the buffer; with nothing left waiting, no urgent round is pending."""
        if not still_waiting:
            self._hurry_at = None
