"""A reflector: a local cache of one kind of object, kept current by list-then-watch.

What client-go's reflector does, on `kubernetes.aio`'s ApiClient:

1. **List** (in pages of `page_size`), replace the cache, remember the list's resourceVersion.
2. **Watch** from that resourceVersion with bookmarks on; apply ADDED/MODIFIED/DELETED to the
   cache; a BOOKMARK only moves the resourceVersion (so a resume after a quiet hour is cheap).
3. A watch that ends (server timeout, a dropped connection) is **resumed** from the last
   resourceVersion seen; a resume the server answers with **410 Gone** (history compacted)
   means events were lost: list again (step 1).
4. Any other error (connection refused, 5xx, 403) waits a growing **backoff**, then resumes;
   nothing is raised out of `run()`: the cache keeps its last state meanwhile.

Objects are kept as `project(raw)`, the caller's small frozen view, so a large cluster costs
the fields read, not the whole object. Requests are built from `api_calls.Resource`, the one
list of calls (RBAC is derived from it).

Future parts hang on `on_event(kind, old, new)` (what changed in the cluster) and `synced`
(leader election starts discovery only on the holder and waits for it before judging).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import aiohttp
from kubernetes.aio import client
from kubernetes.aio.client.exceptions import ApiException

from egresswatch.kube.api_calls import CALLS, ApiCall, Resource

__all__ = ["Backoff", "Reflector", "ReflectorStats", "WatchSpec", "object_key", "served"]

log = logging.getLogger(__name__)

T = TypeVar("T")
Raw = dict[str, Any]
EventHook = Callable[[str, "T | None", "T | None"], None]

_META_LIST = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"
_META_ONE = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"


@dataclass(frozen=True)
class WatchSpec:
    """What to watch: a resource, in one namespace or cluster-wide, narrowed by selectors.
    `metadata_only` asks for PartialObjectMetadata (labels, owners) when the spec is not read."""

    resource: Resource
    namespace: str | None = None
    label_selector: str | None = None
    field_selector: str | None = None
    metadata_only: bool = False

    def __post_init__(self) -> None:
        # A watch the RBAC rules do not grant would be a 403 in the cluster: refuse it here.
        scoped = self.namespace is not None
        for verb in ("list", "watch"):
            if ApiCall(self.resource, verb, scoped) not in CALLS:
                where = "in a namespace" if scoped else "cluster-wide"
                raise ValueError(f"{verb} {self.resource.plural} {where} is not in api_calls.CALLS")

    @property
    def name(self) -> str:
        where = self.namespace or "cluster"
        return f"kube-watch:{self.resource.plural}:{where}"


@dataclass
class ReflectorStats:
    """Counts since start: what the tests and the self-metrics read."""

    lists: int = 0
    gone: int = 0  # 410s that forced a relist
    resumes: int = 0  # watches opened again from a resourceVersion
    errors: int = 0
    events: int = 0
    bookmarks: int = 0


@dataclass
class Backoff:
    """Exponential backoff with full jitter; `reset()` after something worked."""

    initial_s: float = 0.5
    max_s: float = 30.0
    _next: float = field(default=0.0, init=False)

    def next(self) -> float:
        self._next = min(self.max_s, self._next * 2 if self._next else self.initial_s)
        return random.uniform(self._next / 2, self._next)

    def reset(self) -> None:
        self._next = 0.0


class Gone(Exception):
    """The server no longer holds the history asked for (410): list again."""


class ApiError(Exception):
    """The API server answered with a failure Status (not 410)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status


def object_key(raw: Raw) -> str:
    """`namespace/name`, or `name` for a cluster-scoped object."""
    meta = raw.get("metadata") or {}
    namespace = meta.get("namespace")
    return f"{namespace}/{meta['name']}" if namespace else str(meta["name"])


