"""The one retry wait of egresswatch: capped exponential backoff with equal jitter.

Every retry loop (the agent's sink and plan fetcher, the controller's storage writer) asks a
:class:`Backoff` how long to wait before retry `attempt` (0 first):

- the base is ``initial_s * 2**attempt``, capped at ``max_s``;
- equal jitter: the wait is uniform in ``[base/2, base)``. Half the base keeps a retry from
  hammering at once; the random half spreads a thousand agents that lost the controller
  together, so they do not return in lockstep (full jitter would spread more, but lets a
  retry come back at once);
- ``Retry-After`` (seconds) is honoured within the cap: the wait is at least
  ``min(retry_after_s, max_s)``.

The random source is injected (tests pass a fixed one); by default each Backoff has its own
``random.Random`` seeded from the OS, so two processes never share a sequence.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["Backoff", "parse_retry_after"]


def _own_random() -> Callable[[], float]:
    return random.Random().random  # seeded from os.urandom


@dataclass(frozen=True)
class Backoff:
    """Waits before retries; see the module docstring. `rand()` gives floats in [0, 1)."""

    initial_s: float = 0.5
    max_s: float = 30.0
    rand: Callable[[], float] = field(default_factory=_own_random, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not 0 < self.initial_s <= self.max_s:
            raise ValueError(
                f"backoff: need 0 < initial_s <= max_s, got initial_s={self.initial_s} "
                f"max_s={self.max_s}"
            )

    def delay_s(self, attempt: int, retry_after_s: float | None = None) -> float:
        """The wait before retry `attempt` (0 first), in seconds, never above `max_s`."""
        # 2**attempt overflows a float near attempt 1024: the cap is reached long before.
        base = min(self.max_s, self.initial_s * 2.0 ** min(attempt, 64))
        wait = base / 2 + self.rand() * base / 2
        if retry_after_s is not None and retry_after_s > 0:
            wait = max(wait, min(retry_after_s, self.max_s))
        return min(wait, self.max_s)


def parse_retry_after(value: str | None) -> float | None:
    """A `Retry-After` header's seconds; None for nothing, an HTTP date or a bad number (our
    own backoff decides then)."""
    try:
        seconds = float(value or "")
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None
