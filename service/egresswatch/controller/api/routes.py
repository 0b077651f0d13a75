"""The v1 HTTP API of DESIGN.md §4: its handlers, over injected dependencies.

`add_api_routes(app, deps)` adds /api/v1/* and /openapi.json (openapi.py describes every
route). Answers are JSON; failures are problem documents (`controller.api.problem`) naming
what was wrong, with `invalid_params` for bad parameters. Unknown query parameters are
refused (400), so a misspelled filter never returns unfiltered data.

Every route checks its caller's right first (auth.py: read, run, agent). While the database
is away a route that needs it answers 503 with `Retry-After` (the agents retry and keep
their rounds), and the outage is logged once (storage.Outage), not once per request.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from egresswatch.controller.api import documents as docs
from egresswatch.controller.api.agent_identity import AgentIdentities
from egresswatch.controller.api.app import problem, problem_of
from egresswatch.controller.api.auth import Right, Tokens, agent_source, authorize, may_act_for
from egresswatch.controller.api.diagnosis_document import TargetCatalog, diagnosis_document
from egresswatch.controller.api.openapi import openapi_document
from egresswatch.controller.api.plan_adapter import PlanAdapter
from egresswatch.controller.api.query import (
    ApiError,
    InvalidParam,
    Query,
    bad_request,
    not_found,
)
from egresswatch.controller.api.ratelimit import RateLimiter, retry_after
from egresswatch.controller.designated import Designated, designated_document
from egresswatch.controller.ingest.batch_body import parse_batch, read_body
from egresswatch.controller.ingest.intake import Refused
from egresswatch.kube.netpol import PolicyView
from egresswatch.model import RoundResult, SourceKind
from egresswatch.plan import Plan
from egresswatch.plan_config import plan_from_settings, public_proxy_url
from egresswatch.report import round_document
from egresswatch.settings import Settings
from egresswatch.storage import (
    BadCursor,
    ClusterChanges,
    History,
    Outage,
    Store,
    is_unavailable,
)

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

TIMELINE_DEFAULT = timedelta(hours=1)
CURSOR_MAX = 1024
ID_MAX = 128
OUTAGE_RETRY_AFTER_S = 5  # what a client is told to wait while the database is away
# The request's key for the one source its agent may act for (None: the agents' token, any).
_AGENT_SOURCE = web.RequestKey[str | None]("egresswatch.agent_source")


@dataclass(frozen=True)
class ApiDeps:
    """What the API needs, made and owned by wiring.py."""

    store: Store
    history: History
    settings: Callable[[], Settings]  # the current config (reloads swap it)
    # (source, batch_id, rounds, source kind, source node) -> rounds stored (0 for a repeated
    # batch); raises Refused (controller.ingest.Ingest.accept)
    ingest: Callable[
        [str, str, Sequence[RoundResult], SourceKind | None, str | None], Awaitable[int]
    ]
    # an on-demand round of a configured target: joins one in flight, takes a round slot
    run_now: Callable[[str], Awaitable[RoundResult]]
    tokens: Tokens  # who may do what (auth.py)
    run_limit: RateLimiter  # on-demand rounds per target
    clock: Callable[[], datetime]
    outage: Outage = field(default_factory=Outage)  # shared with the writer and detection
    # The designated sources (kubernetes.enabled), and the retired ones detection forgot:
    # those the status leaves out (controller/designated.py).
    designated: Designated | None = None
    hidden: Callable[[str], bool] = field(default=lambda _: False)
    # Agents' projected service-account tokens, checked by TokenReview (kubernetes.enabled).
    agents: AgentIdentities | None = None
    policies: PolicyView | None = None  # the NetworkPolicies (kubernetes.enabled)


def add_api_routes(app: web.Application, deps: ApiDeps) -> None:
    """Add the /api/v1/* routes and /openapi.json to `app` (before it starts)."""
    api = _Api(deps)
    document = openapi_document()

    async def openapi(_: web.Request) -> web.Response:
        return web.json_response(document)

    def reading(handler: Handler) -> Handler:
        return _answering(handler, right=Right.READ, deps=deps)

    get, post = app.router.add_get, app.router.add_post
    get("/api/v1/status", reading(api.status))
    get("/api/v1/incidents", reading(api.incidents))
    get("/api/v1/incidents/{id}", reading(api.incident))
    get("/api/v1/changes", reading(api.changes))
    get("/api/v1/targets/{target}/timeline", reading(api.timeline))
    get("/api/v1/targets/{target}/diagnosis", reading(api.diagnosis))
    run = _answering(api.run, right=Right.RUN, deps=deps, database=False)
    post("/api/v1/targets/{target}/run", run)
    post("/api/v1/results", _answering(api.results, right=Right.AGENT, deps=deps))
    get("/api/v1/plan", _answering(api.plan, right=Right.AGENT, deps=deps, database=False))
    get("/openapi.json", openapi)


def _answering(handler: Handler, *, right: Right, deps: ApiDeps, database: bool = True) -> Handler:
    """The handler behind the check of `right`, with ApiError as its problem document, a
    database outage as a 503 one (logged once per outage) and any other failure as a 500 one
    (logged with its traceback; the answer says nothing of the exception). `database`: the
    handler reads or writes the database, so its success says the database is back."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            if right is Right.AGENT:
                request[_AGENT_SOURCE] = await agent_source(request, deps.tokens, deps.agents)
            else:
                authorize(request, right, deps.tokens)
            response: web.StreamResponse = await handler(request)
        except ApiError as exc:
            return problem_of(exc)
        except web.HTTPException:
            raise
        except Exception as error:
            if is_unavailable(error):
                deps.outage.failed(error, "api")
                return _unavailable()
            log.exception("API request failed", extra={"path": request.path})
            return problem(
                500, "Internal Server Error", "the controller could not answer: see its log"
            )
        if database:
            deps.outage.recovered()
        return response

    return wrapped


def _unavailable() -> web.Response:
    answer = problem(
        503,
        "Service Unavailable",
        "the database is unreachable: nothing was read or stored; try again later",
    )
    answer.headers["Retry-After"] = str(OUTAGE_RETRY_AFTER_S)
    return answer


def _json(document: Any, status: int = 200) -> web.Response:
    return web.json_response(document, status=status)


class _Api:
    def __init__(self, deps: ApiDeps) -> None:
        self.deps = deps
        self._runs: dict[str, asyncio.Task[RoundResult]] = {}
        self._status = docs.StatusDocuments()  # reuses what did not change between requests
        # The last config's plan: every agent asks every 30 s, and building 10,000 targets
        # takes a quarter of a second; a reload gives a new Settings object, so a new plan.
        self._plan: tuple[Settings, Plan] | None = None
        self._plan_adapter = PlanAdapter()
        self._cluster_changes = ClusterChanges(deps.store.engine)  # attached to incidents

    # -- reading ----------------------------------------------------------------------------

    async def status(self, request: web.Request) -> web.Response:
        Query(request.query).done()
        states, sources = await asyncio.gather(
            self.deps.history.states(), self.deps.store.sources()
        )
        hidden = self.deps.hidden
        names = [s.name for s in sources if not hidden(s.name)]
        shown = [r for r in states if not hidden(r.source)]
        extra = None
        if self.deps.designated is not None:
            known = (s.name for s in sources)
            extra = {"designated": designated_document(self.deps.designated, states, known)}
        text = self._status.json_text(self.deps.settings(), shown, names, self._now(), extra)
        return web.Response(text=text, content_type="application/json")

    async def incidents(self, request: web.Request) -> web.Response:
        q = Query(request.query)
        target, source = q.text("target"), q.text("source")
        since, until = q.time("since"), q.time("until")
        is_open, limit = q.boolean("open"), q.limit()
        cursor = q.text("cursor", max_length=CURSOR_MAX)
        q.ordered("since", "until", since, until)
        q.done()
        try:
            page = await self.deps.history.incidents(
                target=target,
                source=source,
                since=since,
                until=until,
                open=is_open,
                limit=limit,
                cursor=cursor,
            )
        except BadCursor:
            raise _bad_cursor() from None
        attached = await self._cluster_changes.of_incidents([i.id for i in page.items])
        items = [docs.incident_document(i, attached.get(i.id, ())) for i in page.items]
        return _json(docs.page_document(items, page.next_cursor))

    async def incident(self, request: web.Request) -> web.Response:
        Query(request.query).done()
        incident_id = request.match_info["id"]
        found = None
        # Ids are the controller's: short and printable. Anything else (a NUL, which
        # PostgreSQL refuses even to compare) is no incident, without asking the database.
        if len(incident_id) <= ID_MAX and incident_id.isprintable():
            found = await self.deps.history.incident(incident_id)
        if found is None:
            raise not_found(f"no incident {incident_id[:ID_MAX]!r}")
        attached = await self._cluster_changes.of_incidents([found.id])
        return _json(docs.incident_document(found, attached.get(found.id, ())))

    async def changes(self, request: web.Request) -> web.Response:
        q = Query(request.query)
        target, source, step = q.text("target"), q.text("source"), q.step()
        since, until = q.time("since"), q.time("until")
        limit, cursor = q.limit(), q.text("cursor", max_length=CURSOR_MAX)
        q.ordered("since", "until", since, until)
        q.done()
        try:
            page = await self.deps.history.changes(
                target=target,
                source=source,
                step=step,
                since=since,
                until=until,
                limit=limit,
                cursor=cursor,
            )
        except BadCursor:
            raise _bad_cursor() from None
        items = [docs.change_document(c) for c in page.items]
        return _json(docs.page_document(items, page.next_cursor))

    async def timeline(self, request: web.Request) -> web.Response:
        q = Query(request.query)
        start, end = q.time("from"), q.time("to")
        step, source = q.step(), q.text("source")
        q.ordered("from", "to", start, end)
        q.done()
        target = request.match_info["target"]
        await self._catalog(known=target)
        now = self._now()
        end = end if end is not None else (now if start is None or start < now else start)
        start = start if start is not None else end - TIMELINE_DEFAULT
        if start >= end:  # only `from` given, at or after now
            end = start + TIMELINE_DEFAULT
        timeline = await self.deps.store.timeline(target, start, end, step, now=now, source=source)
        return _json(docs.timeline_document(timeline))

    async def diagnosis(self, request: web.Request) -> web.Response:
        q = Query(request.query)
        at = q.time("at")
        q.done()
        target = request.match_info["target"]
        catalog = await self._catalog(known=target)
        settings = self.deps.settings()
        document = await diagnosis_document(
            target,
            at if at is not None else self._now(),
            catalog=catalog,
            settings=settings,
            store=self.deps.store,
            history=self.deps.history,
            policies=self.deps.policies,
        )
        return _json(document)

    async def plan(self, request: web.Request) -> web.Response:
        q = Query(request.query)
        source = q.text("source", required=True)
        q.done()
        assert source is not None
        may_act_for(request[_AGENT_SOURCE], source)
        settings = self.deps.settings()
        if self._plan is None or self._plan[0] is not settings:
            self._plan = (settings, plan_from_settings(settings, source=source))
        plan = replace(self._plan[1], source=source, generated_at=self._now().astimezone(UTC))
        return _json(self._plan_adapter.to_json(plan))

    # -- acting -----------------------------------------------------------------------------

    async def run(self, request: web.Request) -> web.Response:
        """An on-demand round of a configured target; never of anything else (no open proxy).

        Rate-limited per target (429 with Retry-After). Concurrent requests for one target
        share one round (and `run_now` joins a scheduled round in flight), and a client that
        goes away does not cut the round short (it is bounded by the target's own timeout).
        """
        Query(request.query).done()
        name = request.match_info["target"]
        settings = self.deps.settings()
        target = settings.target(name)
        if target is None:
            raise not_found(f"{name[:253]!r} is not a configured target")
        wait_s = self.deps.run_limit.take(name)
        if wait_s is not None:
            raise ApiError(
                429,
                "Too Many Requests",
                f"on-demand rounds of {name!r} are rate-limited: try again in {wait_s:.1f}s",
                headers={"Retry-After": retry_after(wait_s)},
            )
        task = self._runs.get(name)
        if task is None:
            task = asyncio.create_task(self._run_now(name), name=f"egresswatch-run-{name}")
            self._runs[name] = task
            task.add_done_callback(self._run_done)
        result = await asyncio.shield(task)
        document = round_document(
            result,
            target.endpoint,
            upstream=settings.dns.upstream,
            proxy=public_proxy_url(settings) if target.use_proxy else None,
        )
        return _json(docs.json_safe(document))

    async def results(self, request: web.Request) -> web.Response:
        """Agent ingest (the agents' token): validated, idempotent per batch_id."""
        batch = parse_batch(await read_body(request))
        may_act_for(request[_AGENT_SOURCE], batch.source)
        rounds = batch.rounds
        try:
            stored = await self.deps.ingest(
                batch.source, batch.batch_id, rounds, batch.source_kind, batch.source_node
            )
        except Refused as refused:
            invalid = [InvalidParam(name, why) for name, why in refused.problems]
            raise bad_request(invalid, status=refused.status) from None
        return _json({"stored": stored, "duplicate": stored == 0})

    async def _run_now(self, name: str) -> RoundResult:
        return await self.deps.run_now(name)

    def _run_done(self, task: asyncio.Task[RoundResult]) -> None:
        self._runs = {name: t for name, t in self._runs.items() if t is not task}
        error = None if task.cancelled() else task.exception()
        if error is not None and not isinstance(error, ApiError):
            # The clients waiting for it answer 500 and log it; when every one went away,
            # this is the only place that sees it.
            log.warning("on-demand round failed", exc_info=task.exception())

    # -- helpers ----------------------------------------------------------------------------

    async def _catalog(self, *, known: str) -> TargetCatalog:
        """The targets configured or stored; 404 when `known` is neither."""
        catalog = TargetCatalog.of(self.deps.settings(), await self.deps.store.targets())
        if known not in catalog.targets:
            raise not_found(f"{known[:253]!r} is not a configured target and has no history")
        return catalog

    def _now(self) -> datetime:
        return self.deps.clock()


def _bad_cursor() -> ApiError:
    return bad_request(
        [InvalidParam("cursor", "not a cursor of this list with these filters: start without one")]
    )
