"""Giving the C heap's free memory back to the system, now and then (glibc's `malloc_trim`).

Why: CPython takes every block over 512 bytes, and every thread's buffers, from the C
library's malloc. glibc keeps what is freed for the next allocation and returns it only from
the top of a heap, so a scrape's pieces (rendered in pool threads, each with its own arena),
a status answer of several MB, the driver's row buffers and the config's parse leave RSS
behind them for good. `malloc_trim(0)` returns every whole free page of every arena (glibc
2.8 and later). With 5,000 targets at steady state it took RSS from 165 to 157 MiB
(docs/performance.md, "Issue 14: 5,000 targets under 150 MiB").

Contract:

- :func:`find_trim` is the C library's `malloc_trim(0)` as a callable (True when memory was
  returned), or None where there is none (musl, macOS): then nothing is trimmed, nothing fails.
- :class:`HeapTrim` trims at :meth:`~HeapTrim.start` and then every `period_s`, in a task named
  ``egresswatch-heap-trim``; each trim runs in a worker thread (ctypes lets go of the GIL),
  so the event loop runs meanwhile, except that a block over 512 bytes it asks malloc for
  waits while the trim holds that arena's lock: the longer, the more there is to return,
  which trimming often keeps small. :meth:`~HeapTrim.stop` cancels and awaits it. A trim
  that raises is logged once and the task stops trimming: the process works the same
  without it.
- :meth:`HeapTrim.soon` asks for a trim `settle_s` from now, sooner than the period: after a
  request that allocated a lot (a status answer, a scrape), once its answer is sent and freed.
  Calls while one is pending make no second trim.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import logging
from collections.abc import Callable

__all__ = ["TASK_NAME", "HeapTrim", "find_trim"]

log = logging.getLogger(__name__)

TASK_NAME = "egresswatch-heap-trim"
Trim = Callable[[], bool]


def find_trim(library: str | None = None) -> Trim | None:
    """`malloc_trim(0)` of `library` (default: the C library this process runs on), or None
    when it has no such function."""
    try:
        libc = ctypes.CDLL(library or ctypes.util.find_library("c") or "libc.so.6")
        function = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    function.argtypes, function.restype = [ctypes.c_size_t], ctypes.c_int

    def trim() -> bool:
        return bool(function(0))

    return trim


class HeapTrim:
    """Trims the C heap with `trim` at start and every `period_s`; see the module docstring."""

    def __init__(self, trim: Trim | None, *, period_s: float = 30.0, settle_s: float = 1.0) -> None:
        if not period_s > 0 or settle_s < 0:
            raise ValueError(
                f"period_s must be positive and settle_s not negative, got {period_s}, {settle_s}"
            )
        self._trim = trim
        self._period, self._settle = period_s, settle_s
        self._task: asyncio.Task[None] | None = None
        self._asked = asyncio.Event()
        self.trims = 0  # how many trims ran (tests read it)

    def soon(self) -> None:
        """Trim `settle_s` from now rather than at the end of the period (see the module
        docstring). On the event loop; nothing happens before start or without a `trim`."""
        self._asked.set()

    def start(self) -> None:
        """Start trimming (the first trim now); inside the running event loop, once. Without a
        `trim` (no glibc) it does nothing."""
        if self._task is not None:
            raise RuntimeError("the heap trim was already started")
        if self._trim is not None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=TASK_NAME)

    async def stop(self) -> None:
        """Cancel the task and wait for it. Idempotent."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        assert self._trim is not None
        while True:
            try:
                await asyncio.to_thread(self._trim)
            except Exception:  # not ours to break the process over: stop trimming
                log.exception("malloc_trim failed; the C heap is no longer trimmed")
                return
            self.trims += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._asked.wait(), self._period)
            if self._asked.is_set():  # asked for: let the request's answer go first
                await asyncio.sleep(self._settle)
                self._asked.clear()
