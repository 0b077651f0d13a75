"""The sink's dropped rounds: counted in its stats and hooks, and logged without flooding.

Contract of :class:`Drops`: every drop is counted at once (stats and the metric, by reason).
Logs: an overflowing memory buffer (no spill file) at most every DROP_LOG_EVERY_S with the
count since the last line; a full spill file once per episode (the first drop), and the
episode's total when the file is empty again (:meth:`spill_emptied`); other reasons are
logged where they happen (agent/sink.py), with their batch.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

from egresswatch.agent.sink_types import DropReason, SinkHooks, SinkStats

__all__ = ["DROP_LOG_EVERY_S", "Drops"]

log = logging.getLogger(__name__)

DROP_LOG_EVERY_S = 10.0


class Drops:
    """See the module docstring. `clock()` is monotonic seconds (injected for tests)."""

    def __init__(
        self,
        stats: SinkStats,
        hooks: SinkHooks,
        *,
        buffer_max_bytes: int,
        spill_max_bytes: int | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stats = stats
        self._hooks = hooks
        self._buffer_max_bytes = buffer_max_bytes
        self._clock = clock
        self._overflow_since_log = 0
        self._overflow_logged_at = -math.inf
        self._spill_dropped = 0  # in this episode of a full spill file
        self._spill_max_bytes = spill_max_bytes

    def __call__(self, rounds: int, why: DropReason) -> None:
        if rounds <= 0:
            return
        self._stats.dropped[why] = self._stats.dropped.get(why, 0) + rounds
        self._hooks.rounds_dropped(rounds, why)
        if why == "buffer_full":
            self._overflowed(rounds)
        elif why == "spill_full":
            if not self._spill_dropped:  # one line per episode: until the file is empty again
                log.error(
                    "spill file full: the oldest rounds in it are dropped while the controller "
                    "is away",
                    extra={"dropped": rounds, "spill_max_bytes": self._spill_max_bytes},
                )
            self._spill_dropped += rounds

    def spill_emptied(self) -> None:
        """Nothing is left in the spill file: an episode of a full file ends."""
        if self._spill_dropped:
            log.warning(
                "spill file emptied: rounds had been dropped from it while it was full",
                extra={"dropped": self._spill_dropped},
            )
            self._spill_dropped = 0

    def _overflowed(self, rounds: int) -> None:
        self._overflow_since_log += rounds
        now = self._clock()
        if now - self._overflow_logged_at >= DROP_LOG_EVERY_S:
            log.error(
                "buffer full: the oldest rounds are dropped while the controller is away "
                "(no spill file: see --spill-file)",
                extra={
                    "dropped": self._overflow_since_log,
                    "buffer_max_bytes": self._buffer_max_bytes,
                },
            )
            self._overflow_since_log = 0
            self._overflow_logged_at = now
