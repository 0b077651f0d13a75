"""The one way rounds come in, local or pushed: validated once, stored in batches, then judged.

`egresswatch run`'s own rounds (`submit`) and agents' batches (`accept`, from
`POST /api/v1/results`) take the same path:

1. validated: every round's target is configured (or was, and has history: an agent may still
   deliver rounds it buffered before a reload removed it), and it did not start in the future;
2. stored in batches: local rounds through the `BatchedWriter` (buffered while the database is
   away), an agent's batch in one transaction, idempotent per batch id, acknowledged only once
   it is stored;
3. judged: `judge` (metrics, detection) sees a round only after it is stored, so what detection
   knows is always what a restarted controller can read back.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

from egresswatch.model import RoundResult, SourceKind
from egresswatch.settings import Settings
from egresswatch.storage import BatchedWriter, Outage, Store, WriterHooks

log = logging.getLogger(__name__)

FUTURE_SKEW = timedelta(hours=1)  # a round may start this far ahead of our clock
MAX_PROBLEMS = 50  # named in one refusal
# Local rounds wait at most this long for their batch (then judged). A transaction costs about
# 2 ms of CPU whatever it holds: at 200 rounds/s, 0.05 s (10 rounds a batch) spent 0.33 ms a
# round on SQLite, 0.5 s (100 a batch) 0.12 ms. Half a second more before a round is judged is
# nothing next to detection, which waits for several rounds at intervals of 1 s or more.
LOCAL_WRITE_DELAY_S = 0.5


class Refused(Exception):
    """Rounds refused as a whole; `problems` are (field path, what is wrong)."""

    def __init__(self, status: int, problems: Sequence[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{name}: {why}" for name, why in problems))
        self.status = status  # 400: malformed or impossible; 422: names nothing we know
        self.problems = tuple(problems[:MAX_PROBLEMS])


class Ingest:
    """Rounds in, stored, then handed to `judge` (oldest first within a batch)."""

    def __init__(
        self,
        store: Store,
        *,
        settings: Callable[[], Settings],
        judge: Callable[[Sequence[RoundResult]], None],
        clock: Callable[[], datetime],
        hooks: WriterHooks | None = None,
        outage: Outage | None = None,
    ) -> None:
        self._store = store
        self._settings = settings
        self._judge = judge
        self._clock = clock
        self._kinds: dict[str, tuple[SourceKind, str | None]] = {}  # registered: kind, node
        self.writer = BatchedWriter(
            store,
            hooks=hooks,
            max_delay_s=LOCAL_WRITE_DELAY_S,
            on_written=self._judge,
            outage=outage,
        )

    def start(self) -> None:
        self.writer.start()

    async def close(self) -> None:
        """Store (and so judge) everything buffered; gives up only while the database is away."""
        await self.writer.close()

    def submit(self, result: RoundResult) -> None:
        """A round of this process's own: buffered for the writer, judged once stored."""
        problems = self._time_problems([result]) + _unknown(result, 0, self._unconfigured([result]))
        if problems:  # our own probes made it: a bug, logged, and the round is not stored
            log.error("local round refused", extra={"problems": [f"{n}: {w}" for n, w in problems]})
            return
        self.writer.submit(result)

    async def accept(
        self,
        source: str,
        batch_id: str,
        rounds: Sequence[RoundResult],
        source_kind: SourceKind | None = None,
        source_node: str | None = None,
    ) -> int:
        """An agent's batch: stored in one transaction, then judged; the rounds stored (0 for a
        batch id stored before). Raises `Refused` and stores nothing for a bad batch, and the
        database's errors (the agent keeps the batch and retries)."""
        problems = self._time_problems(rounds)
        if problems:
            raise Refused(400, problems)
        unknown = self._unconfigured(rounds)
        if unknown:
            stored_before = {t.name for t in await self._store.targets()}
            unknown = [i for i in unknown if rounds[i].target not in stored_before]
        if unknown:
            raise Refused(422, [p for i in unknown for p in _unknown(rounds[i], i, [i])])
        if source_kind is not None and self._kinds.get(source) != (source_kind, source_node):
            await self._store.register_source(source, source_kind, source_node)
            self._kinds[source] = (source_kind, source_node)
        stored = await self._store.save_rounds(rounds, batch_id, source)
        if stored:
            self._judge(rounds)
        return stored

    def _time_problems(self, rounds: Sequence[RoundResult]) -> list[tuple[str, str]]:
        now = self._clock()
        latest = now + FUTURE_SKEW
        # Older than the raw window, a round would be pruned at once (and year 1 is a broken
        # clock, not a result): refused, by name, rather than stored to vanish.
        earliest = now - timedelta(seconds=self._settings().retention.raw)
        problems = []
        for i, r in enumerate(rounds):
            if r.started_at > latest:
                problems.append((f"rounds[{i}].started_at", f"after {_iso(now)}: check the clock"))
            elif r.started_at < earliest:
                why = f"before {_iso(earliest)}, older than retention.raw: check the clock"
                problems.append((f"rounds[{i}].started_at", why))
        return problems

    def _unconfigured(self, rounds: Sequence[RoundResult]) -> list[int]:
        """The positions of the rounds whose target is not configured now."""
        settings = self._settings()
        return [i for i, r in enumerate(rounds) if settings.target(r.target) is None]


def _unknown(result: RoundResult, position: int, unknown: Sequence[int]) -> list[tuple[str, str]]:
    if not unknown:
        return []
    return [(f"rounds[{position}].target", f"{result.target!r} is not a configured target")]


def _iso(when: datetime) -> str:
    return when.isoformat().replace("+00:00", "Z")