class Reflector(Generic[T]):
    """The cache of one `WatchSpec`, kept by `run()` (start it with `start()`)."""

    def __init__(
        self,
        api: client.ApiClient,
        spec: WatchSpec,
        project: Callable[[Raw], T],
        *,
        on_change: Callable[[], None] | None = None,
        on_event: EventHook[T] | None = None,
        page_size: int = 500,
        watch_timeout_s: int = 290,
        backoff: Backoff | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.api = api
        self.spec = spec
        self.cache: dict[str, T] = {}
        self.resource_version: str | None = None
        self.synced = asyncio.Event()
        self.stats = ReflectorStats()
        self._project = project
        self._on_change = on_change or (lambda: None)
        self._on_event = on_event
        self._page_size = page_size
        self._watch_timeout_s = watch_timeout_s
        self._backoff = backoff or Backoff()
        self._sleep = sleep

    def start(self) -> asyncio.Task[None]:
        """`run()` as a named task; the caller owns it and cancels it to stop."""
        return asyncio.create_task(self.run(), name=self.spec.name)

    async def run(self) -> None:
        """List, watch, resume, relist, for ever; only cancellation ends it."""
        need_list = True
        while True:
            try:
                if need_list:
                    await self._list()
                    need_list = False
                await self._watch()
            except Gone:
                self.stats.gone += 1
                need_list = True
                log.info("watch history expired: listing again", extra={"watch": self.spec.name})
            except Exception as exc:  # a watch never dies: it waits and retries
                self.stats.errors += 1
                need_list = need_list or self.resource_version is None
                delay = self._backoff.next()
                expected = isinstance(exc, _EXPECTED)
                log.warning(
                    "kubernetes watch failed: retrying",
                    extra={"watch": self.spec.name, "problem": _problem(exc), "retry_s": delay},
                    exc_info=None if expected else exc,
                )
                await self._sleep(delay)

    # -- list --

    async def _list(self) -> None:
        fresh: dict[str, T] = {}
        token: str | None = None
        while True:
            query = [*self._selectors(), ("limit", str(self._page_size))]
            if token:
                query.append(("continue", token))
            body = await self._get_json(query, _META_LIST if self.spec.metadata_only else None)
            for raw in body.get("items") or []:
                fresh[object_key(raw)] = self._project(raw)
            meta = body.get("metadata") or {}
            token = meta.get("continue")
            if not token:
                break
        self.stats.lists += 1
        old, self.cache = self.cache, fresh
        self.resource_version = str(meta["resourceVersion"])
        self._backoff.reset()
        if self._on_event is not None:
            self._replay(old, fresh)
        self.synced.set()
        self._on_change()

    def _replay(self, old: dict[str, T], fresh: dict[str, T]) -> None:
        """A relist seen as events: what appeared, changed and vanished while unwatched."""
        assert self._on_event is not None
        for key in old.keys() - fresh.keys():
            self._on_event("DELETED", old[key], None)
        for key, new in fresh.items():
            before = old.get(key)
            if before != new:
                self._on_event("MODIFIED" if before is not None else "ADDED", before, new)

    async def _get_json(self, query: list[tuple[str, str]], accept: str | None) -> Raw:
        response = await self._request(query, accept, aiohttp.ClientTimeout(total=120))
        try:
            await _raise_for_status(response)
            body: Raw = await response.json()
            return body
        finally:
            response.release()

    # -- watch --

    async def _watch(self) -> None:
        """One watch stream from `resource_version`, to its end; Gone on a 410."""
        query = [
            *self._selectors(),
            ("watch", "true"),
            ("allowWatchBookmarks", "true"),
            ("resourceVersion", str(self.resource_version)),
            ("timeoutSeconds", str(self._watch_timeout_s)),
        ]
        # The server ends the stream at timeoutSeconds; a read that waits well past it means
        # the connection died silently.
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=10, sock_read=self._watch_timeout_s + 30
        )
        response = await self._request(
            query, _META_ONE if self.spec.metadata_only else None, timeout
        )
        self.stats.resumes += 1
        try:
            await _raise_for_status(response)
            while line := await response.content.readline():
                if line.strip():
                    self._apply(json.loads(line))
        finally:
            response.release()

    def _apply(self, event: Raw) -> None:
        kind, raw = event["type"], event["object"]
        if kind == "ERROR":
            code = raw.get("code")
            if code == 410:
                raise Gone(raw.get("message", ""))
            raise ApiError(int(code or 500), str(raw.get("message", "watch error")))
        self.resource_version = str(raw["metadata"]["resourceVersion"])
        self._backoff.reset()
        if kind == "BOOKMARK":
            self.stats.bookmarks += 1
            return
        self.stats.events += 1
        key = object_key(raw)
        before = self.cache.get(key)
        if kind == "DELETED":
            self.cache.pop(key, None)
            after = None
        else:
            after = self.cache[key] = self._project(raw)
        if before == after:
            return
        if self._on_event is not None:
            self._on_event(kind, before, after)
        self._on_change()

    # -- requests --

    def _selectors(self) -> list[tuple[str, str]]:
        query = []
        if self.spec.label_selector:
            query.append(("labelSelector", self.spec.label_selector))
        if self.spec.field_selector:
            query.append(("fieldSelector", self.spec.field_selector))
        return query

    async def _request(
        self, query: list[tuple[str, str]], accept: str | None, limits: aiohttp.ClientTimeout
    ) -> aiohttp.ClientResponse:
        headers = {"Accept": accept or "application/json"}
        method, url, headers, body, post = await self.api.param_serialize(
            method="GET",
            resource_path=self.spec.resource.path(self.spec.namespace),
            query_params=query,
            header_params=headers,
            auth_settings=["BearerToken"],
        )
        rest = await self.api.call_api(method, url, headers, body, post, _request_timeout=limits)
        response: aiohttp.ClientResponse = rest.response
        return response


