"""The leader's detection input: the rounds table, followed by id, whoever stored the rounds.

With several controller replicas every replica stores what its agents post and only the leader
judges. The leader reads the rounds stored since the last it judged (ids above it) every
`period_s` and hands them to `judge`: the rounds of every replica, its own included, take this
one path, so nothing is judged twice and nothing a follower stored is left out.

Ids come from one sequence but transactions commit in any order: a round with a smaller id may
become visible after a larger one was read. An id skipped over is a gap, asked for again at
every poll until it appears or `gap_wait_s` passes (a transaction rolled back, or a sequence
that jumped, leaves a gap for ever). An agent posts its batches one after another, so the rounds
of one source never overtake each other this way.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

from egresswatch.model import RoundResult
from egresswatch.storage import Outage, RoundFeed, is_unavailable

log = logging.getLogger(__name__)

FOLLOW_BATCH = 2000  # rounds read in one poll; more wait for the next, at once
MAX_GAPS = 10_000  # ids waited for at once; a sequence that jumps further is not waited for


class RoundFollower:
    """Polls `feed` for rounds with an id above `after` and gives them to `judge`."""

    def __init__(
        self,
        feed: RoundFeed,
        *,
        after: int,
        judge: Callable[[Sequence[RoundResult]], None],
        period_s: float = 0.5,
        gap_wait_s: float = 30.0,
        outage: Outage | None = None,
        on_error: Callable[[], None] = lambda: None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._feed = feed
        self.last = after
        self._judge = judge
        self._period_s = period_s
        self._gap_wait_s = gap_wait_s
        self._outage = outage or Outage()
        self._on_error = on_error
        self._monotonic = monotonic
        self.gaps: dict[int, float] = {}  # id -> when it was first missed (monotonic)

    async def run(self) -> None:
        """Poll until cancelled; a failed poll is counted, logged once per outage, retried."""
        while True:
            try:
                judged = await self.poll()
            except Exception as error:
                self._on_error()
                if is_unavailable(error):
                    self._outage.failed(error, "detection")
                else:
                    log.exception("could not read the stored rounds; retrying")
                judged = 0
            if judged < FOLLOW_BATCH:
                await asyncio.sleep(self._period_s)

    async def poll(self) -> int:
        """One read: the new rounds (and the gaps that appeared) judged; how many were read."""
        found = await self._feed.rounds(after=self.last, also=self.gaps.keys(), limit=FOLLOW_BATCH)
        now = self._monotonic()
        expected = self.last + 1
        for round_id, _ in found:
            if self.gaps.pop(round_id, None) is not None or round_id <= self.last:
                continue
            for missing in range(expected, min(round_id, expected + MAX_GAPS)):
                self.gaps[missing] = now
            expected = round_id + 1
            self.last = round_id
        for round_id in [i for i, since in self.gaps.items() if now - since > self._gap_wait_s]:
            del self.gaps[round_id]
        if len(self.gaps) > MAX_GAPS:  # oldest first out: they are the least likely to come
            for round_id in sorted(self.gaps)[: len(self.gaps) - MAX_GAPS]:
                del self.gaps[round_id]
        if found:
            self._judge([result for _, result in found])
        return len(found)
