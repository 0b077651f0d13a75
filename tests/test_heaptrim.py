"""The C heap given back to the system (heaptrim.py): glibc's malloc_trim, found, called in a
named task off the event loop, and harmless where it is missing or fails."""

from __future__ import annotations

import asyncio
import logging
import platform
from collections.abc import Callable
from pathlib import Path

import pytest

from egresswatch.heaptrim import TASK_NAME, HeapTrim, find_trim

glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _tasks() -> list[str]:
    return [t.get_name() for t in asyncio.all_tasks() if t.get_name() == TASK_NAME]


@glibc
def test_a_trim_returns_the_free_pages_between_live_blocks() -> None:
    """Blocks over 512 bytes come from malloc; with one in a hundred kept, the heap cannot
    shrink from its top, and only malloc_trim gives the free pages in between back."""
    trim = find_trim()
    assert trim is not None
    blocks = [bytes(4000) + str(n).encode() for n in range(20_000)]  # about 80 MB
    kept = blocks[::100]
    del blocks
    before = _rss_kib()
    trim()
    after = _rss_kib()
    assert len(kept) == 200
    assert before - after > 30_000, (before, after)


def test_no_c_library_no_trim() -> None:
    assert find_trim("/nonexistent/libc.so.6") is None


async def test_trims_at_start_then_on_its_period_in_a_named_task_until_stopped() -> None:
    calls = 0

    def trim() -> bool:
        nonlocal calls
        calls += 1
        return True

    heap = HeapTrim(trim, period_s=0.01)
    heap.start()
    try:
        assert _tasks() == [TASK_NAME]
        for _ in range(500):  # bounded: 5 s at most, normally a few tens of ms
            if heap.trims >= 3:
                break
            await asyncio.sleep(0.01)
        assert heap.trims >= 3 and calls == heap.trims
    finally:
        await heap.stop()
    assert _tasks() == []
    await heap.stop()  # idempotent


async def test_soon_trims_before_the_period_once_for_many_asks() -> None:
    heap = HeapTrim(lambda: True, period_s=3600, settle_s=0.05)
    heap.start()
    try:
        await _until(lambda: heap.trims == 1)  # at start
        for _ in range(5):
            heap.soon()
        await _until(lambda: heap.trims == 2)
        await asyncio.sleep(0.2)
        assert heap.trims == 2  # five asks while one was pending: one trim
    finally:
        await heap.stop()


async def _until(condition: Callable[[], bool]) -> None:
    for _ in range(500):  # bounded: 5 s at most
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("not within 5 s")


async def test_a_failing_trim_is_logged_once_and_stops(caplog: pytest.LogCaptureFixture) -> None:
    def trim() -> bool:
        raise OSError("no")

    heap = HeapTrim(trim, period_s=0.01)
    with caplog.at_level(logging.ERROR, logger="egresswatch.heaptrim"):
        heap.start()
        for _ in range(500):
            if not _tasks():
                break
            await asyncio.sleep(0.01)
    assert _tasks() == [] and heap.trims == 0
    assert [r.message for r in caplog.records].count(
        "malloc_trim failed; the C heap is no longer trimmed"
    ) == 1
    await heap.stop()


async def test_without_malloc_trim_nothing_runs() -> None:
    heap = HeapTrim(None)
    heap.start()
    assert _tasks() == []
    await heap.stop()


def test_the_period_must_be_positive() -> None:
    with pytest.raises(ValueError, match="period_s must be positive"):
        HeapTrim(None, period_s=0)
    with pytest.raises(ValueError, match="settle_s not negative"):
        HeapTrim(None, settle_s=-1)