async def served(api: client.ApiClient, resource: Resource) -> bool:
    """Whether the API server serves `resource` (API discovery of its group and version): a
    404 means its CRD is not installed. Any other failure is logged and taken as absent, so a
    slow discovery holds the controller's start 10 s at most. Asked once, at start: a CRD
    installed later is seen after a restart."""
    method, url, headers, body, post = await api.param_serialize(
        method="GET",
        resource_path=f"/apis/{resource.group}/{resource.version}",
        header_params={"Accept": "application/json"},
        auth_settings=["BearerToken"],
    )
    try:
        rest = await api.call_api(
            method, url, headers, body, post, _request_timeout=aiohttp.ClientTimeout(total=10)
        )
        response: aiohttp.ClientResponse = rest.response
        try:
            if response.status == 404:
                return False
            await _raise_for_status(response)
            found: Raw = await response.json()
        finally:
            response.release()
    except _EXPECTED as exc:
        log.warning(
            "kubernetes API discovery failed: taken as absent",
            extra={"resource": f"{resource.plural}.{resource.group}", "problem": _problem(exc)},
        )
        return False
    return any(r.get("name") == resource.plural for r in found.get("resources") or [])


async def _raise_for_status(response: aiohttp.ClientResponse) -> None:
    if response.status == 200:
        return
    try:
        status: Raw = await response.json(content_type=None)
        message = str(status.get("message", response.reason))
    except (ValueError, aiohttp.ClientError):
        message = str(response.reason)
    if response.status == 410:
        raise Gone(message)
    raise ApiError(response.status, message)


# What an API server away, slow or refusing looks like; anything else is logged with its trace.
_EXPECTED = (ApiError, ApiException, aiohttp.ClientError, TimeoutError, ValueError, KeyError)


def _problem(exc: BaseException) -> str:
    if isinstance(exc, ApiError):
        return f"HTTP {exc.status}"
    return type(exc).__name__
