"""Problem documents (RFC 9457): how every HTTP error of this service is answered.

The controller's API and its listener (http_protocol.py) answer errors with it. The body is
problem_body.py's, which an agent's own listener (agent/listener.py) uses without aiohttp, so
both processes answer errors the same way.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from egresswatch.problem_body import PROBLEM, problem_document

__all__ = ["PROBLEM", "problem"]


def problem(status: int, title: str, detail: str, **fields: Any) -> web.Response:
    """An `application/problem+json` answer: `status`, `title` (the HTTP phrase), `detail`
    (what was wrong, for a person) and any extension members in `fields`."""
    text = problem_document(status, title, detail, **fields).decode()
    return web.Response(status=status, text=text, content_type=PROBLEM)
