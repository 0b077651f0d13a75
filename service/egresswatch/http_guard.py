"""What the listener holds and refuses: the connection caps, the counters and the log.

`ConnectionGuard` admits or refuses each new connection (caps in total and per peer IP),
keeps the connections waiting for a request head in age order (the oldest is closed to make
room for a new one), counts every refusal on the process's registry and logs them through
`RefusalLog`: one line when refusals start, a count while they go on, one line when they stop,
never a line (nor a traceback) per connection. `AcceptErrors` does the same for the event
loop's "socket.accept() out of system resource" (EMFILE), which asyncio would log with a
traceback every second per listening socket.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter as Tally
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol, get_args

from prometheus_client import CollectorRegistry, Counter, Gauge

from egresswatch.http_limits import ListenerLimits, nofile_soft

__all__ = [
    "REFUSALS",
    "AcceptErrors",
    "ConnectionGuard",
    "Guarding",
    "Held",
    "ListenError",
    "ListenerMetrics",
    "Refusal",
    "RefusalLog",
    "guarding",
]

log = logging.getLogger(__name__)

# Why the listener closed a connection without serving it (a closed vocabulary: metric labels).
Refusal = Literal[
    "peer_limit",  # over max_per_peer: closed at once
    "total_limit",  # over max_connections with none waiting to evict: closed at once
    "evicted",  # the oldest connection waiting for a head, closed to make room
    "head_timeout",  # no complete request head within head_timeout_s
    "body_timeout",  # no complete body within body_timeout_s of its head
    "bad_request",  # a head the parser refused (answered 400 with a problem document)
    "accept_failed",  # accept() out of descriptors: the connection waits in the backlog
]
REFUSALS: tuple[Refusal, ...] = get_args(Refusal)
ACCEPT_OUT_OF_RESOURCES = "socket.accept() out of system resource"  # asyncio's message


class ListenError(Exception):
    """The listen address cannot be bound; the message is `cannot listen on ADDRESS: why`."""


class ListenerMetrics:
    """The listener's families on the process's registry: refusals by reason (every reason
    present from the start at 0) and the connections held."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.refused = Counter(
            "egresswatch_http_connections_refused_total",
            "Connections the HTTP listener closed without serving a request, by reason: "
            + ", ".join(REFUSALS)
            + ".",
            ("reason",),
            registry=registry,
        )
        for reason in REFUSALS:
            self.refused.labels(reason)
        self.open = Gauge(
            "egresswatch_http_connections_open",
            "Connections the HTTP listener holds now.",
            registry=registry,
        )


class RefusalLog:
    """Refusals, logged at a bounded rate: a line when they start, then every `every_s` a line
    with the counts by reason while they go on, and a line once `every_s` passed without one."""

    def __init__(self, listen: str, loop: asyncio.AbstractEventLoop, every_s: float = 10.0):
        self._listen = listen
        self._loop = loop
        self._every_s = every_s
        self._recent: Tally[str] = Tally()
        self._total: Tally[str] = Tally()
        self._timer: asyncio.TimerHandle | None = None

    def note(self, reason: Refusal) -> None:
        if self._timer is None:
            log.warning(
                "http listener refusing connections",
                extra={"listen": self._listen, "reason": reason},
            )
            self._timer = self._loop.call_later(self._every_s, self._report)
        self._recent[reason] += 1

    def _report(self) -> None:
        if self._recent:
            counts = dict(self._recent)
            log.warning(
                "http listener still refusing connections",
                extra={"listen": self._listen, "refused": counts, "in_s": self._every_s},
            )
            self._total += self._recent
            self._recent.clear()
            self._timer = self._loop.call_later(self._every_s, self._report)
            return
        log.warning(
            "http listener no longer refusing connections",
            extra={"listen": self._listen, "refused": dict(self._total)},
        )
        self._total.clear()
        self._timer = None

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class Held(Protocol):
    """A connection as the guard sees it: it can be cut, with the reason counted."""

    def cut(self, reason: Refusal | None) -> None: ...


