"""The TokenReview call (authentication.k8s.io/v1, `api_calls.TOKEN_REVIEWS`, create).

`review_token` asks the API server whether a token is valid for the audience `egresswatch`;
it answers a `ReviewedToken` (kube/identity.py), or raises `ReviewUnavailable` when the API
server cannot say (away, slow, or refusing the call itself): the caller answers 503 then,
never 403, because the token may well be good. The token is sent in the request body only
and never logged or put in an exception's message.
"""

from __future__ import annotations

from typing import Any

import aiohttp
from kubernetes.aio import client
from kubernetes.aio.client.exceptions import ApiException

from egresswatch.kube.api_calls import TOKEN_REVIEWS
from egresswatch.kube.identity import AUDIENCE, ReviewedToken, ReviewUnavailable, reviewed

__all__ = ["ReviewUnavailable", "review_token"]

REVIEW_TIMEOUT_S = 5.0  # an agent's request waits on it: an API server slower than this is away


async def review_token(
    api: client.ApiClient,
    token: str,
    *,
    audience: str = AUDIENCE,
    timeout_s: float = REVIEW_TIMEOUT_S,
) -> ReviewedToken:
    """The API server's verdict on `token` for `audience`; ReviewUnavailable when it gives
    none (connection failure, timeout, an answer other than 201/200, or a body not JSON)."""
    body = {
        "apiVersion": f"{TOKEN_REVIEWS.group}/{TOKEN_REVIEWS.version}",
        "kind": TOKEN_REVIEWS.kind,
        "spec": {"token": token, "audiences": [audience]},
    }
    try:
        answer = await _post(api, body, timeout_s)
    except (aiohttp.ClientError, ApiException, TimeoutError, ValueError) as exc:
        raise ReviewUnavailable(f"the TokenReview failed: {type(exc).__name__}") from None
    return reviewed(answer, audience=audience)


async def _post(api: client.ApiClient, body: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    method, url, headers, serialized, post = await api.param_serialize(
        method="POST",
        resource_path=TOKEN_REVIEWS.path(),
        header_params={"Accept": "application/json", "Content-Type": "application/json"},
        body=body,
        auth_settings=["BearerToken"],
    )
    rest = await api.call_api(
        method,
        url,
        headers,
        serialized,
        post,
        _request_timeout=aiohttp.ClientTimeout(total=timeout_s),
    )
    response: aiohttp.ClientResponse = rest.response
    try:
        if response.status not in (200, 201):
            raise ReviewUnavailable(f"the TokenReview was answered HTTP {response.status}")
        answer: dict[str, Any] = await response.json(content_type=None)
        if not isinstance(answer, dict):
            raise ValueError("not a JSON object")
        return answer
    finally:
        response.release()
