"""Agents known by their projected service-account tokens, each good for one source only.

With `kubernetes.enabled`, a bearer token that is not one of the configured tokens is sent to
the API server in a TokenReview (audience `egresswatch`; wiring.py connects the call). An
authenticated review names the service account and the pod the token is bound to; that
gives the one source the agent may post results and fetch a plan for:

- the node agents' service account (`kubernetes.node_agent_service_account`, the DaemonSet's
  on the host network): the **node source** of the node the token is bound to
  (`authentication.kubernetes.io/node-name`, Kubernetes 1.32+), when that node is designated;
- any other service account: the **pod source** whose replicas include the token's pod (in
  the service account's namespace), as discovery sees the designated agent pods.

Answers: 403 when the review does not authenticate the token, or the token stands for no
designated source; 503 with Retry-After when the API server gives no verdict or discovery
has not listed the cluster yet (the token may be good: the agent keeps its rounds).

Reviews are cached by the token's SHA-256 (never the token itself) for `ttl_s`, never past
the token's own expiry, in at most `max_entries` entries; the source is looked up again on
each request (the pod may have gone). A token bound to a deleted pod is refused by the API
server itself (bound tokens die with their pod), at the latest when the cached review ends.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from egresswatch.controller.api.query import ApiError
from egresswatch.controller.designated import Designated
from egresswatch.kube.identity import ReviewedToken, ReviewUnavailable, token_expiry
from egresswatch.model import SourceKind

__all__ = ["AgentIdentities", "Reviewer"]

Reviewer = Callable[[str], Awaitable[ReviewedToken]]  # a token -> the API server's verdict
RETRY_AFTER_S = 5  # the API server or discovery away: what the agent is told to wait


@dataclass(frozen=True)
class _Cached:
    review: ReviewedToken
    until: float  # clock time after which the review is asked again


class AgentIdentities:
    """token -> the one source it may act for, by TokenReview (see the module's docstring)."""

    def __init__(
        self,
        review: Reviewer,
        designated: Designated,
        *,
        node_agent_service_account: str | None = None,
        clock: Callable[[], float] = time.time,
        ttl_s: float = 60.0,
        max_entries: int = 1024,
    ) -> None:
        self._review = review
        self._designated = designated
        self._node_agents = node_agent_service_account
        self._clock = clock
        self._ttl_s = ttl_s
        self._max_entries = max_entries
        self._cache: OrderedDict[bytes, _Cached] = OrderedDict()
        self.reviews = 0  # TokenReviews asked of the API server (the cache's effect)

    async def source_of(self, token: str) -> str:
        """The source `token` may act for; ApiError 403 (refused) or 503 (no verdict yet)."""
        review = await self._reviewed(token)
        if not review.authenticated:
            raise _forbidden(
                "the token is neither the agents' token nor accepted by the API server "
                f"({review.error})"
            )
        account = review.service_account
        if account is None:
            raise _forbidden("the token is not a service account's: use the agents' token")
        if not self._designated.synced():
            raise _unavailable("the designated sources are not known yet (discovery is listing)")
        if self._node_agents is not None and "/".join(account) == self._node_agents:
            return self._node_source(review)
        return self._pod_source(account[0], review)

    # -- the review, cached --

    async def _reviewed(self, token: str) -> ReviewedToken:
        key = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        now = self._clock()
        cached = self._cache.get(key)
        if cached is not None and now < cached.until:
            return cached.review
        try:
            self.reviews += 1
            review = await self._review(token)
        except ReviewUnavailable as exc:
            raise _unavailable(f"the token cannot be checked now: {exc}") from None
        until = now + self._ttl_s
        expiry = token_expiry(token)
        if expiry is not None:
            until = min(until, expiry)
        self._cache[key] = _Cached(review, until)
        self._cache.move_to_end(key)
        while len(self._cache) > self._max_entries:
            self._cache.popitem(last=False)
        return review

    # -- the source it stands for --

    def _node_source(self, review: ReviewedToken) -> str:
        node = review.node_name
        if node is None:
            raise _forbidden(
                "the node agent's token names no node (bound tokens carry it from "
                "Kubernetes 1.32): use the agents' token"
            )
        source = self._designated.expected().get(node)
        if source is None or source.kind is not SourceKind.NODE:
            raise _forbidden(f"node {node!r} is not a designated node source")
        return source.name

    def _pod_source(self, namespace: str, review: ReviewedToken) -> str:
        pod = review.pod_name
        if pod is None:
            raise _forbidden("the token is bound to no pod (not a projected token)")
        for source in self._designated.expected().values():
            workload = source.workload
            if source.kind is not SourceKind.POD or workload is None:
                continue
            if workload.namespace == namespace and any(p.name == pod for p in source.pods):
                return source.name
        raise _forbidden(f"pod {namespace}/{pod} is not a designated agent pod")


def _forbidden(detail: str) -> ApiError:
    return ApiError(403, "Forbidden", detail)


def _unavailable(detail: str) -> ApiError:
    return ApiError(503, "Service Unavailable", detail, headers={"Retry-After": str(RETRY_AFTER_S)})
