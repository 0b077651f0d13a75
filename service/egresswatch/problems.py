"""Problem documents (RFC 9457): how every HTTP error of this service is answered.

A neutral module: the controller's API and the listener that both processes share
(http_protocol.py) answer errors the same way, and the agent must not import the controller.
The body is problem_body.py's, which an agent's own listener uses without aiohttp.
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
