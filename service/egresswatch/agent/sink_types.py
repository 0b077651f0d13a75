"""What the sink's callers configure and observe: its tuning, hooks, counts and drop reasons."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol, get_args

__all__ = [
    "DEFAULT_BUFFER_MIB",
    "DROP_REASONS",
    "MIB",
    "MIN_BUFFER_BYTES",
    "DropReason",
    "NoHooks",
    "SinkHooks",
    "SinkStats",
    "SinkTuning",
]

MIB = 1 << 20
DEFAULT_BUFFER_MIB = 16  # with the agent's own ~50 MiB, fits a pod limited to 128 MiB
MIN_BUFFER_BYTES = 64 * 1024  # a batch or so of rounds

DropReason = Literal[
    "buffer_full",
    "spill_full",
    "spill_failed",
    "unknown_target",
    "refused",
    "shutdown",
    "unencodable",
]
DROP_REASONS: tuple[DropReason, ...] = get_args(DropReason)


@dataclass(frozen=True)
class SinkTuning:
    """How the sink batches and retries; the defaults are the production ones.

    `buffer_max_bytes` bounds the rounds held in memory (agent/buffer.py counts them): the
    default fits an agent in a pod limited to 128 MiB. `batch_interval_s` is how long a round
    waits for others to join its batch (a full batch goes at once): each POST costs the agent
    wake-ups and CPU, a sizeable part of an agent's at 50 targets every 30 s, while a few
    seconds more before the controller sees a round is small against rounds 30 s apart. A
    failing round, and every round of its target for `urgent_window_s` after it, waits at
    most `urgent_interval_s`: those open, confirm and close incidents (agent/linger.py).
    `spill_interval_s` is how often undelivered rounds go to the spill file while the
    controller is away: what a SIGKILL can lose then.
    """

    batch_max_rounds: int = 200
    batch_interval_s: float = 5.0
    urgent_interval_s: float = 1.0
    urgent_window_s: float = 300.0
    spill_interval_s: float = 1.0
    buffer_max_bytes: int = DEFAULT_BUFFER_MIB * MIB
    request_timeout_s: float = 10.0
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    auth_retry_s: float = 30.0

    def __post_init__(self) -> None:
        if self.batch_max_rounds < 1:
            raise ValueError("batch_max_rounds: need at least 1")
        if self.buffer_max_bytes < MIN_BUFFER_BYTES:
            raise ValueError(f"buffer_max_bytes: need at least {MIN_BUFFER_BYTES}")
        intervals = (
            self.batch_interval_s,
            self.urgent_interval_s,
            self.urgent_window_s,
            self.spill_interval_s,
            self.request_timeout_s,
        )
        if min(*intervals, self.backoff_initial_s) <= 0:
            raise ValueError("intervals and timeouts must be positive")
        if self.backoff_max_s < self.backoff_initial_s or self.auth_retry_s <= 0:
            raise ValueError("need 0 < backoff_initial_s <= backoff_max_s and auth_retry_s > 0")


class SinkHooks(Protocol):
    """What the sink reports as it goes (wired to the agent's metrics); called on the loop."""

    def buffer_depth(self, rounds: int) -> None: ...

    def buffer_state(self, memory_bytes: int, spilled_rounds: int, spill_bytes: int) -> None:
        """The bytes buffered in memory (as counted against the bound), the rounds waiting in
        the spill file and its size."""

    def batch_sent(self, ok: bool, rounds: int) -> None:
        """One POST: ok with the rounds the controller stored (0 for a repeated batch), or not."""

    def rounds_dropped(self, rounds: int, why: DropReason) -> None: ...


class NoHooks:
    def buffer_depth(self, rounds: int) -> None:
        pass

    def buffer_state(self, memory_bytes: int, spilled_rounds: int, spill_bytes: int) -> None:
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
    spilled: int = 0  # rounds written to the spill file (again after a restart: not counted)
    dropped: dict[str, int] = field(default_factory=dict)  # by DropReason