class ConnectionGuard:
    """The caps of one listener. `admit` each new connection (None: held; else the reason it
    is refused, already counted); `release` it once closed. `waiting`/`busy` say whether it
    waits for a request head (and so may be evicted, oldest first)."""

    def __init__(
        self, cap: int, per_peer: int, metrics: ListenerMetrics, refusals: RefusalLog
    ) -> None:
        self.cap = cap
        self._per_peer = per_peer
        self._metrics = metrics
        self._refusals = refusals
        self._held: dict[Held, str] = {}  # connection -> peer IP
        self._peers: Tally[str] = Tally()
        self._waiting: OrderedDict[Held, None] = OrderedDict()

    @property
    def held(self) -> int:
        return len(self._held)

    def admit(self, connection: Held, peer: str) -> Refusal | None:
        if self._peers[peer] >= self._per_peer:
            self.count("peer_limit")
            return "peer_limit"
        if len(self._held) >= self.cap:
            if not self._waiting:
                self.count("total_limit")
                return "total_limit"
            oldest, _ = self._waiting.popitem(last=False)
            self.release(oldest)
            oldest.cut("evicted")
        self._held[connection] = peer
        self._peers[peer] += 1
        self._metrics.open.set(len(self._held))
        return None

    def release(self, connection: Held) -> None:
        """Forget a closed (or closing) connection; a second call does nothing."""
        self._waiting.pop(connection, None)
        peer = self._held.pop(connection, None)
        if peer is None:
            return
        self._peers[peer] -= 1
        if self._peers[peer] <= 0:
            del self._peers[peer]
        self._metrics.open.set(len(self._held))

    def waiting(self, connection: Held) -> None:
        if connection in self._held:
            self._waiting[connection] = None
            self._waiting.move_to_end(connection)

    def busy(self, connection: Held) -> None:
        self._waiting.pop(connection, None)

    def count(self, reason: Refusal) -> None:
        self._metrics.refused.labels(reason).inc()
        self._refusals.note(reason)


ExceptionHandler = Callable[[asyncio.AbstractEventLoop, dict[str, Any]], object]


class AcceptErrors:
    """The loop's exception handler while installed: accept() out of descriptors is counted
    (`accept_failed`) and logged through the guard's rate-limited log, never with a traceback;
    everything else goes to the handler that was there before (or the loop's default)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, guard: ConnectionGuard) -> None:
        self._loop = loop
        self._guard = guard
        self._previous: ExceptionHandler | None = None

    def install(self) -> None:
        self._previous = self._loop.get_exception_handler()
        self._loop.set_exception_handler(self._handle)

    def uninstall(self) -> None:
        # Only if nobody installed another meanwhile: theirs chains to ours, keep it whole.
        if self._loop.get_exception_handler() == self._handle:
            self._loop.set_exception_handler(self._previous)

    def _handle(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if context.get("message") == ACCEPT_OUT_OF_RESOURCES:
            self._guard.count("accept_failed")
        elif self._previous is not None:
            self._previous(loop, context)
        else:
            loop.default_exception_handler(context)


@dataclass(frozen=True)
class Guarding:
    """What one listener holds its connections with: the caps (`guard`), the rate-limited log
    of refusals (its timer stopped by `refusals.close()`) and the accept-error handler (not
    installed yet: `accept_errors.install()` once bound)."""

    guard: ConnectionGuard
    refusals: RefusalLog
    accept_errors: AcceptErrors


def guarding(listen: str, limits: ListenerLimits, registry: CollectorRegistry | None) -> Guarding:
    """The guard of a listener on `listen` within `limits` (the cap kept under this process's
    soft RLIMIT_NOFILE), counting on `registry` (None: one of its own). Call in the loop."""
    loop = asyncio.get_running_loop()
    refusals = RefusalLog(listen, loop)
    guard = ConnectionGuard(
        limits.connection_cap(nofile_soft()),
        limits.max_per_peer,
        ListenerMetrics(registry or CollectorRegistry()),
        refusals,
    )
    return Guarding(guard, refusals, AcceptErrors(loop, guard))
