"""A fake Kubernetes API server (aiohttp, 127.0.0.1 only) for the real `kubernetes.aio` client.

No kube-apiserver can run here, so this serves real-shaped objects (the YAML fixtures in
`tests/fixtures/kube/cluster/`, validated by `tests/test_kubeapi.py`) the way the API server
does, as far as egresswatch's calls reach:

- list (`GET .../pods`) with `labelSelector` (=, ==, !=, in, notin, exists, !exists),
  `fieldSelector` (metadata.name, metadata.namespace, spec.nodeName; = and !=), `limit` and
  `continue` over a consistent snapshot, and `metadata.resourceVersion` from one global counter
  (as etcd's revision);
- watch (`?watch=1`): newline-delimited JSON events ADDED/MODIFIED/DELETED, BOOKMARK when
  `allowWatchBookmarks` asks (every `bookmark_every_s`), resumed from `resourceVersion`
  (events after it are replayed), a label-selector watch seeing an object that stops matching
  as DELETED (as the watch cache does), `timeoutSeconds` honoured. A resume from a compacted
  resourceVersion gets what the real server sends: HTTP 200 and one ERROR event holding a
  Status with code 410, reason Expired;
- get, create (201), update (PUT; 409 Conflict on a stale metadata.resourceVersion), merge
  patch, delete; every write bumps the counter and reaches the watches;
- metadata-only answers for `Accept: application/json;as=PartialObjectMetadataList;...`
  (and `as=PartialObjectMetadata` for watches and gets);
- bearer-token authentication (401 otherwise);
- TokenReviews (`POST /apis/authentication.k8s.io/v1/tokenreviews`) of the tokens a test
  issued through `token_reviews` (tests/support/kube_tokens.py).

Test hooks: `apply`/`remove` (churn without HTTP), `expire_history` (compact: older
resourceVersions get 410), `drop_watches` (close every open watch, like an API server
restart), `requests` (what the client asked, for "watch only what is needed").
The `kube_api` fixture starts one and writes a kubeconfig that points the real client at it.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import re
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

from tests.support.kube_tokens import TokenReviews

HOST = "127.0.0.1"
TOKEN = "fake-kube-token"
TOKEN_REVIEWS = "/apis/authentication.k8s.io/v1/tokenreviews"
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "kube" / "cluster"

Obj = dict[str, Any]
LabelTest = Callable[[dict[str, str]], bool]
ObjTest = Callable[[Obj], bool]


@dataclass(frozen=True)
class Kind:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


KINDS = (
    Kind("", "v1", "namespaces", "Namespace", False),
    Kind("", "v1", "nodes", "Node", False),
    Kind("", "v1", "pods", "Pod", True),
    Kind("", "v1", "configmaps", "ConfigMap", True),
    Kind("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy", True),
    Kind("coordination.k8s.io", "v1", "leases", "Lease", True),
    Kind("apps", "v1", "deployments", "Deployment", True),
    Kind("apps", "v1", "replicasets", "ReplicaSet", True),
    Kind("apps", "v1", "daemonsets", "DaemonSet", True),
    # CRDs: served only once installed (`FakeKubeApi.install`)
    Kind("cilium.io", "v2", "ciliumnetworkpolicies", "CiliumNetworkPolicy", True),
    Kind("crd.projectcalico.org", "v1", "networkpolicies", "NetworkPolicy", True),
)
CRD_GROUPS = frozenset({"cilium.io", "crd.projectcalico.org"})
_BY_PATH = {(k.group, k.version, k.plural): k for k in KINDS}
_BY_KIND = {(k.api_version, k.kind): k for k in KINDS}


def load_fixtures(folder: Path = FIXTURES) -> list[Obj]:
    """Every object of every YAML file in `folder`, in file order."""
    objects: list[Obj] = []
    for path in sorted(folder.glob("*.yaml")):
        objects.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return objects


# -- selectors ------------------------------------------------------------------------------------

_SET_TERM = re.compile(r"^\s*([\w./-]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")


def _split_terms(text: str) -> Iterator[str]:
    """Split a selector at the commas outside parentheses."""
    depth, start = 0, 0
    for i, char in enumerate(text):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            yield text[start:i]
            start = i + 1
    yield text[start:]


def label_matcher(selector: str) -> LabelTest:
    """A predicate over a labels dict; ValueError on a selector the API server would refuse."""
    tests = [_label_term(t) for t in _split_terms(selector) if t.strip()]
    return lambda labels: all(test(labels) for test in tests)


def _label_term(term: str) -> LabelTest:
    term = term.strip()
    if found := _SET_TERM.match(term):
        key, op, values = found[1], found[2], {v.strip() for v in found[3].split(",")}
        if op == "in":
            return lambda labels: labels.get(key) in values
        return lambda labels: labels.get(key) not in values
    for op in ("!=", "==", "="):
        if op in term:
            key, value = (part.strip() for part in term.split(op, 1))
            if op == "!=":
                return lambda labels: labels.get(key) != value
            return lambda labels: labels.get(key) == value
    if term.startswith("!"):
        key = term[1:].strip()
        return lambda labels: key not in labels
    if re.fullmatch(r"[\w./-]+", term):
        return lambda labels: term in labels
    raise ValueError(f"unable to parse requirement: {term!r}")


_FIELDS = {
    "metadata.name": ("metadata", "name"),
    "metadata.namespace": ("metadata", "namespace"),
    "spec.nodeName": ("spec", "nodeName"),
}


def field_matcher(selector: str) -> ObjTest:
    """A predicate over an object for the fields the API server selects Pods by."""
    tests = [_field_term(t.strip()) for t in selector.split(",") if t.strip()]
    return lambda obj: all(test(obj) for test in tests)


def _field_term(term: str) -> ObjTest:
    negate = "!=" in term
    key, value = (p.strip() for p in re.split(r"!=|==|=", term, maxsplit=1))
    if key not in _FIELDS:
        raise ValueError(f'field label not supported: "{key}"')
    outer, inner = _FIELDS[key]
    return lambda obj: ((obj.get(outer) or {}).get(inner, "") == value) != negate


# -- the store ------------------------------------------------------------------------------------


@dataclass
class Event:
    rv: int
    kind: Kind
    type: str  # ADDED, MODIFIED, DELETED
    obj: Obj
    old: Obj | None


@dataclass(eq=False)  # each open watch is its own
class _Watch:
    kind: Kind
    namespace: str | None
    matches: ObjTest
    queue: asyncio.Queue[Event | None] = field(default_factory=asyncio.Queue)


class Conflict(Exception):
    pass


class FakeKubeApi:
    """The objects, the revision counter, the event history and the open watches."""

    def __init__(self, objects: Iterable[Obj] = (), *, bookmark_every_s: float = 1.0) -> None:
        self.rv = 0
        self.objects: dict[tuple[Kind, str, str], Obj] = {}
        self.history: list[Event] = []
        self.compacted = 0  # resourceVersions at or below this are gone (410)
        self.bookmark_every_s = bookmark_every_s
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self._watches: set[_Watch] = set()
        self._snapshots: dict[str, list[Obj]] = {}
        self.token_reviews = TokenReviews()
        self.installed: set[str] = set()  # CRD groups served (API discovery and requests)
        for obj in objects:
            self.apply(obj)

    # -- writes (also the test hooks) --

    def apply(self, obj: Obj) -> Obj:
        """Create or replace `obj` (no conflict check): the churn hook."""
        kind = _BY_KIND[(obj["apiVersion"], obj["kind"])]
        key = self._key(kind, obj)
        return self._write(kind, key, copy.deepcopy(obj), self.objects.get(key))

    def remove(self, kind_name: str, name: str, namespace: str | None = None) -> Obj:
        """Delete an object by kind ("Pod"), name and namespace: the churn hook."""
        kind = next(k for k in KINDS if k.kind == kind_name)
        return self._delete(kind, (kind, namespace or "", name))

    def get(self, kind_name: str, name: str, namespace: str | None = None) -> Obj | None:
        kind = next(k for k in KINDS if k.kind == kind_name)
        return self.objects.get((kind, namespace or "", name))

    def install(self, group: str) -> None:
        """Serve a CRD group (cilium.io, crd.projectcalico.org): before, it is a 404."""
        self.installed.add(group)

    def expire_history(self) -> None:
        """Compact: every resourceVersion up to now is too old to resume from."""
        self.compacted = self.rv
        self.history.clear()

    def drop_watches(self) -> None:
        """End every open watch stream, as an API server restart or a load balancer does."""
        for watch in self._watches:
            watch.queue.put_nowait(None)

    def _key(self, kind: Kind, obj: Obj) -> tuple[Kind, str, str]:
        meta = obj["metadata"]
        return (kind, meta.get("namespace", "") if kind.namespaced else "", meta["name"])

    def _write(self, kind: Kind, key: tuple[Kind, str, str], obj: Obj, old: Obj | None) -> Obj:
        self.rv += 1
        meta = obj.setdefault("metadata", {})
        if old is None:
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", _now())
        else:
            meta["uid"] = old["metadata"]["uid"]
            meta["creationTimestamp"] = old["metadata"]["creationTimestamp"]
        meta["resourceVersion"] = str(self.rv)
        obj["apiVersion"], obj["kind"] = kind.api_version, kind.kind
        self.objects[key] = obj
        self._publish(Event(self.rv, kind, "MODIFIED" if old else "ADDED", obj, old))
        return obj

    def _delete(self, kind: Kind, key: tuple[Kind, str, str]) -> Obj:
        old = self.objects.pop(key)
        self.rv += 1
        gone = copy.deepcopy(old)
        gone["metadata"]["resourceVersion"] = str(self.rv)
        self._publish(Event(self.rv, kind, "DELETED", gone, old))
        return gone

    def _publish(self, event: Event) -> None:
        self.history.append(event)
        for watch in self._watches:
            if watch.kind is event.kind:
                watch.queue.put_nowait(event)

    # -- HTTP --

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        return app

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((request.method, request.path, dict(request.query)))
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return _status(401, "Unauthorized", "Unauthorized")
        if request.path == TOKEN_REVIEWS and request.method == "POST":
            return await self._token_review(request)
        parts = [p for p in request.path.split("/") if p]
        if request.method == "GET" and len(parts) == 3 and parts[0] == "apis":
            return self._discovery(parts[1], parts[2])
        try:
            kind, namespace, name = _route(request.path)
            if kind.group in CRD_GROUPS and kind.group not in self.installed:
                raise LookupError(request.path)
        except LookupError:
            return _status(404, "NotFound", f"the server could not find {request.path}")
        query = request.query
        try:
            if request.method == "GET" and name is None:
                if query.get("watch") in ("1", "true"):
                    return await self._watch(request, kind, namespace)
                return self._list(request, kind, namespace)
            if request.method == "GET":
                return self._get(request, kind, namespace, name)  # type: ignore[arg-type]
            if request.method == "POST" and name is None:
                return await self._create(request, kind, namespace)
            if request.method in ("PUT", "PATCH") and name is not None:
                return await self._replace(request, kind, namespace, name)
            if request.method == "DELETE" and name is not None:
                key = (kind, namespace or "", name)
                if key not in self.objects:
                    return _not_found(kind, name)
                return web.json_response(self._delete(kind, key))
        except ValueError as exc:
            return _status(400, "BadRequest", str(exc))
        return _status(405, "MethodNotAllowed", f"{request.method} is not supported here")

    async def _token_review(self, request: web.Request) -> web.Response:
        if self.token_reviews.failing:
            return _status(500, "InternalError", "the authenticator is unavailable")
        return web.json_response(self.token_reviews.answer(await request.json()), status=201)

    def _discovery(self, group: str, version: str) -> web.Response:
        """/apis/GROUP/VERSION: the APIResourceList of a served group, else 404."""
        kinds = [k for k in KINDS if (k.group, k.version) == (group, version)]
        if not kinds or (group in CRD_GROUPS and group not in self.installed):
            return _status(404, "NotFound", f"the server could not find /apis/{group}/{version}")
        resources = [
            {
                "name": k.plural,
                "kind": k.kind,
                "namespaced": k.namespaced,
                "verbs": ["list", "watch"],
            }
            for k in kinds
        ]
        return web.json_response(
            {
                "kind": "APIResourceList",
                "apiVersion": "v1",
                "groupVersion": f"{group}/{version}",
                "resources": resources,
            }
        )

    def _selected(self, kind: Kind, namespace: str | None, query: Any) -> ObjTest:
        labels = label_matcher(query.get("labelSelector", ""))
        fields = field_matcher(query.get("fieldSelector", ""))

        def matches(obj: Obj) -> bool:
            meta = obj["metadata"]
            if namespace and meta.get("namespace") != namespace:
                return False
            return bool(labels(meta.get("labels") or {}) and fields(obj))

        return matches

    def _list(self, request: web.Request, kind: Kind, namespace: str | None) -> web.Response:
        query = request.query
        meta_only = "as=PartialObjectMetadataList" in request.headers.get("Accept", "")
        if token := query.get("continue"):
            if token not in self._snapshots:
                return _status(410, "Expired", "The provided continue parameter is too old")
            rv, items = int(base64.b64decode(token).split(b":")[0]), self._snapshots.pop(token)
        else:
            matches = self._selected(kind, namespace, query)
            items = [
                o
                for (k, _, _), o in sorted(self.objects.items(), key=_sort_key)
                if k is kind and matches(o)
            ]
            rv = self.rv
        limit = int(query.get("limit", "0") or 0)
        rest: list[Obj] = []
        if limit and len(items) > limit:
            items, rest = items[:limit], items[limit:]
        list_meta: Obj = {"resourceVersion": str(rv)}
        if rest:
            next_token = base64.b64encode(f"{rv}:{uuid.uuid4()}".encode()).decode()
            self._snapshots[next_token] = rest
            list_meta["continue"] = next_token
        if meta_only:
            body: Obj = {
                "kind": "PartialObjectMetadataList",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": list_meta,
                "items": [_partial(o) for o in items],
            }
        else:
            body = {
                "kind": f"{kind.kind}List",
                "apiVersion": kind.api_version,
                "metadata": list_meta,
                "items": [
                    {k: v for k, v in o.items() if k not in ("kind", "apiVersion")} for o in items
                ],
            }
        return web.json_response(body)

    def _get(
        self, request: web.Request, kind: Kind, namespace: str | None, name: str
    ) -> web.Response:
        obj = self.objects.get((kind, namespace or "", name))
        if obj is None:
            return _not_found(kind, name)
        meta_only = "as=PartialObjectMetadata" in request.headers.get("Accept", "")
        return web.json_response(_partial(obj) if meta_only else obj)

    async def _create(
        self, request: web.Request, kind: Kind, namespace: str | None
    ) -> web.Response:
        obj = await request.json()
        obj.setdefault("metadata", {})
        if kind.namespaced:
            obj["metadata"]["namespace"] = namespace
        key = self._key(kind, obj)
        if key in self.objects:
            return _status(409, "AlreadyExists", f'{kind.plural} "{key[2]}" already exists')
        obj["metadata"].pop("resourceVersion", None)
        return web.json_response(self._write(kind, key, obj, None), status=201)

    async def _replace(
        self, request: web.Request, kind: Kind, namespace: str | None, name: str
    ) -> web.Response:
        key = (kind, namespace or "", name)
        old = self.objects.get(key)
        if old is None:
            return _not_found(kind, name)
        body = await request.json()
        if request.method == "PATCH":
            if "json-patch" in request.content_type:
                return _status(415, "UnsupportedMediaType", "json-patch is not served here")
            new = _merge(copy.deepcopy(old), body)
            sent_rv = (body.get("metadata") or {}).get("resourceVersion")
        else:
            new, sent_rv = body, (body.get("metadata") or {}).get("resourceVersion")
            if not sent_rv:
                return _status(
                    422,
                    "Invalid",
                    "metadata.resourceVersion: Invalid value: must be specified for an update",
                )
        if sent_rv and sent_rv != old["metadata"]["resourceVersion"]:
            return _status(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {kind.plural} "{name}": the object has been '
                "modified; please apply your changes to the latest version and try again",
            )
        return web.json_response(self._write(kind, key, new, old))

    async def _watch(
        self, request: web.Request, kind: Kind, namespace: str | None
    ) -> web.StreamResponse:
        query = request.query
        matches = self._selected(kind, namespace, query)
        meta_only = "as=PartialObjectMetadata" in request.headers.get("Accept", "")
        bookmarks = query.get("allowWatchBookmarks") in ("1", "true")
        timeout = float(query["timeoutSeconds"]) if "timeoutSeconds" in query else None
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        start = query.get("resourceVersion", "")
        if start not in ("", "0") and int(start) < self.compacted:
            # What the API server does: 200, then one ERROR event, then the end of the stream.
            await _send(response, {"type": "ERROR", "object": _expired(int(start), self.compacted)})
            return response
        watch = _Watch(kind, namespace, matches)
        self._watches.add(watch)
        try:
            last = await self._catch_up(response, watch, start, meta_only)
            await self._stream(response, watch, last, bookmarks, timeout, meta_only)
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self._watches.discard(watch)
        return response

    async def _catch_up(
        self, response: web.StreamResponse, watch: _Watch, start: str, meta_only: bool
    ) -> int:
        """Send what the watcher missed; the resourceVersion it is now current to. Events
        written while this sends are in the watch's queue, past that version."""
        upto = self.rv  # taken before any await: later events come through the queue
        if start in ("", "0"):  # "get state and start at most recent": synthetic ADDED
            current = sorted(self.objects.items(), key=_sort_key)
            for (kind, _, _), obj in current:
                if kind is watch.kind and watch.matches(obj):
                    await _send(response, _event("ADDED", obj, meta_only))
            return upto
        for event in [e for e in self.history if int(start) < e.rv <= upto]:
            await self._send_event(response, watch, event, meta_only)
        return upto

    async def _stream(
        self,
        response: web.StreamResponse,
        watch: _Watch,
        last: int,
        bookmarks: bool,
        ends_after_s: float | None,
        meta_only: bool,
    ) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ends_after_s if ends_after_s else None
        while deadline is None or loop.time() < deadline:
            wait = self.bookmark_every_s
            if deadline is not None:
                wait = min(wait, max(deadline - loop.time(), 0.0))
            try:
                event = await asyncio.wait_for(watch.queue.get(), wait)
            except TimeoutError:
                if bookmarks:
                    mark: Obj = {"kind": watch.kind.kind, "apiVersion": watch.kind.api_version}
                    mark["metadata"] = {"resourceVersion": str(self.rv)}
                    await _send(response, {"type": "BOOKMARK", "object": mark})
                continue
            if event is None:
                return
            if event.rv > last:
                await self._send_event(response, watch, event, meta_only)

    async def _send_event(
        self, response: web.StreamResponse, watch: _Watch, event: Event, meta_only: bool
    ) -> None:
        now = watch.matches(event.obj) if event.type != "DELETED" else False
        before = event.old is not None and watch.matches(event.old)
        if event.type == "DELETED":
            if before:
                await _send(response, _event("DELETED", event.obj, meta_only))
        elif now:
            await _send(response, _event("MODIFIED" if before else "ADDED", event.obj, meta_only))
        elif before:  # it stopped matching the selector: the watcher sees it go
            await _send(response, _event("DELETED", event.obj, meta_only))


