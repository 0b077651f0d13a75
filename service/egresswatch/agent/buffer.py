"""The sink's buffer: rounds not yet delivered, in memory up to a bound in bytes, then in the
spill file (agent/spill.py), taken off in batches in the order they were run.

Contract of :class:`RoundBuffer` (all synchronous, on the event loop's thread):

- Memory is counted in bytes by :func:`round_cost`: the encoded document plus
  ROUND_OVERHEAD_BYTES, the measured cost of the objects holding it (benchmarks/agent_buffer.py
  measures it with tracemalloc; docs/architecture.md "The agent's buffer" has the numbers).
- Past `max_bytes` the oldest rounds go to the spill file in batches of `batch_max_rounds`,
  each under its own new id; without a spill file they are dropped (``buffer_full``).
- :meth:`spill_all` writes every round not yet delivered to the spill file: the batch in flight
  first (under its id, so a retry after a restart is the same batch), then memory. The sink
  calls it while the controller is away, so that a SIGKILL loses only what came since.
- :meth:`take` gives the oldest batch: the spill file's first, else up to `batch_max_rounds`
  rounds from memory. One batch is taken at a time: :meth:`settled` says it is done with
  (stored or dropped), and acknowledges it in the spill file when it was spilled.
- Everything in the spill file is older than everything in memory, so taking the file first
  keeps the order.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from egresswatch.agent.sink_types import DropReason
from egresswatch.agent.spill import SpillFile

__all__ = ["ROUND_OVERHEAD_BYTES", "Batch", "Round", "RoundBuffer", "round_cost"]

log = logging.getLogger(__name__)

# What a buffered round costs besides its document's bytes: 89 B measured on CPython 3.11 with
# tracemalloc (benchmarks/agent_buffer.py: the bytes object's header, the Round object, its
# slot in the deque), counted as 128 B so that the estimate stays above the real cost.
ROUND_OVERHEAD_BYTES = 128


@dataclass(frozen=True, slots=True)
class Round:
    target: str  # shared with the plan's target name: not counted per round
    document: bytes  # the round document as JSON


@dataclass(frozen=True)
class Batch:
    batch_id: str
    rounds: tuple[Round, ...]


def round_cost(item: Round) -> int:
    """The memory a buffered round is counted for, in bytes."""
    return len(item.document) + ROUND_OVERHEAD_BYTES


class RoundBuffer:
    """Rounds waiting for the controller; see the module docstring.

    `drop(rounds, why)` is told of every round given up on. `new_id()` names new batches.
    """

    def __init__(
        self,
        *,
        max_bytes: int,
        batch_max_rounds: int,
        spill: SpillFile | None,
        new_id: Callable[[], str],
        drop: Callable[[int, DropReason], None],
    ) -> None:
        self._max_bytes = max_bytes
        self._batch_max = batch_max_rounds
        self.spill = spill
        self._new_id = new_id
        self._drop = drop
        self._memory: deque[Round] = deque()
        self.memory_bytes = 0
        self._taken: Batch | None = None
        self._taken_spilled = False
        self._spill_failing = False

    # -- what is in it --------------------------------------------------------------------

    @property
    def waiting(self) -> int:
        """Rounds not taken yet: in memory, and in the spill file (the batch taken aside)."""
        spilled = self.spill.pending_rounds if self.spill is not None else 0
        if self._taken_spilled and self._taken is not None:
            spilled -= len(self._taken.rounds)
        return len(self._memory) + spilled

    @property
    def memory_rounds(self) -> int:
        return len(self._memory)

    @property
    def spilled_rounds(self) -> int:
        return self.spill.pending_rounds if self.spill is not None else 0

    # -- in ---------------------------------------------------------------------------------

    def add(self, item: Round) -> int:
        """Buffer a round; past the memory bound, the oldest go to the spill file (or are
        dropped). Returns the rounds written to the spill file."""
        self._memory.append(item)
        self.memory_bytes += round_cost(item)
        if self.memory_bytes <= self._max_bytes:
            return 0
        if self.spill is None:
            while self.memory_bytes > self._max_bytes and len(self._memory) > 1:
                self.memory_bytes -= round_cost(self._memory.popleft())
                self._drop(1, "buffer_full")
            return 0
        spilled = 0
        while self.memory_bytes > self._max_bytes and self._memory:
            spilled += self._spill_oldest(self._batch_max)
        return spilled

    def spill_all(self) -> int:
        """Write the batch in flight (if not yet) and every round in memory to the spill file;
        the rounds written (0 without a spill file)."""
        if self.spill is None:
            return 0
        spilled = self._spill_taken()
        while self._memory:
            spilled += self._spill_oldest(self._batch_max)
        return spilled

    # -- out --------------------------------------------------------------------------------

    def take(self) -> Batch | None:
        """The oldest batch waiting, or None; only after the previous one was settled."""
        if self._taken is not None:
            raise RuntimeError("a batch is still in flight")
        if self.spill is not None and self.spill.pending_batches:
            spilled = self.spill.first()
            if spilled is not None:
                rounds = tuple(Round(target, document) for target, document in spilled.rounds)
                self._taken, self._taken_spilled = Batch(spilled.batch_id, rounds), True
                return self._taken
        if not self._memory:
            return None
        count = min(len(self._memory), self._batch_max)
        rounds = tuple(self._pop() for _ in range(count))
        self._taken, self._taken_spilled = Batch(self._new_id(), rounds), False
        return self._taken

    def settled(self) -> None:
        """The batch taken is stored or given up on: acknowledged in the spill file."""
        if self._taken is not None and self._taken_spilled and self.spill is not None:
            self.spill.ack(self._taken.batch_id)
        self._taken, self._taken_spilled = None, False

    def clear_memory(self) -> int:
        """Forget what is in memory and in flight (not the spill file); the rounds forgotten."""
        count = len(self._memory)
        if self._taken is not None and not self._taken_spilled:
            count += len(self._taken.rounds)
        self._memory.clear()
        self.memory_bytes = 0
        self._taken, self._taken_spilled = None, False
        return count

    # -- inside -----------------------------------------------------------------------------

    def _pop(self) -> Round:
        item = self._memory.popleft()
        self.memory_bytes -= round_cost(item)
        return item

    def _spill_taken(self) -> int:
        if self._taken is None or self._taken_spilled or self.spill is None:
            return 0
        self._taken_spilled = True
        return self._append(self._taken, keep_first=False)

    def _spill_oldest(self, count: int) -> int:
        """Move up to `count` of the oldest rounds in memory to the spill file."""
        # The batch in flight is older than any of them: it goes first, or the order breaks.
        spilled = self._spill_taken()
        rounds = tuple(self._pop() for _ in range(min(count, len(self._memory))))
        return spilled + self._append(Batch(self._new_id(), rounds), keep_first=True)

    def _append(self, batch: Batch, *, keep_first: bool) -> int:
        """Write `batch` to the spill file; the rounds written. A write that fails (a full or
        broken disk) drops the batch, counted, and is logged once until a write succeeds;
        the batch in flight is kept in memory instead."""
        assert self.spill is not None
        keep = keep_first and self._taken_spilled
        try:
            dropped = self.spill.append(
                batch.batch_id, [(r.target, r.document) for r in batch.rounds], keep_first=keep
            )
        except OSError as exc:
            if not self._spill_failing:
                log.error(
                    "cannot write the spill file: rounds that do not fit in memory are dropped",
                    extra={"path": str(self.spill.path), "problem": str(exc)},
                )
            self._spill_failing = True
            if batch is self._taken:
                self._taken_spilled = False
            else:
                self._drop(len(batch.rounds), "spill_failed")
            return 0
        self._spill_failing = False
        if dropped:
            self._drop(dropped, "spill_full")
        return len(batch.rounds)
