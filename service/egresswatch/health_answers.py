"""What /healthz, /readyz and /metrics answer, apart from any HTTP library.

The controller serves them with aiohttp (health.py), an agent with its own small listener
(agent/health.py, agent/listener.py): both build their answers here, so they say the same.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence

__all__ = [
    "HEALTHY",
    "METRIC_NAME",
    "NAME_FILTER",
    "Readiness",
    "bad_metric_names",
    "readiness_answer",
]

Readiness = Callable[[], Mapping[str, bool]]
NAME_FILTER = "name[]"
METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")  # Prometheus' data model
HEALTHY: dict[str, object] = {"status": "ok"}


def readiness_answer(
    checks: Mapping[str, bool], reasons: Mapping[str, str]
) -> tuple[int, dict[str, object]]:
    """/readyz's status and body: 200 when every check is true, else 503; `reasons` (a
    failing probe's why, by name) only when there are some."""
    ready = all(checks.values())
    body: dict[str, object] = {"status": "ready" if ready else "not ready", "checks": dict(checks)}
    if reasons:
        body["reasons"] = dict(reasons)
    return (200 if ready else 503), body


def bad_metric_names(names: Sequence[str]) -> str | None:
    """Why the `name[]=` values of a scrape cannot be used (naming the parameter), or None."""
    for name in names:
        if METRIC_NAME.fullmatch(name) is None:
            return f"{NAME_FILTER}: {name!r} is not a metric name (expected {METRIC_NAME.pattern})"
    return None
