"""How long a round waits for others to join its batch before the sink posts it.

Rounds wait up to `batch_interval_s` (5 s by default): each POST costs an agent wake-ups and CPU,
a sizeable part of its budget at 50 targets every 30 s. But the rounds of a target that failed
lately open, confirm and close incidents: a failing round, and every round of its target for
`urgent_window_s` (5 min) after its last failing one, waits at most `urgent_interval_s` (1 s).
Not only the first healthy round: recovery takes the controller's `recover_after` healthy rounds,
and while the last of them waits, the open incident's verdict is asked again against a cluster
that the repair has already changed (a NetworkPolicy deleted: the fault's own evidence gone).
So detection is as prompt as with 1 s batches; while nothing has failed for 5 minutes, batches
go every `batch_interval_s`; during an outage, about every second.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

__all__ = ["Linger"]


class Linger:
    """The batch's deadline, moved earlier by urgent rounds. Used on the event loop only.

    `clock` is the loop's (`time.monotonic`, as `BaseEventLoop.time`), so a deadline computed
    in `submitted` (a plain call) is one `asyncio.timeout_at` understands.
    """

    def __init__(
        self,
        batch_interval_s: float,
        urgent_interval_s: float,
        urgent_window_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self._batch_s = batch_interval_s
        self._urgent_s = min(urgent_interval_s, batch_interval_s)
        self._window_s = urgent_window_s
        # When each target's last failing round was buffered. At most one entry a target
        # name, removed by its first round after the window.
        self._failed_at: dict[str, float] = {}
        self._hurry_at: float | None = None  # the earliest deadline an urgent round asked for
        self._timeout: asyncio.Timeout | None = None  # the wait in progress, if any

    def submitted(self, target: str, *, failing: bool) -> None:
        """Note a round as it is buffered; an urgent one brings the batch's deadline closer."""
        now = self._clock()
        if failing:
            self._failed_at[target] = now
        else:
            failed_at = self._failed_at.get(target)
            if failed_at is None:
                return
            if now - failed_at >= self._window_s:
                del self._failed_at[target]
                return
        at = now + self._urgent_s
        if self._hurry_at is None or at < self._hurry_at:
            self._hurry_at = at
        timeout = self._timeout
        if timeout is not None:
            when = timeout.when()
            if when is None or at < when:
                timeout.reschedule(at)

    async def wait(self, full: asyncio.Event) -> None:
        """Return when `full` is set or the batch's time is up."""
        deadline = self._clock() + self._batch_s
        if self._hurry_at is not None:
            deadline = min(deadline, self._hurry_at)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(deadline) as timeout:
                self._timeout = timeout
                try:
                    await full.wait()
                finally:
                    self._timeout = None

    def urgent_until(self) -> float | None:
        """The deadline urgent rounds asked for, if one is pending."""
        return self._hurry_at

    def taken(self, still_waiting: int) -> None:
        """A batch left the buffer; with nothing left waiting, no urgent round is pending."""
        if not still_waiting:
            self._hurry_at = None
