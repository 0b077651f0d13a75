"""What the sink's callers configure and observe: its tuning, hooks, counts and drop reasons."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

__all__ = ["DROP_REASONS", "DropReason", "NoHooks", "SinkHooks", "SinkStats", "SinkTuning"]

DropReason = Literal["buffer_full", "unknown_target", "refused", "shutdown", "unencodable"]
DROP_REASONS: tuple[DropReason, ...] = (
    "buffer_full",
    "unknown_target",
    "refused",
    "shutdown",
    "unencodable",
)


@dataclass(frozen=True)
class SinkTuning:
    """How the sink batches and retries; the defaults are the production ones."""

    batch_max_rounds: int = 200
    batch_interval_s: float = 1.0
    buffer_max_rounds: int = 200_000
    request_timeout_s: float = 10.0
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    auth_retry_s: float = 30.0

    def __post_init__(self) -> None:
        if self.batch_max_rounds < 1 or self.buffer_max_rounds < self.batch_max_rounds:
            raise ValueError("need 1 <= batch_max_rounds <= buffer_max_rounds")
        if min(self.batch_interval_s, self.request_timeout_s, self.backoff_initial_s) <= 0:
            raise ValueError("intervals and timeouts must be positive")
        if self.backoff_max_s < self.backoff_initial_s or self.auth_retry_s <= 0:
            raise ValueError("need 0 < backoff_initial_s <= backoff_max_s and auth_retry_s > 0")

    def backoff_s(self, attempt: int, retry_after_s: float | None, jitter: float) -> float:
        """The wait before retry `attempt` (0 first): exponential, capped, jittered by
        `jitter` in [0, 1), and at least `retry_after_s` (within the cap)."""
        delay = min(self.backoff_max_s, self.backoff_initial_s * 2.0**attempt)
        # +-20 %: a thousand agents that lost the controller together do not return together.
        delay *= 0.8 + 0.4 * jitter
        if retry_after_s is not None:
            delay = max(delay, retry_after_s)
        return min(delay, self.backoff_max_s)


class SinkHooks(Protocol):
    """What the sink reports as it goes (wired to the agent's metrics); called on the loop."""

    def buffer_depth(self, rounds: int) -> None: ...

    def batch_sent(self, ok: bool, rounds: int) -> None:
        """One POST: ok with the rounds the controller stored (0 for a repeated batch), or not."""

    def rounds_dropped(self, rounds: int, why: DropReason) -> None: ...


class NoHooks:
    def buffer_depth(self, rounds: int) -> None:
        pass

    def batch_sent(self, ok: bool, rounds: int) -> None:
        pass

    def rounds_dropped(self, rounds: int, why: DropReason) -> None:
        pass


@dataclass
class SinkStats:
    """Counts since the sink was made; :attr:`HttpSink.stats` returns a copy."""

    submitted: int = 0  # rounds handed to submit()
    stored: int = 0  # rounds the controller answered as stored
    batches_ok: int = 0  # POSTs answered 2xx (duplicates included)
    duplicates: int = 0  # of those, answered as a batch stored before (a lost answer retried)
    failed_attempts: int = 0  # POSTs that did not settle their batch
    dropped: dict[str, int] = field(default_factory=dict)  # by DropReason
