"""Resolutions, time buckets and retention windows: pure rules, no I/O.

Raw rounds are kept `raw_s` (default 14 days), minute rollups `minute_rollups_s` (31 days),
hour rollups `rollups_s` (400 days). A timeline query reads:

- raw rows when the range is at most RAW_MAX_SPAN (6 h) and starts inside the raw window;
- minute rollups when the range is at most MINUTE_MAX_SPAN (7 d) and starts inside the minute
  rollups' window;
- hour rollups otherwise.

So a point count stays readable (6 h of 30 s rounds is 720 per source and step; 7 d of minutes
is 10,080) and an old range never asks for rows that pruning has already removed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

DAY_S = 86_400.0
RAW_KEEP_S = 14 * DAY_S
MINUTE_ROLLUPS_KEEP_S = 31 * DAY_S
ROLLUPS_KEEP_S = 400 * DAY_S

RAW_MAX_SPAN = timedelta(hours=6)
MINUTE_MAX_SPAN = timedelta(days=7)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class Resolution(StrEnum):
    RAW = "raw"
    MINUTE = "minute"
    HOUR = "hour"

    @property
    def bucket(self) -> timedelta:
        """The width of one rollup bucket (ValueError for RAW, which has none)."""
        if self is Resolution.MINUTE:
            return timedelta(minutes=1)
        if self is Resolution.HOUR:
            return timedelta(hours=1)
        raise ValueError("raw results have no buckets")


ROLLUP_RESOLUTIONS = (Resolution.MINUTE, Resolution.HOUR)


def bucket_start(moment: datetime, resolution: Resolution) -> datetime:
    """The start (UTC) of the bucket holding `moment`, which must be timezone-aware."""
    if moment.tzinfo is None:
        raise ValueError(f"naive datetime {moment!r}: buckets need timezone-aware times")
    width = resolution.bucket
    return _EPOCH + ((moment - _EPOCH) // width) * width


@dataclass(frozen=True)
class RetentionWindows:
    """How long each kind of row is kept, in seconds."""

    raw_s: float = RAW_KEEP_S
    minute_rollups_s: float = MINUTE_ROLLUPS_KEEP_S
    rollups_s: float = ROLLUPS_KEEP_S


def choose_resolution(
    start: datetime, end: datetime, now: datetime, windows: RetentionWindows
) -> Resolution:
    """The resolution a timeline for [start, end) reads (see the module docstring)."""
    span = end - start
    if span <= RAW_MAX_SPAN and start >= now - timedelta(seconds=windows.raw_s):
        return Resolution.RAW
    if span <= MINUTE_MAX_SPAN and start >= now - timedelta(seconds=windows.minute_rollups_s):
        return Resolution.MINUTE
    return Resolution.HOUR
