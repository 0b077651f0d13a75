"""Structured logs: one JSON object per line, one line per event.

`log.info("round stored", extra={"target": name})` becomes
`{"ts": "...Z", "level": "info", "logger": "...", "event": "round stored", "target": "..."}`.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TextIO

# Attributes every LogRecord has; anything else on a record came from `extra=` and is a field.
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def setup_logging(level: str, *, json_lines: bool, stream: TextIO | None = None) -> None:
    """Configure the root logger once for the process (the CLI's job, nobody else's)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    if json_lines:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # aiohttp's access log is chatty at info; its warnings still show.
    logging.getLogger("aiohttp.access").setLevel(max(logging.WARNING, root.level))


class Sparse:
    """One warning for a kind of event that can come in floods, at most every `every_s`: the
    first at once, then a line carrying how many happened since the last line. Under overload a
    line per cut or skipped round added to the very load it reported."""

    def __init__(
        self,
        logger: logging.Logger,
        event: str,
        *,
        every_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._event = event
        self._every_s = every_s
        self._clock = clock
        self._last: float | None = None
        self._unlogged = 0

    def note(self, **fields: Any) -> None:
        self._unlogged += 1
        now = self._clock()
        if self._last is not None and now - self._last < self._every_s:
            return
        self._logger.warning(self._event, extra={**fields, "count": self._unlogged})
        self._last, self._unlogged = now, 0