def _route(path: str) -> tuple[Kind, str | None, str | None]:
    """(kind, namespace, name) of /api/v1/... or /apis/GROUP/VERSION/...; LookupError."""
    parts = [p for p in path.split("/") if p]
    if parts[:2] == ["api", "v1"]:
        group, version, rest = "", "v1", parts[2:]
    elif parts[:1] == ["apis"] and len(parts) >= 3:
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        raise LookupError(path)
    namespace = None
    if len(rest) >= 3 and rest[0] == "namespaces":
        namespace, rest = rest[1], rest[2:]
    if not rest or len(rest) > 2:
        raise LookupError(path)
    kind = _BY_PATH[(group, version, rest[0])]
    if kind.namespaced != (namespace is not None) and not (kind.namespaced and len(rest) == 1):
        raise LookupError(path)
    return kind, namespace, rest[1] if len(rest) == 2 else None


def _sort_key(item: tuple[tuple[Kind, str, str], Obj]) -> tuple[str, str]:
    (_, namespace, name), _ = item
    return namespace, name


def _partial(obj: Obj) -> Obj:
    return {
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": obj["metadata"],
    }


def _event(kind: str, obj: Obj, meta_only: bool) -> Obj:
    return {"type": kind, "object": _partial(obj) if meta_only else obj}


