"""Following the controller's plan (`GET /api/v1/plan?source=`, egresswatch/plan.py).

The controller decides the targets and how to probe them (interval, timeouts, expected status,
method, pinned IPs, traceroute, the upstream resolver, the proxy's address). The agent keeps
what only it can know or must keep: its identity, its resolv.conf, its CA bundle and its proxy
credentials (agent/checklists.py, LocalSettings); the controller never sends a secret.

:class:`PlanFollower` fetches the plan until the controller answers (backoff, logged), then
again every `refresh_s`, and hands each plan that asks for other rounds than the last to
`on_plan`. The retries wait as egresswatch/backoff.py says: jittered, so that a thousand agents
do not return to a restarted controller in lockstep. A plan that cannot be fetched or used
is logged, and the last good one stays.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

from egresswatch.agent.http_client import ControllerClient, HttpError
from egresswatch.backoff import Backoff, parse_retry_after
from egresswatch.plan import Plan
from egresswatch.wire import WireError, read

__all__ = ["PLAN_PATH", "PlanError", "PlanFollower", "parse_plan"]

log = logging.getLogger(__name__)

PLAN_PATH = "/api/v1/plan"
TASK_NAME = "egresswatch-plan"
_PLAN_MAX = 16 * 1024 * 1024  # bytes; 10,000 targets are about 5 MB


class PlanError(ValueError):
    """A plan that cannot be fetched or used; the message says why. `retry_after_s`: what
    the controller's Retry-After asked for, if it did."""

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


def parse_plan(document: Any) -> Plan:
    """The plan in a decoded JSON document; PlanError names the field when it is not usable
    (the first problem found; wire.py reads it, without pydantic)."""
    try:
        return read(Plan, document)
    except WireError as exc:
        where = exc.field or "plan"
        raise PlanError(f"the controller's plan is not usable: {where}: {exc.problem}") from None


class PlanFollower:
    """Keeps the agent's plan current; see the module docstring.

    `on_plan(plan)` is called on the loop for the first plan and for every plan that asks
    for other rounds than the one before; an exception from it is logged and the plan counts
    as applied. `client` (its own keep-alive connection to the controller) is the caller's
    and is not closed here. `ready` is set once a first plan was applied.
    """

    def __init__(
        self,
        client: ControllerClient,
        *,
        source: str,
        token: Callable[[], str | None],
        on_plan: Callable[[Plan], None],
        refresh_s: float = 30.0,
        backoff: Backoff | None = None,
        request_timeout_s: float = 10.0,
    ) -> None:
        self._url = client.url(PLAN_PATH)
        self._source = source
        self._client = client
        self._token = token
        self._on_plan = on_plan
        self._refresh_s = refresh_s
        self._backoff = backoff or Backoff()
        self._timeout_s = request_timeout_s
        self._task: asyncio.Task[None] | None = None
        self.current: Plan | None = None
        self.ready = asyncio.Event()

    def start(self) -> None:
        if self._task is not None:
            raise RuntimeError("the plan follower was already started")
        self._task = asyncio.get_running_loop().create_task(self._follow(), name=TASK_NAME)

    async def stop(self) -> None:
        """Stop fetching (cancels a fetch in progress). Idempotent."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def fetch(self) -> Plan:
        """The controller's plan for this source now; PlanError says why not."""
        headers = {"Accept": "application/json"}
        token = self._token()
        if token:  # the controller serves a plan to the agents' token only
            headers["Authorization"] = f"Bearer {token}"
        try:
            # The whole body, read to its end (not what has arrived so far: a plan of a few
            # hundred targets, past 64 KiB, once came cut short and was "not JSON").
            answer = await self._client.request(
                "GET",
                PLAN_PATH,
                query={"source": self._source},
                headers=headers,
                timeout_s=self._timeout_s,
                max_body=_PLAN_MAX,
            )
        except (HttpError, TimeoutError, OSError) as exc:
            raise PlanError(
                f"cannot reach the controller at {self._url}: {_describe(exc)}"
            ) from None
        if answer.truncated:
            raise PlanError(f"GET {self._url} answered more than {_PLAN_MAX} bytes")
        if answer.status != 200:
            raise PlanError(
                f"GET {self._url} answered {answer.status}: {_detail(answer.body)}",
                parse_retry_after(answer.headers.get("Retry-After")),
            )
        try:
            document = json.loads(answer.body)
        except ValueError:
            raise PlanError(f"GET {self._url} answered with something that is not JSON") from None
        return parse_plan(document)

    async def _follow(self) -> None:
        """The first plan, retried until it comes, then a refresh every `refresh_s`."""
        attempt = 0
        while self.current is None:
            try:
                self._apply(await self.fetch())
            except PlanError as exc:
                delay = self._backoff.delay_s(attempt, exc.retry_after_s)
                attempt += 1
                log.warning(
                    "no plan yet: retrying",
                    extra={"problem": str(exc), "attempt": attempt, "in_s": delay},
                )
                await asyncio.sleep(delay)
        while True:
            await asyncio.sleep(self._refresh_s)
            try:
                self._apply(await self.fetch())
            except PlanError as exc:
                log.warning("plan not refreshed: the last one stays", extra={"problem": str(exc)})

    def _apply(self, plan: Plan) -> None:
        if plan.same_work(self.current):
            return
        first = self.current is None
        self.current = plan
        try:
            self._on_plan(plan)
        except Exception:  # a bug applying one plan must not stop the next ones
            log.exception("applying the plan failed")
        self.ready.set()
        log.info(
            "plan received" if first else "plan changed",
            extra={"targets": [t.name for t in plan.targets]},
        )


def _detail(body: bytes) -> str:
    """The problem document's detail, or the start of the body."""
    try:
        document = json.loads(body)
    except ValueError:
        return body[:200].decode(errors="replace")
    if isinstance(document, Mapping) and isinstance(document.get("detail"), str):
        return str(document["detail"])[:500]
    return body[:200].decode(errors="replace")


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
