"""A token bucket per key: how often on-demand rounds of one target may be asked for.

Each key (a configured target) holds up to `burst` tokens and gains one every `every_s`
seconds; a request takes one, or is refused with the seconds until the next token. Keys are
configured targets only (the route answers 404 for anything else first), so memory is bounded
by the config.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable


class RateLimiter:
    """`take(key)`: None when allowed (a token taken), else the seconds to wait."""

    def __init__(
        self,
        *,
        burst: int,
        every_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if burst < 1 or not every_s > 0:
            raise ValueError("a rate limit needs burst >= 1 and every_s > 0")
        self._burst = burst
        self._every_s = every_s
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)

    def take(self, key: str) -> float | None:
        now = self._clock()
        tokens, at = self._buckets.get(key, (float(self._burst), now))
        tokens = min(float(self._burst), tokens + (now - at) / self._every_s)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            return None
        self._buckets[key] = (tokens, now)
        return (1.0 - tokens) * self._every_s


def retry_after(wait_s: float) -> str:
    """`wait_s` as a Retry-After value: whole seconds, rounded up, at least 1."""
    return str(max(1, math.ceil(wait_s)))
