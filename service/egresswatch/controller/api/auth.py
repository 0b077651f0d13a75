"""Who may do what: bearer tokens, each giving rights, checked in constant time.

Three tokens, each from an environment variable (a Kubernetes Secret), each optional:

- `AGENT`: ingest (`POST /api/v1/results`) and the agents' plan (`GET /api/v1/plan`); given by
  the agents' token; closed (403) when none is configured.
- `RUN`: on-demand rounds (`POST /api/v1/targets/{target}/run`); given by the run token;
  closed (403) when none is configured.
- `READ`: `GET /api/v1/*` but the plan, and `/metrics`; given by the read token and the run
  token; open to anyone when no read token is configured (as before tokens existed).

The run token reads too: whoever may run a round sees its result anyway. The agents' token
does not read: an agent needs its plan, not the history. `/healthz`, `/readyz` and
`/openapi.json` are always open (they tell nothing of the targets).

Answers: 401 with `WWW-Authenticate` when no bearer token is sent; 403 when the token is not
one that gives the right, or when the right is closed (the detail says which). A token is
never logged and never echoed.

With `kubernetes.enabled`, an agent may instead present its projected service-account token:
`agent_source` checks it by TokenReview (`agent_identity.AgentIdentities`) and answers the
one source that caller may act for; ingest and the plan refuse any other (403 naming
`source`).
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from enum import StrEnum

from aiohttp import web

from egresswatch.controller.api.agent_identity import AgentIdentities
from egresswatch.controller.api.query import ApiError, InvalidParam

CHALLENGE = {"WWW-Authenticate": 'Bearer realm="egresswatch"'}


class Right(StrEnum):
    AGENT = "agent"
    RUN = "run"
    READ = "read"


_WHAT = {
    Right.AGENT: ("ingest and the agents' plan", "agent_token_env", "the agents' token"),
    Right.RUN: ("on-demand rounds", "run_token_env", "the run token"),
    Right.READ: ("reading", "read_token_env", "the read token or the run token"),
}


@dataclass(frozen=True)
class Tokens:
    """The configured tokens (None: not configured). `repr` never shows them."""

    agent: str | None = None
    read: str | None = None
    run: str | None = None

    def __repr__(self) -> str:
        shown = {name: getattr(self, name) is not None for name in ("agent", "read", "run")}
        return f"Tokens(configured={shown})"

    def giving(self, right: Right) -> list[str | None]:
        """The tokens that give `right` (None where one is not configured)."""
        if right is Right.AGENT:
            return [self.agent]
        if right is Right.RUN:
            return [self.run]
        return [self.read, self.run]

    def is_open(self, right: Right) -> bool:
        """True when `right` needs no token: reading, with no read token configured."""
        return right is Right.READ and self.read is None


def authorize(request: web.Request, right: Right, tokens: Tokens) -> None:
    """Return when the request's bearer token gives `right`; else raise the 401/403 ApiError."""
    if tokens.is_open(right):
        return
    what, setting, holders = _WHAT[right]
    accepted = [t for t in tokens.giving(right) if t is not None]
    if not accepted:
        raise ApiError(403, "Forbidden", f"{what} is closed on this controller: {setting} is unset")
    presented = _bearer(request)
    if presented is None:
        raise ApiError(
            401,
            "Unauthorized",
            f"{what} needs {holders}: send Authorization: Bearer TOKEN",
            headers=CHALLENGE,
        )
    if not _matches(presented, accepted):
        raise ApiError(403, "Forbidden", f"the token is not {holders}")


async def agent_source(
    request: web.Request, tokens: Tokens, agents: AgentIdentities | None
) -> str | None:
    """Return when the request may use the agents' right: None for the agents' token (any
    source), else the one source its projected service-account token stands for. Without
    `agents` (Kubernetes off) this is `authorize(request, Right.AGENT, tokens)`."""
    if agents is None:
        authorize(request, Right.AGENT, tokens)
        return None
    presented = _bearer(request)
    if presented is None:
        raise ApiError(
            401,
            "Unauthorized",
            "ingest and the agents' plan need the agents' token or a projected "
            "service-account token: send Authorization: Bearer TOKEN",
            headers=CHALLENGE,
        )
    if tokens.agent is not None and _matches(presented, [tokens.agent]):
        return None
    return await agents.source_of(presented)


def may_act_for(allowed: str | None, source: str) -> None:
    """Return when a caller allowed `allowed` (None: any) may act for `source`; else 403
    naming the `source` field."""
    if allowed is not None and source != allowed:
        reason = f"this agent's token is good for {allowed!r} only, not {source[:253]!r}"
        detail = f"source: {reason}"
        raise ApiError(403, "Forbidden", detail, invalid_params=[InvalidParam("source", reason)])


def _matches(presented: str, accepted: list[str]) -> bool:
    # Every accepted token is compared (no early exit), each in constant time, so the
    # answer's timing tells neither how much of a token matched nor which one.
    given = presented.encode("utf-8", "surrogatepass")
    matches = [hmac.compare_digest(given, token.encode()) for token in accepted]
    return any(matches)


def _bearer(request: web.Request) -> str | None:
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    presented = presented.strip()
    if scheme.lower() != "bearer" or not presented:
        return None
    return presented
