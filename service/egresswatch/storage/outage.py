"""A database outage, said plainly: which errors mean "the database is away", one log line when
an outage starts, a count while it lasts, one when it ends; and a cheap readiness probe.

`is_unavailable(error)` tells an outage (refused or lost connections, timeouts, a locked or
unreadable SQLite file) from a bug or bad data. `Outage` is shared by everything in a process
that talks to the database (the API, the round writer, detection's writes, the readiness
probe): the first failure logs a warning, later ones are only counted (a line every
`report_every_s` says how many), and the first success after it logs an info line with the
count and the duration. No traceback per failure: an outage is not a bug.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from sqlalchemy import exc, text
from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = ["DatabaseProbe", "Outage", "describe", "is_unavailable"]

log = logging.getLogger(__name__)

REPORT_EVERY_S = 60.0
PROBE_TIMEOUT_S = 2.0
PROBE_CACHE_S = 2.0

# asyncpg's errors that mean the link, not the statement, failed (checked by name: asyncpg is
# not imported where only SQLite is used).
_LINK_ERRORS = frozenset(
    {
        "ConnectionDoesNotExistError",
        "ConnectionFailureError",
        "ConnectionRejectionError",
        "CannotConnectNowError",
        "TooManyConnectionsError",
        "AdminShutdownError",
        "CrashShutdownError",
        "InterfaceError",
        "InternalClientError",
    }
)


def is_unavailable(error: BaseException) -> bool:
    """True when `error` says the database could not be reached or used, not that the query or
    its data were wrong: retrying later can succeed."""
    for cause in _chain(error):
        if isinstance(cause, exc.DBAPIError) and cause.connection_invalidated:
            return True
        if isinstance(
            cause,
            exc.OperationalError
            | exc.InterfaceError
            | exc.DisconnectionError
            | exc.TimeoutError
            | OSError
            | TimeoutError,
        ):
            return True
        if type(cause).__module__.startswith("asyncpg") and type(cause).__name__ in _LINK_ERRORS:
            return True
    return False


def describe(error: BaseException) -> str:
    """A short name for the failure, safe to log and to show (no message text: it may quote
    the query or the server's address)."""
    if isinstance(error, TimeoutError):
        return "no answer in time"
    original = getattr(error, "orig", None)
    return type(original if isinstance(original, BaseException) else error).__name__


def _chain(error: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and len(seen) < 8:
        seen.append(current)
        original = getattr(current, "orig", None)
        nxt = original if isinstance(original, BaseException) else None
        current = nxt or current.__cause__ or current.__context__
    return seen


class Outage:
    """Whether the database is away now, and the log lines that say so (see the module)."""

    def __init__(
        self,
        *,
        logger: logging.Logger = log,
        clock: Callable[[], float] = time.monotonic,
        report_every_s: float = REPORT_EVERY_S,
    ) -> None:
        self._log = logger
        self._clock = clock
        self._report_every_s = report_every_s
        self._since: float | None = None
        self._reported_at = 0.0
        self._failures = 0
        self._reason: str | None = None
        self.outages = 0  # outages begun since the process started

    @property
    def down(self) -> bool:
        return self._since is not None

    @property
    def reason(self) -> str | None:
        """Why the database is away ("database unreachable: ..."), None while it is not."""
        return self._reason

    def failed(self, error: BaseException, where: str) -> None:
        """A database operation failed with an outage error (`is_unavailable`); `where` names
        the part that tried (`api`, `writer`, `detection`, `readiness`)."""
        now = self._clock()
        self._failures += 1
        if self._since is None:
            self._since = self._reported_at = now
            self._reason = f"database unreachable: {describe(error)}"
            self.outages += 1
            self._log.warning(
                "database unreachable (%s, first seen by %s): the API answers 503 and rounds "
                "are kept in memory until it is back",
                describe(error),
                where,
            )
        elif now - self._reported_at >= self._report_every_s:
            self._reported_at = now
            self._log.warning(
                "database still unreachable after %.0fs: %d operations failed so far",
                now - self._since,
                self._failures,
            )

    def recovered(self) -> None:
        """A database operation worked: ends the outage, if one was going on."""
        if self._since is None:
            return
        lasted = self._clock() - self._since
        self._log.info(
            "database is back after %.1fs: %d operations failed meanwhile",
            lasted,
            self._failures,
        )
        self._since, self._reason, self._failures = None, None, 0


class DatabaseProbe:
    """`await probe()`: None when the database answers `SELECT 1` within `timeout_s`, else the
    reason. The answer is kept for `cache_s`, and concurrent callers share one probe, so a
    busy /readyz costs one query every few seconds at most."""

    def __init__(
        self,
        engine: Callable[[], AsyncEngine],
        *,
        outage: Outage,
        timeout_s: float = PROBE_TIMEOUT_S,
        cache_s: float = PROBE_CACHE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._engine = engine
        self._outage = outage
        self._timeout_s = timeout_s
        self._cache_s = cache_s
        self._clock = clock
        self._lock = asyncio.Lock()
        self._checked_at: float | None = None
        self._reason: str | None = None

    async def __call__(self) -> str | None:
        async with self._lock:
            now = self._clock()
            if self._checked_at is None or now - self._checked_at >= self._cache_s:
                self._reason = await self._check()
                self._checked_at = self._clock()
            return self._reason

    async def _check(self) -> str | None:
        try:
            async with asyncio.timeout(self._timeout_s):
                async with self._engine().connect() as connection:
                    await connection.execute(text("SELECT 1"))
        except Exception as error:
            if not is_unavailable(error):  # not an outage, but not ready either
                self._log_unexpected(error)
                return f"database check failed: {describe(error)}"
            self._outage.failed(error, "readiness")
            return self._outage.reason or f"database unreachable: {describe(error)}"
        self._outage.recovered()
        return None

    def _log_unexpected(self, error: BaseException) -> None:
        if self._reason is None:  # once per change to not ready, not once per probe
            log.warning("database readiness check failed", exc_info=error)
