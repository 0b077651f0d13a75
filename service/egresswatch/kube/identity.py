"""What a TokenReview says of an agent's projected service-account token. Pure: no I/O.

An agent may present, instead of the agents' shared token, the service-account token the
kubelet projects into its pod for the audience `egresswatch`. The controller sends it to the
API server in a TokenReview (kube/tokenreview.py); an authenticated answer names the service
account (`system:serviceaccount:NAMESPACE:NAME`) and, for a projected token, the pod it is
bound to in `status.user.extra`: the pod's name and uid, and (Kubernetes 1.32+) its node.
`reviewed()` reads that answer into a `ReviewedToken`; the controller maps it to the one
source the agent may act for (controller/api/agent_identity.py).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["AUDIENCE", "ReviewUnavailable", "ReviewedToken", "reviewed", "token_expiry"]

AUDIENCE = "egresswatch"  # the audience the chart projects the agents' tokens for
POD_NAME = "authentication.kubernetes.io/pod-name"
POD_UID = "authentication.kubernetes.io/pod-uid"
NODE_NAME = "authentication.kubernetes.io/node-name"  # Kubernetes 1.32+
_SERVICE_ACCOUNT = "system:serviceaccount:"


class ReviewUnavailable(Exception):
    """The API server gave no verdict (away, slow, or refusing the call itself): the token
    may well be good, so the caller answers 503, never 403. The message never holds the
    token."""


@dataclass(frozen=True)
class ReviewedToken:
    """The API server's verdict on a token. `authenticated` False: `error` says why (the API
    server's words, or ours when the audience does not match); the rest is empty."""

    authenticated: bool
    username: str = ""
    pod_name: str | None = None
    pod_uid: str | None = None
    node_name: str | None = None
    error: str = ""

    @property
    def service_account(self) -> tuple[str, str] | None:
        """(namespace, name) when the token is a service account's; else None."""
        if not self.username.startswith(_SERVICE_ACCOUNT):
            return None
        namespace, _, name = self.username[len(_SERVICE_ACCOUNT) :].partition(":")
        return (namespace, name) if namespace and name else None


def reviewed(answer: Mapping[str, Any], *, audience: str = AUDIENCE) -> ReviewedToken:
    """The `ReviewedToken` of a TokenReview answer (the whole object the API server sent).

    Authenticated only when the API server says so and the audiences it confirms include
    `audience`: a token issued for another audience is refused even by an API server that
    would echo no audiences."""
    status = answer.get("status") or {}
    if not status.get("authenticated"):
        return ReviewedToken(False, error=str(status.get("error") or "not authenticated"))
    if audience not in (status.get("audiences") or []):
        return ReviewedToken(False, error=f"the token is not for the audience {audience!r}")
    user = status.get("user") or {}
    extra = user.get("extra") or {}
    return ReviewedToken(
        True,
        username=str(user.get("username") or ""),
        pod_name=_first(extra, POD_NAME),
        pod_uid=_first(extra, POD_UID),
        node_name=_first(extra, NODE_NAME),
    )


def token_expiry(token: str) -> float | None:
    """The token's `exp` claim (epoch seconds) when it is a JWT that has one; else None.

    Read without checking the signature: it only bounds how long the controller trusts a
    review it already made, never whether the token is accepted."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload))
    except (ValueError, binascii.Error):
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    return float(exp) if isinstance(exp, int | float) and not isinstance(exp, bool) else None


def _first(extra: Mapping[str, Any], key: str) -> str | None:
    values = extra.get(key)
    if isinstance(values, list) and values and isinstance(values[0], str) and values[0]:
        return values[0]
    return None