async def _send(response: web.StreamResponse, event: Obj) -> None:
    await response.write(json.dumps(event).encode() + b"\n")


def _merge(target: Obj, patch: Obj) -> Obj:
    """RFC 7386 JSON merge patch (strategic merge patches are served the same way here)."""
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = copy.deepcopy(value)
    return target


def _expired(start: int, compacted: int) -> Obj:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": f"too old resource version: {start} ({compacted})",
        "reason": "Expired",
        "code": 410,
    }


def _status(code: int, reason: str, message: str) -> web.Response:
    body: Obj = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure"}
    body |= {"message": message, "reason": reason, "code": code}
    return web.json_response(body, status=code)


def _not_found(kind: Kind, name: str) -> web.Response:
    return _status(404, "NotFound", f'{kind.plural} "{name}" not found')


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- running it -----------------------------------------------------------------------------------


@dataclass
class RunningKubeApi:
    api: FakeKubeApi
    url: str
    kubeconfig: Path

    def settings(self) -> dict[str, Any]:
        """egresswatch's `kubernetes` config section for the fixtures' cluster: the nodes of
        nodepool1 and the `payments` namespace designated."""
        return {
            "enabled": True,
            "kubeconfig": str(self.kubeconfig),
            "node_selector": "kubernetes.azure.com/agentpool=nodepool1",
            "pod_namespaces": ["payments"],
        }


