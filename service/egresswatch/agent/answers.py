"""How the agent reads the controller's answer to a batch (agent/sink.py acts on it).

2xx: stored; 408, 429 and 5xx: retry (``Retry-After`` read); 422: the rounds it names are of
targets the controller does not know; 400 and 413: refused; anything else (401, 403, a wrong
URL): wait and retry slowly.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum

from egresswatch.backoff import parse_retry_after

__all__ = ["ANSWER_MAX", "Kind", "Outcome", "classify"]

ANSWER_MAX = 64 * 1024  # bytes of an answer read: enough for any problem document
_ROUND_INDEX = re.compile(r"^rounds\[(\d+)\]")


class Kind(Enum):
    OK = "ok"
    RETRY = "retry"  # the controller is away or busy: same batch, backoff
    WAIT = "wait"  # the controller refuses us (token, URL): same batch, slowly
    UNKNOWN_TARGETS = "unknown_targets"  # 422
    REFUSED = "refused"  # 400, 413


@dataclass(frozen=True)
class Outcome:
    kind: Kind
    what: str  # the status or the error's class, for logs
    detail: str = ""  # the problem document's detail, for logs
    stored: int = 0
    duplicate: bool = False
    retry_after_s: float | None = None
    rounds: frozenset[int] = frozenset()  # the rounds a 422 names


def classify(status: int, answer: bytes, headers: Mapping[str, str]) -> Outcome:
    what = str(status)
    if 200 <= status < 300:
        stored, duplicate = _stored(answer)
        return Outcome(Kind.OK, what, stored=stored, duplicate=duplicate)
    detail = _detail(answer)
    if status in (408, 429) or status >= 500:
        return Outcome(
            Kind.RETRY, what, detail, retry_after_s=parse_retry_after(headers.get("Retry-After"))
        )
    if status == 422:
        return Outcome(Kind.UNKNOWN_TARGETS, what, detail, rounds=_named_rounds(answer))
    if status in (400, 413):
        return Outcome(Kind.REFUSED, what, detail)
    return Outcome(Kind.WAIT, what, detail)


def _detail(answer: bytes) -> str:
    """A problem document's detail (what the controller says was wrong), or the answer's start."""
    try:
        document = json.loads(answer)
    except ValueError:
        return answer[:200].decode(errors="replace")
    detail = document.get("detail") if isinstance(document, dict) else None
    return detail[:500] if isinstance(detail, str) else answer[:200].decode(errors="replace")


def _stored(answer: bytes) -> tuple[int, bool]:
    try:
        document = json.loads(answer)
        stored, duplicate = document["stored"], document["duplicate"]
    except (ValueError, TypeError, KeyError):
        # A 2xx means the controller has the batch; a strange body does not change that.
        return 0, False
    return (stored if isinstance(stored, int) else 0), duplicate is True


def _named_rounds(answer: bytes) -> frozenset[int]:
    """The round indexes a 422 problem document names in `invalid_params` (rounds[i].target)."""
    try:
        params = json.loads(answer).get("invalid_params", [])
        names = [p.get("name", "") for p in params if isinstance(p, dict)]
    except (ValueError, AttributeError):
        return frozenset()
    found = (_ROUND_INDEX.match(n) for n in names if isinstance(n, str))
    return frozenset(int(m.group(1)) for m in found if m)
