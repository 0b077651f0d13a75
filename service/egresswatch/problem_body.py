"""The body of a problem document (RFC 9457), apart from any HTTP library.

problems.py answers the controller's errors with it through aiohttp; an agent, which loads no
aiohttp (docs/performance.md, "An agent's footprint"), answers its own with it
(agent/listener.py).
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["PROBLEM", "problem_document"]

PROBLEM = "application/problem+json"


def problem_document(status: int, title: str, detail: str, **fields: Any) -> bytes:
    """An `application/problem+json` body: `status`, `title` (the HTTP phrase), `detail`
    (what was wrong, for a person) and any extension members in `fields`."""
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail, **fields}
    return json.dumps(body).encode()
