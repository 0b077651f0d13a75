"""Jobs on a timer: one event-loop timer (``loop.call_at``) per job, re-armed after each run.

APScheduler 3.x did this until issue 14: its bookkeeping (datetimes, a sorted job store, an
event object per run, a lock) cost about 120 µs of CPU a round, a sixth of a TCP round's whole
cost; a loop timer a job does the same for a fraction (docs/performance.md).

Not the agent's alone: agents run their rounds on it, and the controller process its own
jobs (retention, the controller tick), so it sits beside the layers that use it.

Contract of :class:`RoundScheduler`:

- Each job starts every ``interval_s`` on a grid ``phase + k * interval_s`` (Unix time). The
  phase is a stable hash of the key (:func:`phase_offset`), so 1,000 targets do not fire at
  once, and a restart or a config reload keeps a job's phase.
- A job never runs twice at once: a run that comes due while the previous one is still going
  (running, or waiting for a slot) is skipped and counted (``on_skipped``).
- After a stall (blocked event loop, suspended machine) a job runs once, not once per missed
  interval (it is coalesced), however late it is (no misfire window: a late round is better
  than a hole); the time it was due is then the latest grid time past.
- At most ``max_concurrent`` rounds run at once over all jobs.
- Each round is cut at ``timeout_s`` (counted, ``on_timeout``), measured from when it got its
  slot, so a hanging round never delays the others. ``run`` must let cancellation through.
- Lateness, when the round got its slot minus when it was scheduled for, goes to
  ``on_lateness`` for every round.
- A job with ``shed_after_s`` is shed when its lateness exceeds it: not run, counted
  (``on_shed``): a saturated process gives up rounds rather than measure its own lateness.
  Jobs without it (retention, the controller tick) run however late.
- A round never raises out of the scheduler: exceptions are logged with the job key and
  counted (``on_error``); a hook that raises is logged and otherwise ignored.
- Every round is a task named ``egresswatch-round:<key>`` owned by the scheduler;
  :meth:`RoundScheduler.shutdown` cancels and awaits them.
- :meth:`RoundScheduler.run_now` runs a job at once, off its timer (an on-demand round): it
  takes a slot like any round, is cut at the same timeout, and joins the job's round already in
  flight (scheduled or on demand) instead of starting a second; a run that comes due meanwhile
  is skipped as usual. Its lateness is not reported (it was never scheduled).
- :meth:`RoundScheduler.set_jobs` is how a config reload lands: removals are immediate, new
  and changed jobs are put on their timers by a named background task in slices, so that
  thousands of jobs never stall the event loop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import itertools
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

__all__ = ["TASK_PREFIX", "RoundJob", "RoundScheduler", "SchedulerStats", "phase_offset"]

_log = logging.getLogger(__name__)
_T = TypeVar("_T")
TASK_PREFIX = "egresswatch-round:"
_SLICE = 50  # jobs put on their timers per loop iteration
# A loop timer may fire a hair before the wall clock says the job is due (the loop's clock is
# monotonic, the grid is Unix time): within this, the run is the one due, not the one before.
_EARLY_S = 0.001


@dataclass(frozen=True)
class RoundJob:
    """One (source, target) on a timer.

    Jobs compare by value, and ``run`` compares by identity unless it defines equality (bound
    methods of one object compare equal): hand :meth:`RoundScheduler.set_jobs` the same
    callable for an unchanged target, or the job is replaced (harmless, it keeps its phase).
    """

    key: str  # "source/target"
    interval_s: float
    timeout_s: float
    run: Callable[[], Awaitable[object]]  # what it returns, run_now's caller gets
    shed_after_s: float | None = None  # lateness past which a run is shed; None: never

    def __post_init__(self) -> None:
        if not self.key:
            raise ValueError("a round job needs a key")
        # Less than a microsecond is no interval (the grid is kept in float seconds).
        if timedelta(seconds=self.interval_s) <= timedelta(0):
            raise ValueError(f"{self.key}: interval must be positive, got {self.interval_s}")
        if not self.timeout_s > 0:
            raise ValueError(f"{self.key}: timeout must be positive, got {self.timeout_s}")
        if self.shed_after_s is not None and not self.shed_after_s >= 0:
            raise ValueError(f"{self.key}: shed_after_s must be >= 0, got {self.shed_after_s}")


@dataclass
class SchedulerStats:
    """Counts since the scheduler was built; :attr:`RoundScheduler.stats` returns a copy."""

    started: int = 0  # rounds that got a slot and began
    completed: int = 0  # returned normally
    timeouts: int = 0  # cut at timeout_s
    errors: int = 0  # raised
    skipped: int = 0  # came due while the previous run of the same job was still going
    shed: int = 0  # got a slot later than the job's shed_after_s, so not run


def phase_offset(key: str, interval_s: float) -> float:
    """Where in its interval a job starts, in [0, interval_s): a stable hash of the key.

    Stable across processes (not Python's salted ``hash``), so restarts and reloads keep it.
    """
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    fraction = (int.from_bytes(digest, "big") >> 11) / float(1 << 53)  # uniform in [0, 1)
    return (fraction * interval_s) % interval_s


def next_due(key: str, interval_s: float, now: float) -> float:
    """The job's first grid time at or after `now` (Unix time): ``phase + k * interval_s``.
    The same key and interval give the same times in every process, whenever it was added."""
    phase = phase_offset(key, interval_s)
    return phase + math.ceil((now - phase) / interval_s) * interval_s


def _ignore(_: object) -> None:
    return None


class RoundScheduler:
    """Runs :class:`RoundJob` s on their timers; see the module docstring for the contract.

    Hooks are called on the event loop: ``on_lateness(seconds)`` for every round as it starts,
    ``on_timeout(key)``, ``on_error(key)``, ``on_skipped(key)`` and ``on_shed(key)``. Wire
    metrics with e.g.
    ``on_timeout=lambda _key: metrics.count_round_timeout()``.
    """

    def __init__(
        self,
        *,
        max_concurrent: int,
        on_lateness: Callable[[float], None] = _ignore,
        on_timeout: Callable[[str], None] = _ignore,
        on_error: Callable[[str], None] = _ignore,
        on_skipped: Callable[[str], None] = _ignore,
        on_shed: Callable[[str], None] = _ignore,
        logger: logging.Logger = _log,
    ) -> None:
        if max_concurrent < 1:
            raise ValueError(f"max_concurrent must be at least 1, got {max_concurrent}")
        self._on_lateness = on_lateness
        self._on_timeout = on_timeout
        self._on_error = on_error
        self._on_skipped = on_skipped
        self._on_shed = on_shed
        self._log = logger
        self._slots = asyncio.Semaphore(max_concurrent)
        self._jobs: dict[str, RoundJob] = {}  # wanted
        self._pending: dict[str, RoundJob] = {}  # wanted, not yet on their timers
        self._timers: dict[str, asyncio.TimerHandle] = {}  # jobs on their timers, by key
        self._changed = asyncio.Event()
        self._applier: asyncio.Task[None] | None = None
        self._tasks: dict[str, asyncio.Task[object]] = {}  # rounds in flight, one per key at most
        self._stats = SchedulerStats()
        self._started = self._stopped = False

    @property
    def running(self) -> bool:
        """True between :meth:`start` and :meth:`shutdown`."""
        return self._started and not self._stopped

    @property
    def pending(self) -> int:
        """Jobs added or changed by :meth:`set_jobs` and not yet on their timers."""
        return len(self._pending)

    @property
    def stats(self) -> SchedulerStats:
        return dataclasses.replace(self._stats)

    def job_keys(self) -> frozenset[str]:
        return frozenset(self._jobs)

    def start(self) -> None:
        """Start firing the jobs; call it inside the running event loop, once."""
        if self._started:
            raise RuntimeError("the round scheduler was already started")
        self._started = True
        self._applier = asyncio.get_running_loop().create_task(
            self._apply_pending(), name="egresswatch-round-scheduler:apply"
        )

    def set_jobs(self, jobs: Sequence[RoundJob]) -> None:
        """Make ``jobs`` the scheduled set: add new keys, replace changed jobs, remove the rest.

        Unchanged jobs are not touched. Removal is immediate, and a removed job's running round
        is cancelled, so no result for a target that has left the config turns up afterwards.
        New and changed jobs go onto their timers in the background (once started), in slices,
        so that a reload of thousands never stalls the event loop (and every probe timing on
        it) in one go; :attr:`pending` counts those left. A
        replaced job keeps its phase (key and interval fix it); its running round, if any,
        finishes under the old settings and the next run waits for it. ValueError on
        duplicate keys, before anything changes.
        """
        wanted: dict[str, RoundJob] = {}
        for job in jobs:
            if job.key in wanted:
                raise ValueError(f"duplicate round job key {job.key!r}")
            wanted[job.key] = job
        removed = [key for key in self._jobs if key not in wanted]
        changed = [job for key, job in wanted.items() if self._jobs.get(key) != job]
        for key in removed:
            self._pending.pop(key, None)
            if timer := self._timers.pop(key, None):
                timer.cancel()
            if task := self._tasks.get(key):
                task.cancel()
        for job in changed:
            self._pending[job.key] = job
        self._jobs = wanted
        if changed:
            self._changed.set()
        if removed or changed:
            self._log.info(
                "round jobs: %d scheduled, %d added or changed, %d removed",
                len(wanted),
                len(changed),
                len(removed),
            )

    async def shutdown(self) -> None:
        """Stop firing, cancel every running round and wait until they have ended. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        for timer in self._timers.values():
            timer.cancel()  # nothing is started from here on
        self._timers.clear()
        tasks = list(self._tasks.values())
        if self._applier is not None:
            tasks.append(self._applier)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._pending.clear()  # a later set_jobs only records

    async def _apply_pending(self) -> None:
        """Put pending jobs on their timers, a slice per loop iteration, for ever."""
        while True:
            await self._changed.wait()
            self._changed.clear()
            while self._pending:
                self._add_slice()
                await asyncio.sleep(0)  # let rounds and the API run between slices

    def _add_slice(self) -> None:
        keys = list(itertools.islice(self._pending, _SLICE))
        for key in keys:
            job = self._pending.pop(key)
            self._arm(job, next_due(key, job.interval_s, time.time()))

    def _arm(self, job: RoundJob, due: float) -> None:
        """Put `job` on a loop timer for Unix time `due` (replacing its timer, if any)."""
        if old := self._timers.get(job.key):
            old.cancel()
        loop = asyncio.get_running_loop()
        when = loop.time() + (due - time.time())
        self._timers[job.key] = loop.call_at(when, self._due, job, due)

    def _due(self, job: RoundJob, due: float) -> None:
        """A job's timer fired: run it (or count it skipped), and arm the next run. A removed
        or replaced job's timer was cancelled, so this is the job as wanted now."""
        now = time.time()
        if now + _EARLY_S < due:  # the wall clock went back: wait for the time itself
            self._arm(job, due)
            return
        if now - due >= job.interval_s:  # late by whole intervals: run once, for the latest
            due += math.floor((now + _EARLY_S - due) / job.interval_s) * job.interval_s
        if job.key in self._tasks:
            # The previous run (scheduled or on demand) is still going: never two at once.
            self._stats.skipped += 1
            self._log.warning("round %s skipped: its previous run is still going", job.key)
            self._call(self._on_skipped, job.key)
        else:
            self._start(job, due)
        self._arm(job, due + job.interval_s)

    def run_now(self, key: str) -> asyncio.Task[object] | None:
        """The round of job `key` in flight, else one started now, off the timer (see the
        module). The task gives what the job's run returned, or None when the round was cut
        at its timeout or raised (logged and counted as any round). None: no such job, or
        the scheduler is not running. Await it through `asyncio.shield` to leave the round
        running when the caller goes away."""
        job = self._jobs.get(key)
        if job is None or not self.running:
            return None
        return self._tasks.get(key) or self._start(job, None)

    def _start(self, job: RoundJob, scheduled_for: float | None) -> asyncio.Task[object]:
        """Start a run as an owned, named task (`scheduled_for`: the Unix time it was due)."""
        task = asyncio.get_running_loop().create_task(
            self._run_round(job, scheduled_for, on_demand=scheduled_for is None),
            name=f"{TASK_PREFIX}{job.key}",
        )
        self._tasks[job.key] = task
        task.add_done_callback(lambda done: self._forget(job.key, done))
        return task

    def _forget(self, key: str, task: asyncio.Task[object]) -> None:
        if self._tasks.get(key) is task:
            del self._tasks[key]

    async def _run_round(
        self, job: RoundJob, scheduled_for: float | None = None, *, on_demand: bool = False
    ) -> object:
        """One round: wait for a slot, report lateness, run under the hard timeout; what the
        job's run returned, None when it was cut or raised.

        Never raises, except CancelledError when the scheduler cancels it. Without
        ``scheduled_for`` (not run by our executor) the round counts as on time; an on-demand
        round reports no lateness.
        """
        async with self._slots:
            due = time.time() if scheduled_for is None else scheduled_for
            if not on_demand:
                late = max(0.0, time.time() - due)
                self._call(self._on_lateness, late)
                if job.shed_after_s is not None and late > job.shed_after_s:
                    # Counted, not logged: a line per shed round adds to the overload.
                    self._stats.shed += 1
                    self._call(self._on_shed, job.key)
                    return None
            self._stats.started += 1
            deadline = asyncio.timeout(job.timeout_s)
            result: object = None
            try:
                async with deadline:
                    result = await job.run()
            except Exception as exc:
                # A TimeoutError that the round raised itself is an error, not our timeout.
                if isinstance(exc, TimeoutError) and deadline.expired():
                    self._stats.timeouts += 1
                    self._log.warning("round %s timed out after %gs", job.key, job.timeout_s)
                    self._call(self._on_timeout, job.key)
                else:
                    self._stats.errors += 1
                    self._log.exception("round %s raised", job.key)
                    self._call(self._on_error, job.key)
            else:
                self._stats.completed += 1
            return result

    def _call(self, hook: Callable[[_T], None], arg: _T) -> None:
        try:
            hook(arg)
        except Exception:
            self._log.exception("scheduler hook %r failed", hook)
