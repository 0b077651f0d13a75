"""The fake API server's TokenReviews (`POST /apis/authentication.k8s.io/v1/tokenreviews`).

A test issues tokens (`issue`: a service account, the pod it is bound to, the node, the
audience, an expiry) and the fake answers reviews of them the way kube-apiserver does for a
projected, pod-bound service-account token: `authenticated: true` with
`user.username = system:serviceaccount:NS:SA`, `user.extra` holding the pod's name and uid and
the node's name, and the audiences it was issued for that the review asked about. A token it
never issued, a revoked or expired one, and one issued for other audiences than the review
asks: `authenticated: false` with an error, as the real server answers (HTTP 201 either way).

Tokens look like JWTs (header.claims.signature, base64url; the claims hold `exp` and `aud`)
so the controller can read their expiry; nothing checks the signature but this registry.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
import uuid
from dataclasses import dataclass
from typing import Any

Obj = dict[str, Any]
EXTRA = "authentication.kubernetes.io/"


@dataclass(frozen=True)
class Issued:
    username: str
    extra: dict[str, list[str]]
    audiences: tuple[str, ...]
    expires: float


class TokenReviews:
    """The tokens this fake API server issued, and the reviews it answered."""

    def __init__(self) -> None:
        self._issued: dict[str, Issued] = {}
        self.reviews = 0  # TokenReviews answered (what a cache should keep low)
        self.failing = False  # answer 500 to every review (an API server in trouble)

    def issue(
        self,
        namespace: str,
        service_account: str,
        *,
        pod: str | None = None,
        node: str | None = None,
        audience: str = "egresswatch",
        expires_in_s: float = 3600.0,
    ) -> str:
        """A new token for `namespace`/`service_account`, bound to `pod` (and `node`, as
        Kubernetes 1.32+ says) when given."""
        expires = time.time() + expires_in_s
        extra: dict[str, list[str]] = {}
        if pod is not None:
            extra[EXTRA + "pod-name"] = [pod]
            extra[EXTRA + "pod-uid"] = [str(uuid.uuid4())]
        if node is not None:
            extra[EXTRA + "node-name"] = [node]
        claims = {"aud": [audience], "exp": int(expires), "sub": service_account}
        token = ".".join(
            _b64(part) for part in ({"alg": "RS256"}, claims, {"sig": secrets.token_hex(16)})
        )
        username = f"system:serviceaccount:{namespace}:{service_account}"
        self._issued[token] = Issued(username, extra, (audience,), expires)
        return token

    def revoke(self, token: str) -> None:
        self._issued.pop(token, None)

    def answer(self, review: Obj) -> Obj:
        """The TokenReview `review` with its status filled in."""
        self.reviews += 1
        spec = review.get("spec") or {}
        asked = list(spec.get("audiences") or [])
        issued = self._issued.get(str(spec.get("token", "")))
        status: Obj
        if issued is None or issued.expires <= time.time():
            status = {"authenticated": False, "error": "[invalid bearer token]"}
        elif asked and not set(asked) & set(issued.audiences):
            status = {"authenticated": False, "error": "[token audiences do not match]"}
        else:
            user = {
                "username": issued.username,
                "uid": str(uuid.uuid5(uuid.NAMESPACE_URL, issued.username)),
                "groups": ["system:serviceaccounts", "system:authenticated"],
                "extra": issued.extra,
            }
            audiences = [a for a in asked if a in issued.audiences] or list(issued.audiences)
            status = {"authenticated": True, "user": user, "audiences": audiences}
        return {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "metadata": {"creationTimestamp": None},
            "spec": spec,
            "status": status,
        }


def _b64(part: Obj) -> str:
    return base64.urlsafe_b64encode(json.dumps(part).encode()).decode().rstrip("=")