def write_kubeconfig(path: Path, url: str, token: str = TOKEN) -> Path:
    """A kubeconfig with one cluster, one token user and one current context."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "fake-aks", "cluster": {"server": url}}],
        "users": [{"name": "egresswatch", "user": {"token": token}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake-aks", "user": "egresswatch"}}],
        "current-context": "fake",
    }
    path.write_text(yaml.safe_dump(config))
    return path


async def start_kube_api(
    api: FakeKubeApi, folder: Path, *, port: int = 0
) -> tuple[web.AppRunner, RunningKubeApi]:
    """Serve `api` on 127.0.0.1:`port` (0: any free port) and write `folder`/kubeconfig.
    The caller ends it: `api.drop_watches()`, then `await runner.cleanup()`."""
    runner = web.AppRunner(api.app(), shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, HOST, port)
    await site.start()
    port = runner.addresses[0][1]
    url = f"http://{HOST}:{port}"
    return runner, RunningKubeApi(api, url, write_kubeconfig(folder / "kubeconfig", url))


@pytest.fixture
async def kube_api(tmp_path: Path) -> AsyncIterator[RunningKubeApi]:
    """The fixtures' cluster on 127.0.0.1, bookmarks every 0.2 s, and its kubeconfig."""
    api = FakeKubeApi(load_fixtures(), bookmark_every_s=0.2)
    runner, running = await start_kube_api(api, tmp_path)
    try:
        yield running
    finally:
        api.drop_watches()
        await runner.cleanup()
