"""Problem documents (RFC 9457): how every HTTP error of this service is answered.

A neutral module: the controller's API and the listener that both processes share
(http_protocol.py) answer errors the same way, and the agent must not import the controller.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

__all__ = ["PROBLEM", "problem"]

PROBLEM = "application/problem+json"


def problem(status: int, title: str, detail: str, **fields: Any) -> web.Response:
    """An `application/problem+json` answer: `status`, `title` (the HTTP phrase), `detail`
    (what was wrong, for a person) and any extension members in `fields`."""
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail, **fields}
    return web.Response(status=status, text=json.dumps(body), content_type=PROBLEM)
