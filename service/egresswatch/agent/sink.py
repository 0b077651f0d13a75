"""The agent's result sink: rounds buffered in memory and pushed to the controller in batches.

Contract of :class:`HttpSink`:

- :meth:`HttpSink.submit` never blocks and never raises: the round is encoded and queued.
- One named, owned, cancellable task (``egresswatch-sink``) posts batches of up to
  ``batch_max_rounds`` rounds, at least every ``batch_interval_s`` while rounds wait (every
  ``urgent_interval_s`` for the rounds of a target that failed lately: agent/linger.py), to
  ``{controller}/api/v1/results`` with ``Authorization: Bearer TOKEN``. One batch is in flight
  at a time, so batches arrive in the order the rounds were run.
- A batch keeps its ``batch_id`` across retries: the controller stores a batch id once, so a
  retry after a lost answer stores nothing twice.
- Connection errors, timeouts, 408, 429 and 5xx: the same batch is retried with capped
  exponential backoff with jitter (egresswatch/backoff.py; ``Retry-After`` honoured, within
  the cap). Rounds buffer meanwhile.
- 422 (targets the controller does not know): the rounds it names are dropped, counted and
  logged; the batch's other rounds go again under a new id (nothing of a refused batch was
  stored). A 422 that names no round drops the whole batch.
- 400 and 413 (our bug, or too big a batch): the batch is split in halves, each sent under a new
  id, down to single rounds; a single round still refused is dropped, logged as an error.
- 401, 403 and any other answer (a wrong token, a wrong URL): the rounds are kept and the batch
  is retried every ``auth_retry_s``, logging an error each time. The token is asked for again
  on every attempt, so a rotated token file is picked up.
- The buffer (agent/buffer.py) holds at most ``buffer_max_bytes`` in memory; past that the
  oldest rounds go to the spill file (agent/spill.py), or without one are dropped and counted.
- With a spill file: from the first failed attempt until a batch is delivered again (the
  controller is away), everything undelivered is written to the spill file, the batch in
  flight first under its id, then every ``spill_interval_s`` (or each time a whole batch is
  waiting), each write made durable (fsync) before the next. A SIGKILL then loses only the
  rounds that came since the last write: at most one spill interval's. Spilled batches are
  sent first, in order, under the id they were written with, and acknowledged in the file
  only once the controller answered.
- :meth:`HttpSink.close` sends what is buffered, waiting at most its timeout; rounds still
  undelivered then go to the spill file for the next start, or without one are counted as
  dropped (``shutdown``) and logged.

See also agent/encode.py (bodies), agent/answers.py, agent/sink_types.py (tuning, hooks),
agent/buffer.py (memory and the spill file, in order), agent/spill.py (the file),
agent/spiller.py (when rounds are written and synced), agent/drops.py (counting, logging).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import uuid
from collections.abc import Callable
from typing import Any

from egresswatch.agent.answers import ANSWER_MAX, Kind, Outcome, classify
from egresswatch.agent.buffer import Batch, Round, RoundBuffer
from egresswatch.agent.drops import Drops
from egresswatch.agent.encode import batch_body, batch_head, encode_round
from egresswatch.agent.http_client import ControllerClient, HttpError
from egresswatch.agent.linger import Linger
from egresswatch.agent.sink_types import DropReason, NoHooks, SinkHooks, SinkStats, SinkTuning
from egresswatch.agent.spill import SpillFile
from egresswatch.agent.spiller import Spiller
from egresswatch.backoff import Backoff
from egresswatch.model import RoundResult, SourceKind

__all__ = [
    "DropReason",
    "HttpSink",
    "SinkHooks",
    "SinkStats",
    "SinkTuning",
    "encode_round",
]

log = logging.getLogger(__name__)

RESULTS_PATH = "/api/v1/results"
TASK_NAME = "egresswatch-sink"


def _new_id() -> str:
    return uuid.uuid4().hex


class HttpSink:
    """Rounds to the controller over HTTP; see the module docstring for the contract.

    `token()` gives the bearer token for each attempt (None: send none). `client` (its own
    keep-alive connection to the controller) is the caller's and is not closed here. `spill`
    is an opened spill file of this source, or None (then rounds past the memory bound are
    dropped); the sink does not close it. Call :meth:`start` inside the running loop, once.
    """

    def __init__(
        self,
        client: ControllerClient,
        *,
        source: str,
        source_kind: SourceKind | None,
        source_node: str | None = None,
        token: Callable[[], str | None],
        tuning: SinkTuning | None = None,
        hooks: SinkHooks | None = None,
        new_id: Callable[[], str] = _new_id,
        backoff: Backoff | None = None,
        spill: SpillFile | None = None,
    ) -> None:
        self._client = client
        self._source = source
        self._kind = source_kind
        self._token = token
        self._tuning = tuning or SinkTuning()
        self._hooks: SinkHooks = hooks or NoHooks()
        self._new_id = new_id
        self._backoff = backoff or Backoff(
            self._tuning.backoff_initial_s, self._tuning.backoff_max_s
        )
        self._stats = SinkStats()
        self._drop = Drops(
            self._stats,
            self._hooks,
            buffer_max_bytes=self._tuning.buffer_max_bytes,
            spill_max_bytes=spill.max_bytes if spill is not None else None,
        )
        self._buffer = RoundBuffer(
            max_bytes=self._tuning.buffer_max_bytes,
            batch_max_rounds=self._tuning.batch_max_rounds,
            spill=spill,
            new_id=new_id,
            drop=self._drop,
        )
        self._spiller = Spiller(
            self._buffer,
            self._stats,
            interval_s=self._tuning.spill_interval_s,
            batch_max_rounds=self._tuning.batch_max_rounds,
            report=self._report,
        )
        # Taken from the buffer and not yet settled: the batch being sent, and the halves of a
        # split batch still to send.
        self._current: Batch | None = None
        self._work: list[Batch] = []
        self._linger = Linger(
            self._tuning.batch_interval_s,
            self._tuning.urgent_interval_s,
            self._tuning.urgent_window_s,
        )
        self._wake = asyncio.Event()  # a round came in, or closing
        self._full = asyncio.Event()  # a whole batch is waiting, or closing
        self._idle = asyncio.Event()
        self._idle.set()
        self._closing = False
        self._closed = False
        self._task: asyncio.Task[None] | None = None
        # The batch prefix never changes, so it is encoded once.
        self._head = batch_head(source, source_kind, source_node)

    # -- the caller's side ------------------------------------------------------------------

    @property
    def depth(self) -> int:
        """Rounds not yet delivered: buffered plus in flight."""
        current = len(self._current.rounds) if self._current is not None else 0
        return self._buffer.waiting + current + sum(len(b.rounds) for b in self._work)

    @property
    def stats(self) -> SinkStats:
        return dataclasses.replace(self._stats, dropped=dict(self._stats.dropped))

    def start(self) -> None:
        if self._task is not None:
            raise RuntimeError("the sink was already started")
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._run(), name=TASK_NAME)
        self._spiller.start()
        if self._buffer.spilled_rounds:
            log.info(
                "rounds from the spill file are sent first",
                extra={"rounds": self._buffer.spilled_rounds},
            )
            self._wake.set()
            self._full.set()
        self._report()

    def submit(self, result: RoundResult) -> None:
        """Queue a round for the controller. Never blocks, never raises."""
        self._stats.submitted += 1
        if self._closed:
            self._drop(1, "shutdown")
            log.error("round submitted after the sink closed", extra={"target": result.target})
            return
        try:
            document = encode_round(result)
        except Exception:  # encode_round makes everything JSON: this is a bug, not an outage
            log.exception("round could not be encoded", extra={"target": result.target})
            self._drop(1, "unencodable")
            return
        if log.isEnabledFor(logging.DEBUG):  # the order of rounds, for tests and post-mortems
            log.debug(
                "round buffered",
                extra={
                    "target": result.target,
                    "started_at": result.started_at.isoformat(),
                    "submitted": self._stats.submitted,
                },
            )
        self._spiller.submitted(self._buffer.add(Round(result.target, document)))
        self._linger.submitted(result.target, failing=result.first_failing_step is not None)
        self._idle.clear()
        self._wake.set()
        if self._buffer.waiting >= self._tuning.batch_max_rounds:
            self._full.set()
        self._report()

    async def drained(self, timeout_s: float) -> bool:
        """Wait until nothing is buffered or in flight; False when `timeout_s` passed first."""
        try:
            async with asyncio.timeout(timeout_s):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    async def close(self, timeout_s: float = 10.0) -> None:
        """Send what is buffered (at most `timeout_s`), then stop. Idempotent.

        Rounds still undelivered when the time is up go to the spill file (durably) for the
        next start; without one they are counted as dropped and logged.
        """
        if self._closed:
            return
        self._closing = True
        self._wake.set()
        self._full.set()
        task = self._task
        if task is not None:
            done, _ = await asyncio.wait({task}, timeout=timeout_s)
            if not done:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            elif not task.cancelled() and task.exception() is not None:
                log.error("the sink's task failed", exc_info=task.exception())
        await self._spiller.stop()
        self._closed = True
        if self._buffer.spill is not None:
            # What is in the file is not lost; what could not be written was counted as
            # dropped, but for the batch in flight, kept in memory when the file refused it.
            self._drop(await self._spiller.keep_for_next_start(), "shutdown")
            self._current, self._work = None, []
        elif left := self.depth:
            log.error(
                "rounds not delivered at shutdown: the controller did not take them in time",
                extra={"rounds": left, "timeout_s": timeout_s},
            )
            self._buffer.clear_memory()
            self._current, self._work = None, []
            self._drop(left, "shutdown")
        self._idle.set()
        self._report()

    # -- the tasks --------------------------------------------------------------------------

    async def _run(self) -> None:
        """Take batches off the buffer and settle each before the next; ends when closing
        and empty. A bug in one batch's handling is logged and costs only that batch."""
        while True:
            await self._wait_for_batch()
            batch = self._buffer.take() if self._buffer.waiting else None
            self._linger.taken(self._buffer.waiting)
            if batch is None:
                if self._closing:
                    return
                continue
            try:
                await self._settle(batch)
            except Exception:
                log.exception("batch handling failed: its rounds are dropped")
                self._drop(self.depth - self._buffer.waiting, "refused")
                self._current, self._work = None, []
            self._buffer.settled()
            if not self._buffer.waiting:
                self._idle.set()
            self._report()

    async def _wait_for_batch(self) -> None:
        while not self._buffer.waiting and not self._closing:
            self._wake.clear()
            await self._wake.wait()
        if (
            self._closing
            or self._buffer.waiting >= self._tuning.batch_max_rounds
            or self._buffer.waiting > self._buffer.memory_rounds  # a spilled batch: send it
        ):
            return
        # The first round of a batch is in: give others up to batch_interval_s to join it
        # (less when a round fails or recovers: agent/linger.py).
        self._full.clear()
        await self._linger.wait(self._full)

    async def _settle(self, batch: Batch) -> None:
        """Deliver `batch`, splitting it when refused; returns when every round of it is
        stored or dropped."""
        self._work = [batch]
        while self._work:
            halves = await self._deliver(self._work.pop())
            # Halves go on the stack second half first, so the rounds keep their order.
            self._work.extend(reversed(halves))

    async def _deliver(self, batch: Batch) -> list[Batch]:
        """Send one batch until it is settled; returns the halves to send instead, if split."""
        attempt = 0
        self._current = batch
        while True:
            outcome = await self._post(batch)
            if outcome.kind is Kind.OK:
                self._current = None
                self._spiller.controller_back()
                self._delivered(batch, outcome)
                return []
            self._stats.failed_attempts += 1
            self._hooks.batch_sent(False, 0)
            match outcome.kind:
                case Kind.RETRY:
                    self._spiller.controller_away()
                    delay = self._backoff.delay_s(attempt, outcome.retry_after_s)
                    attempt += 1
                    log.warning(
                        "controller unavailable: the batch is kept and retried",
                        extra={**self._about(batch, outcome), "attempt": attempt, "in_s": delay},
                    )
                    await asyncio.sleep(delay)
                case Kind.WAIT:
                    self._spiller.controller_away()
                    log.error(
                        "controller refuses this agent: check --controller and --token-file; "
                        "the batch is kept and retried",
                        extra={**self._about(batch, outcome), "in_s": self._tuning.auth_retry_s},
                    )
                    await asyncio.sleep(self._tuning.auth_retry_s)
                case Kind.UNKNOWN_TARGETS:
                    self._current = None
                    rest = self._drop_unknown(batch, outcome)
                    if rest is None:
                        return []
                    batch = self._current = rest
                    attempt = 0
                case Kind.REFUSED:
                    self._current = None
                    return self._split(batch, outcome)

    def _delivered(self, batch: Batch, outcome: Outcome) -> None:
        self._stats.batches_ok += 1
        self._stats.stored += outcome.stored
        self._hooks.batch_sent(True, outcome.stored)
        if outcome.duplicate:
            self._stats.duplicates += 1
            # The controller had stored it already: an earlier answer was lost on the way.
            log.info(
                "batch was stored before (a retry after a lost answer)", extra=self._about(batch)
            )
        else:
            log.debug("batch delivered", extra=self._about(batch, outcome))

    def _drop_unknown(self, batch: Batch, outcome: Outcome) -> Batch | None:
        """Drop the rounds a 422 names; the rest, under a new id, or None when none is left."""
        named = {i for i in outcome.rounds if i < len(batch.rounds)}
        if not named:  # nothing to tell the good rounds from the others by
            named = set(range(len(batch.rounds)))
        gone = [r for i, r in enumerate(batch.rounds) if i in named]
        kept = tuple(r for i, r in enumerate(batch.rounds) if i not in named)
        self._drop(len(gone), "unknown_target")
        log.error(
            "controller does not know these targets: their rounds are dropped",
            extra={
                **self._about(batch, outcome),
                "dropped": len(gone),
                "targets": sorted({r.target for r in gone}),
            },
        )
        # Nothing of a refused batch was stored, so the rest may go under any new id.
        return Batch(self._new_id(), kept) if kept else None

    def _split(self, batch: Batch, outcome: Outcome) -> list[Batch]:
        if len(batch.rounds) == 1:
            self._drop(1, "refused")
            log.error(
                "controller refuses a single round: it is dropped (its answer's detail says "
                "why: an agent bug, or this machine's clock)",
                extra={**self._about(batch, outcome), "target": batch.rounds[0].target},
            )
            return []
        middle = len(batch.rounds) // 2
        log.warning(
            "controller refuses the batch: sending it in halves",
            extra=self._about(batch, outcome),
        )
        return [
            Batch(self._new_id(), batch.rounds[:middle]),
            Batch(self._new_id(), batch.rounds[middle:]),
        ]

    # -- HTTP -------------------------------------------------------------------------------

    async def _post(self, batch: Batch) -> Outcome:
        body = batch_body(self._head, batch.batch_id, [r.document for r in batch.rounds])
        headers = {"Content-Type": "application/json"}
        token = self._token()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        try:
            answer = await self._client.request(
                "POST",
                RESULTS_PATH,
                headers=headers,
                body=body,
                timeout_s=self._tuning.request_timeout_s,
                max_body=ANSWER_MAX,
            )
        except (HttpError, TimeoutError, OSError) as exc:
            return Outcome(Kind.RETRY, type(exc).__name__, str(exc)[:200])
        return classify(answer.status, answer.body, answer.headers)

    # -- helpers ----------------------------------------------------------------------------

    def _report(self) -> None:
        """Tell the hooks how full the buffer is; end an episode of a full spill file."""
        buffer, spill = self._buffer, self._buffer.spill
        self._hooks.buffer_depth(self.depth)
        self._hooks.buffer_state(
            buffer.memory_bytes, buffer.spilled_rounds, spill.size_bytes if spill else 0
        )
        if not buffer.spilled_rounds:
            self._drop.spill_emptied()

    def _about(self, batch: Batch, outcome: Outcome | None = None) -> dict[str, Any]:
        about: dict[str, Any] = {
            "batch_id": batch.batch_id,
            "rounds": len(batch.rounds),
            "buffered": self._buffer.waiting,
        }
        if outcome is not None:
            about["answer"] = outcome.what
            if outcome.detail:
                about["detail"] = outcome.detail
        return about
