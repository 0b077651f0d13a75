"""How long the event loop was held: the prober's own lateness, measured.

A saturated process (more rounds than a core can run, a thread holding the GIL, a long
synchronous call) runs every timer late. Then a step's timeout can fire although the target
answered in time: the answer sat in the socket while the loop was busy elsewhere. To tell
that apart from a silent target, :class:`LoopLag` keeps the recent **stalls**: a named task
sleeps ``period_s`` again and again, and each wake-up that comes more than ``min_stall_s``
late records the interval ``[due, woke]`` during which the loop could not run it.

Contract:

- :meth:`LoopLag.stalled` is how many seconds of ``[start, end]`` (``loop.time()``) the loop
  was stalled: the recorded stalls that overlap it, plus the stall going on right now (the
  sampler is overdue), so a step that ends in the same loop iteration as a long stall sees it.
- Stalls are kept for ``keep_s`` and at most ``MAX_STALLS`` of them (oldest dropped first):
  memory is bounded whatever the load.
- :meth:`LoopLag.recent_max` is the longest lateness of the sampler over the last seconds,
  for the ``egresswatch_event_loop_lag_seconds`` gauge.
- :meth:`LoopLag.start` creates the task ``egresswatch-loop-lag``; :meth:`LoopLag.stop`
  cancels and awaits it. Without a started sampler (no loop yet) everything reports 0.
- A stall is recorded from the first wake-up it made late, so up to ``period_s`` of it can go
  unseen: :func:`period_for` picks the longest period that keeps that under
  :data:`PERIOD_SHARE` of the shortest step budget (the judge needs half of one). Each wake-up
  costs CPU even when idle (3.6 millicores at 50 ms, 0.7 at 250 ms on the development
  machine: most of an idle agent's CPU; docs/performance.md, "An agent's footprint"), so
  :meth:`LoopLag.set_period` follows the plan.
- With ``idle_period_s`` (the agent), the sampler wakes every ``period_s`` only while
  something is watched (:meth:`LoopLag.watching`: a round in flight, whose steps a stall could
  turn into timeouts), and every ``idle_period_s`` otherwise, which still shows a stall of
  that order on the gauge (the saturation alert's is a second). When the last watcher leaves,
  the sampler's pending wake-up is moved to the idle period without waking the process: a
  round shorter than ``period_s`` costs the sampler no wake-up at all. Without it (the
  default) the sampler wakes every ``period_s`` whatever runs.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Iterator

__all__ = ["IDLE_PERIOD_S", "MAX_STALLS", "PERIOD_SHARE", "TASK_NAME", "LoopLag", "period_for"]

TASK_NAME = "egresswatch-loop-lag"
MAX_STALLS = 4096
# Below this a wake-up is "on time": a loop iteration running a few callbacks costs that much.
MIN_STALL_S = 0.002
# The sampler's period: at most this share of the shortest step budget, within these bounds.
PERIOD_SHARE = 0.05
MIN_PERIOD_S, MAX_PERIOD_S = 0.05, 0.25
# The agent's period while no round is in flight: no step can then be misjudged, and a stall
# of a second (the saturation alert's threshold) still shows on the gauge.
IDLE_PERIOD_S = 1.0


def period_for(shortest_budget_s: float) -> float:
    """The sampler's period for steps whose shortest budget is `shortest_budget_s`: a stall
    seen up to PERIOD_SHARE of that budget short (5 s steps: 0.25 s; 1 s: 0.05 s)."""
    return min(MAX_PERIOD_S, max(MIN_PERIOD_S, PERIOD_SHARE * shortest_budget_s))


class LoopLag:
    """The event loop's stalls, sampled by a named task; see the module docstring."""

    def __init__(
        self,
        *,
        period_s: float = 0.05,
        keep_s: float = 60.0,
        min_stall_s: float = MIN_STALL_S,
        idle_period_s: float | None = None,
    ) -> None:
        if not period_s > 0 or not keep_s > 0:
            raise ValueError(f"period_s and keep_s must be positive, got {period_s}, {keep_s}")
        if idle_period_s is not None and not idle_period_s > 0:
            raise ValueError(f"idle_period_s must be positive, got {idle_period_s}")
        self._period = period_s
        self._idle_period = idle_period_s
        self._watchers = 0  # rounds in flight (watching()); only counted with idle_period_s
        self._wake: asyncio.Future[None] | None = None  # the sampler's pending wake-up
        self._timer: asyncio.TimerHandle | None = None  # and the timer that resolves it
        self._slept_from = 0.0  # when the sampler last woke (loop time)
        self.wakeups = 0  # how often the sampler woke: what it costs (tests, benchmarks)
        self._keep = keep_s
        self._min_stall = min_stall_s
        self._stalls: deque[tuple[float, float]] = deque(maxlen=MAX_STALLS)  # (due, woke)
        self._samples: deque[tuple[float, float]] = deque()  # (woke, lateness), over keep_s
        self._due: float | None = None  # when the sampler should wake next
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def period_s(self) -> float:
        return self._period

    @property
    def idle_period_s(self) -> float | None:
        return self._idle_period

    @contextlib.contextmanager
    def watching(self) -> Iterator[None]:
        """Sample every `period_s` while the block runs (see the module docstring); nests,
        and is a no-op without `idle_period_s`."""
        if self._idle_period is None:
            yield
            return
        self._watchers += 1
        if self._watchers == 1:
            self._reschedule()
        try:
            yield
        finally:
            self._watchers -= 1
            if self._watchers == 0:
                self._reschedule()

    def set_period(self, period_s: float) -> None:
        """Sample every `period_s` from the next wake-up on (`period_for`)."""
        if not period_s > 0:
            raise ValueError(f"period_s must be positive, got {period_s}")
        self._period = period_s

    def start(self) -> None:
        """Start sampling; call it inside the running event loop, once."""
        if self._task is not None:
            raise RuntimeError("the loop lag sampler was already started")
        self._loop = asyncio.get_running_loop()
        self._task = self._loop.create_task(self._sample(), name=TASK_NAME)

    async def stop(self) -> None:
        """Cancel the sampler and wait for it. Idempotent."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._due = None

    def stalled(self, start: float, end: float) -> float:
        """Seconds of ``[start, end]`` (loop time) during which the loop was stalled."""
        total = 0.0
        for due, woke in reversed(self._stalls):  # newest first: stop before the window
            if woke <= start:
                break
            total += _overlap(start, end, due, woke)
        if self._due is not None and self._loop is not None:
            now = self._loop.time()
            if now - self._due > self._min_stall:  # a stall in progress, not recorded yet
                total += _overlap(start, end, self._due, now)
        return total

    def recent_max(self, window_s: float = 10.0) -> float:
        """The sampler's longest lateness (seconds) over the last ``window_s``, 0 if none."""
        if self._loop is None:
            return 0.0
        now = self._loop.time()
        found = max((late for woke, late in self._samples if woke >= now - window_s), default=0.0)
        if self._due is not None:
            found = max(found, now - self._due)  # the stall going on right now
        return found

    def _current_period(self) -> float:
        if self._idle_period is None or self._watchers:
            return self._period
        return max(self._idle_period, self._period)

    async def _sample(self) -> None:
        assert self._loop is not None
        loop = self._loop
        while True:
            self._slept_from = loop.time()
            self._due = self._slept_from + self._current_period()
            self._wake = loop.create_future()
            self._timer = loop.call_at(self._due, _resolve, self._wake)
            try:
                await self._wake
            finally:
                self._timer.cancel()
                self._wake = self._timer = None
            self.wakeups += 1
            self._record(self._due, loop.time())

    def _reschedule(self) -> None:
        """The watchers came or went: move the pending wake-up to the period now in force.
        A moved timer is cancelled before it fires, so moving it never wakes the process."""
        if self._timer is None or self._wake is None or self._loop is None or self._due is None:
            return
        now = self._loop.time()
        if now - self._due > self._min_stall:  # overdue: it fires soon and records the stall
            return
        if self._watchers:  # sooner, never later than it was
            due = min(self._due, now + self._period)
        else:  # later: the idle period from when the sampler last woke
            due = max(self._slept_from + self._current_period(), now + self._period)
        if due != self._due:
            self._due = due
            self._timer.cancel()
            self._timer = self._loop.call_at(due, _resolve, self._wake)

    def _record(self, due: float, woke: float) -> None:
        late = max(0.0, woke - due)
        self._samples.append((woke, late))
        while self._samples and self._samples[0][0] < woke - self._keep:
            self._samples.popleft()
        if late > self._min_stall:
            self._stalls.append((due, woke))
        while self._stalls and self._stalls[0][1] < woke - self._keep:
            self._stalls.popleft()


def _resolve(wake: asyncio.Future[None]) -> None:
    if not wake.done():
        wake.set_result(None)


def _overlap(start: float, end: float, low: float, high: float) -> float:
    return max(0.0, min(end, high) - max(start, low))
