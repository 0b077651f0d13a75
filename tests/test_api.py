"""The v1 HTTP API against a real server over a real, seeded database (SQLite and PostgreSQL).

The seeded history is described in tests/support/apiserver.py; expectations for filters are
computed here from the same seed, with the same predicates the API documents.
"""

from __future__ import annotations

import asyncio
import base64
import json
from datetime import datetime, timedelta
from typing import Any

from aiohttp import ClientSession
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy.ext.asyncio import AsyncEngine

from egresswatch.controller.api.query import iso
from egresswatch.evidence import DnsEvidence, NotRun
from egresswatch.model import PROBE_STEPS, Change, Endpoint, Step
from egresswatch.report import round_document
from tests.support.apiserver import (  # noqa: F401
    CONFIGURED,
    NODE,
    NOW,
    POD,
    POD_FAILS_SINCE,
    PROXY_PASSWORD,
    PROXY_PASSWORD_ENV,
    PROXY_URL_PASSWORD,
    ROUNDS_PER_PAIR,
    RUN_TOKEN,
    STORED_ONLY,
    TOKEN,
    ApiWorld,
    api_client_fixture,
    api_world_fixture,
    build_world,
    config,
    make_round,
    seed_changes,
    seed_incidents,
    shared_api_fixture,
    shared_client_fixture,
    sqlite_only,
)
from tests.support.databases import migrated_engine_fixture  # noqa: F401

Client = TestClient[Any, Any] | ClientSession  # per-test server, or the shared one
AUTH = {"Authorization": f"Bearer {TOKEN}"}
RUN = {"Authorization": f"Bearer {RUN_TOKEN}"}
PROBLEM = "application/problem+json"


async def ok_json(client: Client, path: str) -> Any:
    response = await client.get(path)
    assert response.status == 200, await response.text()
    assert response.content_type == "application/json"
    return await response.json()


async def problem(response: Any, status: int, *names: str) -> dict[str, Any]:
    """Assert a problem document with `status` naming exactly `names` (when given)."""
    assert response.status == status, await response.text()
    assert response.content_type == PROBLEM
    body: dict[str, Any] = json.loads(await response.text())
    assert body["status"] == status
    assert body["title"] and body["detail"]
    if names:
        assert sorted(p["name"] for p in body["invalid_params"]) == sorted(names)
        assert all(p["reason"] for p in body["invalid_params"])
    return body


# -- status -----------------------------------------------------------------------------------


async def test_status_per_configured_target_and_source(shared_client: Client) -> None:
    body = await ok_json(shared_client, "/api/v1/status")
    assert body["generated_at"] == iso(NOW)
    assert body["healthy"] is False
    targets = {t["target"]: t for t in body["targets"]}
    assert list(targets) == list(CONFIGURED)  # configured only: not the stored-only one
    api = targets["api"]
    assert (api["role"], api["url"], api["healthy"]) == (
        "endpoint",
        "https://api.example.test/health",
        False,
    )
    sources = {s["source"]: s for s in api["sources"]}
    assert set(sources) == {NODE, POD}
    pod = sources[POD]
    assert (pod["healthy"], pod["state"], pod["first_failing_step"], pod["reason"]) == (
        False,
        "failing",
        "tcp_connect",
        "conn_timeout",
    )
    assert pod["since"] == iso(POD_FAILS_SINCE)
    node = sources[NODE]
    assert (node["healthy"], node["state"], node["first_failing_step"]) == (True, "ok", None)
    assert node["since"] == iso(NOW - timedelta(hours=3))  # http_response came back then

    db = {s["source"]: s for s in targets["db"]["sources"]}
    assert targets["db"]["healthy"] is True
    assert (db[NODE]["state"], db[NODE]["since"]) == ("degraded", iso(NOW - timedelta(hours=1)))
    assert (db[POD]["state"], db[POD]["since"]) == ("unknown", iso(NOW - timedelta(minutes=30)))
    control = {s["source"]: s for s in targets["kubernetes-io"]["sources"]}
    assert control[NODE] | {"steps": []} == {
        "source": NODE,
        "healthy": True,
        "state": "unknown",  # never judged yet
        "first_failing_step": None,
        "reason": None,
        "since": None,
        "steps": [],
    }


@sqlite_only
async def test_status_follows_the_current_config(api_client: Client, api_world: ApiWorld) -> None:
    api_world.settings = config(targets=[{"name": "db", "address": "db.example.test:5432"}])
    body = await ok_json(api_client, "/api/v1/status")
    assert [t["target"] for t in body["targets"]] == ["db"]
    assert body["healthy"] is True


# -- incidents --------------------------------------------------------------------------------


async def all_pages(client: Client, path: str, limit: int) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor = None
    separator = "&" if "?" in path else "?"
    for _ in range(1000):
        url = f"{path}{separator}limit={limit}" + (f"&cursor={cursor}" if cursor else "")
        page = await ok_json(client, url)
        assert len(page["items"]) <= limit
        items += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            return items
        assert len(page["items"]) == limit
    raise AssertionError("the pages never ended")


def incident_ids(**filters: Any) -> list[str]:
    """The seeded incidents a filter selects, newest first, by the documented rules."""
    chosen = []
    for i in seed_incidents():
        if "target" in filters and i.target != filters["target"]:
            continue
        if "source" in filters and filters["source"] not in i.sources:
            continue
        if "open" in filters and i.open != filters["open"]:
            continue
        if "since" in filters and i.ended_at is not None and i.ended_at <= filters["since"]:
            continue
        if "until" in filters and i.started_at >= filters["until"]:
            continue
        chosen.append(i)
    return [i.id for i in sorted(chosen, key=lambda i: (i.started_at, i.id), reverse=True)]


INCIDENT_FILTERS: list[dict[str, Any]] = [
    {},
    {"target": "api"},
    {"target": "db"},
    {"target": "nothing-like-it"},
    {"source": NODE},
    {"source": POD},
    {"open": True},
    {"open": False},
    {"since": NOW - timedelta(hours=36)},
    {"until": NOW - timedelta(days=2) + timedelta(hours=1)},
    {"since": NOW - timedelta(days=3, hours=1), "until": NOW - timedelta(days=1, hours=1)},
    {"target": "api", "open": False, "source": NODE},
]


def query(filters: dict[str, Any]) -> str:
    def text(value: Any) -> str:
        if isinstance(value, datetime):
            return iso(value)
        if isinstance(value, bool):
            return "true" if value else "false"
        return str(value)

    return "&".join(f"{name}={text(value)}" for name, value in filters.items())


async def test_incidents_filters(shared_client: Client) -> None:
    for filters in INCIDENT_FILTERS:
        items = await all_pages(shared_client, f"/api/v1/incidents?{query(filters)}", limit=2)
        assert [i["id"] for i in items] == incident_ids(**filters), filters


async def test_incident_documents(shared_client: Client) -> None:
    page = await ok_json(shared_client, "/api/v1/incidents?open=true")
    assert page["next_cursor"] is None
    [incident] = page["items"]
    assert incident == {
        "id": "inc-api-now",
        "target": "api",
        "started_at": iso(POD_FAILS_SINCE),
        "detected_at": iso(NOW - timedelta(minutes=7)),
        "ended_at": None,
        "open": True,
        "sources": [POD],
        "first_failing_step": "tcp_connect",
        "suspect": "network_policy",
        "evidence": ["pod-x times out connecting to 203.0.113.10:443; node-a gets through"],
        "next_command": "nc -z -v -w 5 203.0.113.10 443",
        "history": [
            {
                "at": "2026-03-01T11:53:00Z",
                "first_failing_step": "tcp_connect",
                "suspect": "network_policy",
                "sources": [POD],
                "states": {POD: {"tcp_connect": "failing"}},
            }
        ],
        "cluster_changes": [],  # no Kubernetes watched here
    }
    assert await ok_json(shared_client, "/api/v1/incidents/inc-api-now") == incident
    closed = await ok_json(shared_client, "/api/v1/incidents/inc-db-1d")
    assert (closed["open"], closed["ended_at"]) == (False, "2026-02-28T12:40:00Z")


async def test_unknown_incident_is_404(shared_client: Client) -> None:
    for incident_id in ["no-such-incident", "x" * 300, "%00"]:
        await problem(await shared_client.get(f"/api/v1/incidents/{incident_id}"), 404)


# -- changes ----------------------------------------------------------------------------------


def change_key(change: Change) -> tuple[Any, ...]:
    return (
        change.source,
        change.target,
        change.step.value if change.step else None,
        change.previous.value,
        change.current.value,
        iso(change.started_at),
        iso(change.detected_at),
        change.reason.value if change.reason else None,
        change.detail,
    )


def document_key(document: dict[str, Any]) -> tuple[Any, ...]:
    names = ("source", "target", "step", "previous", "current", "started_at", "detected_at")
    return (*(document[n] for n in names), document["reason"], document["detail"])


async def test_changes_paginate_without_loss_or_repeat(shared_client: Client) -> None:
    expected = [change_key(c) for c in seed_changes()]
    assert len(expected) == 120
    items = await all_pages(shared_client, "/api/v1/changes", limit=7)
    got = [document_key(d) for d in items]
    assert len(got) == 120 and sorted(got, key=repr) == sorted(expected, key=repr)
    detected = [d["detected_at"] for d in items]
    assert detected == sorted(detected, reverse=True)  # newest detected first
    whole = await ok_json(shared_client, "/api/v1/changes?limit=1000")
    assert whole["next_cursor"] is None
    assert [document_key(d) for d in whole["items"]] == got


async def test_changes_pages_stay_stable_while_changes_arrive(
    api_client: Client, api_world: ApiWorld
) -> None:
    first = await ok_json(api_client, "/api/v1/changes?limit=50")
    newer = [
        Change(NODE, "api", Step.DNS_CLUSTER, c.current, c.previous, NOW, NOW)
        for c in seed_changes()[:3]
    ]
    await api_world.history.save_changes(newer)
    rest = await all_pages(api_client, f"/api/v1/changes?cursor={first['next_cursor']}", limit=1000)
    got = [document_key(d) for d in first["items"] + rest]
    assert sorted(got, key=repr) == sorted((change_key(c) for c in seed_changes()), key=repr)


CHANGE_FILTERS: list[dict[str, Any]] = [
    {"target": "db"},
    {"source": POD},
    {"step": "tcp_connect"},
    {"target": "api", "source": NODE, "step": "http_response"},
    {"since": NOW - timedelta(hours=2)},
    {"until": NOW - timedelta(days=1)},
    {"since": NOW - timedelta(days=2), "until": NOW - timedelta(days=1, hours=12)},
    {"target": "unknown-target"},
]


def change_selected(c: Change, filters: dict[str, Any]) -> bool:
    step = c.step.value if c.step else None
    return (
        filters.get("target", c.target) == c.target
        and filters.get("source", c.source) == c.source
        and ("step" not in filters or filters["step"] == step)
        and ("since" not in filters or c.started_at >= filters["since"])
        and ("until" not in filters or c.started_at < filters["until"])
    )


async def test_changes_filters(shared_client: Client) -> None:
    for filters in CHANGE_FILTERS:
        chosen = [change_key(c) for c in seed_changes() if change_selected(c, filters)]
        items = await all_pages(shared_client, f"/api/v1/changes?{query(filters)}", limit=9)
        got = sorted((document_key(d) for d in items), key=repr)
        assert got == sorted(chosen, key=repr), filters


async def test_a_cursor_belongs_to_its_list_and_filters(shared_client: Client) -> None:
    page = await ok_json(shared_client, "/api/v1/changes?target=api&limit=3")
    cursor = page["next_cursor"]
    assert cursor
    await problem(
        await shared_client.get(f"/api/v1/changes?target=db&cursor={cursor}"), 400, "cursor"
    )
    await problem(await shared_client.get(f"/api/v1/incidents?cursor={cursor}"), 400, "cursor")
    for garbage in ("not-a-cursor", "eyJ4IjoxfQ", "!!!"):
        await problem(await shared_client.get(f"/api/v1/changes?cursor={garbage}"), 400, "cursor")
    # A tampered cursor whose id is outside 64 bits: a 400 naming it, never a 500.
    data = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    for key in (2**70, -(2**64)):
        tampered = base64.urlsafe_b64encode(json.dumps({**data, "i": key}).encode()).decode()
        await problem(
            await shared_client.get(f"/api/v1/changes?target=api&cursor={tampered}"), 400, "cursor"
        )


# -- bad parameters ---------------------------------------------------------------------------

BAD_PARAMETERS = [
    ("/api/v1/changes?since=yesterday", ["since"]),
    ("/api/v1/changes?until=2026-03-01T12:00:00", ["until"]),  # no timezone
    ("/api/v1/changes?since=2026-03-01", ["since"]),
    ("/api/v1/changes?since=2026-02-30T00:00:00Z", ["since"]),
    ("/api/v1/changes?since=1714560000", ["since"]),
    ("/api/v1/changes?step=dns", ["step"]),
    ("/api/v1/changes?limit=0", ["limit"]),
    ("/api/v1/changes?limit=1001", ["limit"]),
    ("/api/v1/changes?limit=ten", ["limit"]),
    ("/api/v1/changes?target=", ["target"]),
    ("/api/v1/changes?source=a%00b", ["source"]),
    ("/api/v1/changes?target=a&target=b", ["target"]),
    ("/api/v1/changes?tagret=api", ["tagret"]),
    (
        "/api/v1/changes?since=2026-03-01T12:00:00Z&until=2026-03-01T11:00:00Z",
        ["since"],
    ),
    ("/api/v1/changes?since=x&limit=0&step=y", ["since", "limit", "step"]),
    ("/api/v1/incidents?open=yes", ["open"]),
    ("/api/v1/incidents?open=1", ["open"]),
    ("/api/v1/incidents?until=noon", ["until"]),
    ("/api/v1/incidents?step=tcp_connect", ["step"]),  # incidents have no step filter
    ("/api/v1/status?target=api", ["target"]),
    ("/api/v1/incidents/inc-api-now?verbose=1", ["verbose"]),
    ("/api/v1/targets/api/timeline?from=2026-03-01T12:00:00Z&to=2026-03-01T11:00:00Z", ["from"]),
    ("/api/v1/targets/api/timeline?from=2026-03-01T12:00:00Z&to=2026-03-01T12:00:00Z", ["from"]),
    ("/api/v1/targets/api/timeline?to=tomorrow", ["to"]),
    ("/api/v1/targets/api/timeline?step=ping", ["step"]),
    ("/api/v1/targets/api/timeline?since=2026-03-01T11:00:00Z", ["since"]),
    ("/api/v1/targets/api/diagnosis?at=now", ["at"]),
    ("/api/v1/targets/api/diagnosis?at=2026-03-01T12:00:00", ["at"]),
    ("/api/v1/plan", ["source"]),
    ("/api/v1/plan?source=", ["source"]),
    ("/api/v1/plan?source=a&source=b", ["source"]),
]


async def test_bad_parameters_are_named(shared_client: Client) -> None:
    for path, names in BAD_PARAMETERS:
        # The agents' token: the plan needs it, and reading is open (no read token here).
        body = await problem(await shared_client.get(path, headers=AUTH), 400, *names)
        assert all(name in body["detail"] for name in names), path


async def test_times_with_offsets_mean_the_same_instant(shared_client: Client) -> None:
    utc = await ok_json(shared_client, "/api/v1/changes?since=2026-03-01T09:00:00Z&limit=1000")
    offset = await ok_json(
        shared_client, "/api/v1/changes?since=2026-03-01T10:30:00%2B01:30&limit=1000"
    )
    assert utc == offset and len(utc["items"]) == 4
    # `+` not encoded (as typed into curl) arrives as a space: still the same instant.
    plus = await ok_json(
        shared_client, "/api/v1/changes?since=2026-03-01T10:30:00+01:30&limit=1000"
    )
    assert plus == utc


async def test_unknown_paths_and_methods_are_problems(shared_client: Client) -> None:
    await problem(await shared_client.get("/api/v1/nothing"), 404)
    await problem(await shared_client.delete("/api/v1/changes"), 405)


# -- timeline ---------------------------------------------------------------------------------


async def test_timeline_defaults_to_the_last_hour(shared_client: Client) -> None:
    body = await ok_json(shared_client, "/api/v1/targets/api/timeline")
    assert (body["target"], body["from"], body["to"], body["resolution"]) == (
        "api",
        iso(NOW - timedelta(hours=1)),
        iso(NOW),
        "raw",
    )
    assert len(body["points"]) == ROUNDS_PER_PAIR * 2 * len(PROBE_STEPS)
    assert {p["source"] for p in body["points"]} == {NODE, POD}


async def test_timeline_filters_and_range(shared_client: Client) -> None:
    body = await ok_json(
        shared_client, "/api/v1/targets/api/timeline?step=tcp_connect&source=pod-x"
    )
    points = body["points"]
    assert len(points) == ROUNDS_PER_PAIR
    assert {(p["step"], p["source"]) for p in points} == {("tcp_connect", POD)}
    failed = [p for p in points if p["status"] == "fail"]
    assert len(failed) == 10 and all(p["reason"] == "conn_timeout" for p in failed)
    assert failed[0]["time"] == iso(POD_FAILS_SINCE)
    assert (failed[0]["count"], failed[0]["failures"], failed[0]["max_s"]) == (1, 1, 5.0)

    start, end = iso(NOW - timedelta(minutes=5)), iso(NOW - timedelta(minutes=2))
    window = await ok_json(
        shared_client, f"/api/v1/targets/api/timeline?from={start}&to={end}&step=dns_cluster"
    )
    assert (window["from"], window["to"]) == (start, end)
    assert [p["time"] for p in window["points"] if p["source"] == NODE] == [
        iso(NOW - timedelta(minutes=m)) for m in (5, 4, 3)
    ]
    only_to = await ok_json(shared_client, f"/api/v1/targets/api/timeline?to={end}")
    assert only_to["from"] == iso(NOW - timedelta(minutes=62))
    only_from = await ok_json(shared_client, f"/api/v1/targets/api/timeline?from={start}")
    assert only_from["to"] == iso(NOW)


async def test_timeline_of_a_long_range_uses_rollups(shared_client: Client) -> None:
    start = iso(NOW - timedelta(days=30))
    body = await ok_json(shared_client, f"/api/v1/targets/db/timeline?from={start}")
    assert body["resolution"] == "hour"


async def test_timeline_404_for_a_target_never_configured_nor_stored(shared_client: Client) -> None:
    body = await problem(await shared_client.get("/api/v1/targets/example.com/timeline"), 404)
    assert "example.com" in body["detail"]
    stored = await ok_json(shared_client, f"/api/v1/targets/{STORED_ONLY}/timeline")
    assert len(stored["points"]) == len(PROBE_STEPS)


# -- diagnosis --------------------------------------------------------------------------------


async def test_diagnosis_now(shared_client: Client) -> None:
    body = await ok_json(shared_client, "/api/v1/targets/api/diagnosis")
    assert (body["target"], body["role"], body["at"]) == ("api", "endpoint", iso(NOW))
    assert body["incident"]["id"] == "inc-api-now"
    sources = {s["source"]: s for s in body["sources"]}
    assert list(sources) == [NODE, POD]
    pod = sources[POD]
    assert (pod["source_kind"], pod["first_failing_step"]) == ("pod", "tcp_connect")
    assert pod["round"]["started_at"] == iso(NOW - timedelta(minutes=1))
    steps = {s["step"]: s for s in pod["round"]["steps"]}
    assert list(steps) == [s.value for s in PROBE_STEPS]
    assert steps["tcp_connect"] | {"evidence": None} == {
        "step": "tcp_connect",
        "status": "fail",
        "reason": "conn_timeout",
        "duration_ms": 5000.0,
        "detail": "tcp_connect failed",
        "evidence": None,
    }
    assert steps["tcp_connect"]["evidence"]["address"] == "203.0.113.10"
    verdict = pod["verdict"]
    assert (verdict["suspect"], verdict["first_failing_step"]) == (
        "network_policy",  # a pod fails where a node gets through
        "tcp_connect",
    )
    assert verdict["evidence"] and verdict["next_command"].startswith("nc ")
    assert isinstance(verdict["facts"], dict)
    node = sources[NODE]
    assert (node["source_kind"], node["first_failing_step"]) == ("node", None)
    assert node["verdict"]["first_failing_step"] is None


async def test_diagnosis_at_a_past_moment(shared_client: Client) -> None:
    before = iso(POD_FAILS_SINCE - timedelta(seconds=30))
    body = await ok_json(shared_client, f"/api/v1/targets/api/diagnosis?at={before}")
    assert body["at"] == before and body["incident"] is None
    pod = next(s for s in body["sources"] if s["source"] == POD)
    assert pod["round"]["started_at"] == iso(POD_FAILS_SINCE - timedelta(minutes=1))
    assert pod["first_failing_step"] is None

    during = iso(NOW - timedelta(days=2) + timedelta(minutes=10))
    old = await ok_json(shared_client, f"/api/v1/targets/api/diagnosis?at={during}")
    assert old["incident"]["id"] == "inc-api-2d"
    assert old["sources"] == []  # no round within the lookback then


async def test_diagnosis_of_unknown_and_stored_only_targets(shared_client: Client) -> None:
    await problem(await shared_client.get("/api/v1/targets/example.com/diagnosis"), 404)
    stored = await ok_json(shared_client, f"/api/v1/targets/{STORED_ONLY}/diagnosis")
    [source] = stored["sources"]
    assert source["verdict"] is None and source["round"]["target"] == STORED_ONLY


# -- plan -------------------------------------------------------------------------------------


async def test_plan_lists_targets_with_defaults_and_no_secret(shared_client: Client) -> None:
    response = await shared_client.get("/api/v1/plan?source=pod-x", headers=AUTH)
    assert response.status == 200
    text = await response.text()
    for secret in (PROXY_PASSWORD, PROXY_URL_PASSWORD, PROXY_PASSWORD_ENV, "squid", "password"):
        assert secret not in text
    body = json.loads(text)
    assert body["source"] == "pod-x"
    targets = {t["name"]: t for t in body["targets"]}
    assert list(targets) == list(CONFIGURED)
    assert targets["api"] == {
        "name": "api",
        "url": "https://api.example.test/health",
        "address": None,
        "role": "endpoint",
        "interval_s": 20.0,
        "timeout_s": 10.0,
        "step_timeout_s": 5.0,
        "expect_status": "200-299",
        "method": "GET",
        "trace_every_s": 600.0,
        "trace_max_hops": 30,
        "trace_hop_timeout_s": 1.0,
        "pinned_ips": ["203.0.113.10"],
        "use_proxy": True,
        "recover_after": 2,
    }
    assert (targets["db"]["address"], targets["db"]["url"]) == ("db.example.test:5432", None)
    assert (targets["db"]["interval_s"], targets["db"]["use_proxy"]) == (30.0, False)
    assert targets["kubernetes-io"]["role"] == "control"
    assert body["dns"] == {"upstream": "168.63.129.16"}
    assert body["proxy"] == {
        "url": "http://proxy.internal:3128",
        "no_proxy": ["10.0.0.0/8", ".cluster.local"],
        "authenticated": True,
    }


# -- on-demand rounds -------------------------------------------------------------------------


@sqlite_only
async def test_run_a_configured_target(api_client: Client, api_world: ApiWorld) -> None:
    response = await api_client.post("/api/v1/targets/api/run", headers=RUN)
    assert response.status == 200
    text = await response.text()
    assert PROXY_URL_PASSWORD not in text
    body = json.loads(text)
    assert api_world.runs == ["api"]
    assert (body["target"], body["ok"], body["first_failing_step"]) == (
        "api",
        False,
        "http_response",
    )
    assert body["first_failing_reason"] == "http_status"
    assert body["next_command"] == (
        "curl -Iv --proxy http://proxy.internal:3128 https://api.example.test/health"
    )
    assert [s["step"] for s in body["steps"]] == [s.value for s in PROBE_STEPS]


@sqlite_only
async def test_run_refuses_anything_not_configured(api_client: Client, api_world: ApiWorld) -> None:
    for name in ["example.com", "127.0.0.1:22", STORED_ONLY, "%00", "api%2F..%2Fx"]:
        await problem(await api_client.post(f"/api/v1/targets/{name}/run", headers=RUN), 404)
    assert api_world.runs == []


@sqlite_only
async def test_concurrent_runs_of_one_target_share_one_round(
    api_client: Client, api_world: ApiWorld
) -> None:
    api_world.run_gate = asyncio.Event()
    requests = [
        asyncio.ensure_future(api_client.post("/api/v1/targets/db/run", headers=RUN))
        for _ in range(3)
    ]
    for _ in range(100):
        if api_world.runs:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    api_world.run_gate.set()
    responses = await asyncio.gather(*requests)
    assert [r.status for r in responses] == [200, 200, 200]
    assert api_world.runs == ["db"]
    api_world.run_gate = None
    await api_client.post("/api/v1/targets/db/run", headers=RUN)
    assert api_world.runs == ["db", "db"]


@sqlite_only
async def test_a_failed_run_is_a_500_problem(api_client: Client, api_world: ApiWorld) -> None:
    api_world.run_error = RuntimeError("the prober broke: secret detail")
    body = await problem(await api_client.post("/api/v1/targets/api/run", headers=RUN), 500)
    assert "secret detail" not in json.dumps(body)


# -- ingest -----------------------------------------------------------------------------------


def batch_of(*rounds: dict[str, Any], source: str = NODE, batch_id: str = "b-1") -> dict[str, Any]:
    return {"source": source, "batch_id": batch_id, "rounds": list(rounds)}


def round_of(target: str = "api", source: str = NODE, minutes_ago: int = 0) -> dict[str, Any]:
    at = NOW - timedelta(minutes=minutes_ago, seconds=30)
    document = round_document(make_round(target, source, at), Endpoint.parse("example.test:443"))
    return {k: document[k] for k in ("target", "source", "started_at", "steps")}


@sqlite_only
async def test_ingest_needs_the_token(api_client: Client, api_world: ApiWorld) -> None:
    body = batch_of(round_of())
    response = await api_client.post("/api/v1/results", json=body)
    await problem(response, 401)
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    for header in ("Basic YWdlbnQ6cHc=", "Bearer", "Bearer ", TOKEN):
        answer = await api_client.post(
            "/api/v1/results", json=body, headers={"Authorization": header}
        )
        await problem(answer, 401)
    for wrong in (TOKEN + "x", TOKEN[:-1], "x"):
        answer = await api_client.post(
            "/api/v1/results", json=body, headers={"Authorization": f"Bearer {wrong}"}
        )
        await problem(answer, 403)
    assert api_world.ingested == []


@sqlite_only
async def test_ingest_disabled_without_a_token(migrated_engine: AsyncEngine) -> None:
    world = await build_world(migrated_engine, token=None)
    async with TestClient(TestServer(world.app, host="127.0.0.1")) as client:
        body = batch_of(round_of())
        # Closed whatever is sent: 403 naming the setting, never a request for a token.
        for header in ({}, AUTH, {"Authorization": "Bearer "}, {"Authorization": "Bearer None"}):
            answer = await client.post("/api/v1/results", json=body, headers=header)
            refused = await problem(answer, 403)
            assert "agent_token_env" in refused["detail"]
    assert world.ingested == []


async def test_ingest_stores_once_per_batch(api_client: Client, api_world: ApiWorld) -> None:
    body = batch_of(round_of("api"), round_of("db"), batch_id="agent-1/000001")
    response = await api_client.post("/api/v1/results", json=body, headers=AUTH)
    assert response.status == 200
    assert await response.json() == {"stored": 2, "duplicate": False}
    [(source, batch_id, rounds)] = api_world.ingested
    assert (source, batch_id, [r.target for r in rounds]) == (NODE, "agent-1/000001", ["api", "db"])
    assert rounds[0].started_at == NOW - timedelta(seconds=30)
    assert rounds[0].steps == make_round("api", NODE, rounds[0].started_at).steps
    again = await api_client.post("/api/v1/results", json=body, headers=AUTH)
    assert again.status == 200
    assert await again.json() == {"stored": 0, "duplicate": True}
    start = NOW - timedelta(seconds=45)  # after the seeded rounds
    stored = await api_world.store.rounds_between("db", start, NOW, NODE)
    assert len(stored) == 1  # stored once


@sqlite_only
async def test_ingest_refuses_rounds_from_a_broken_clock(
    api_client: Client, api_world: ApiWorld
) -> None:
    for started_at in ("0001-01-01T00:00:00Z", "2030-01-01T00:00:00Z"):
        body = batch_of({**round_of("api"), "started_at": started_at})
        response = await api_client.post("/api/v1/results", json=body, headers=AUTH)
        await problem(response, 400, "rounds[0].started_at")
    assert api_world.ingested == []


@sqlite_only
async def test_another_sources_batch_with_the_same_id_is_stored(api_client: Client) -> None:
    """Batch ids are per source: one agent cannot make another's results vanish as
    "duplicates" by reusing its ids."""
    mine = batch_of(round_of("api", POD), source=POD, batch_id="000001")
    theirs = batch_of(round_of("api"), batch_id="000001")
    for body in (theirs, mine):
        response = await api_client.post("/api/v1/results", json=body, headers=AUTH)
        assert await response.json() == {"stored": 1, "duplicate": False}
    again = await api_client.post("/api/v1/results", json=mine, headers=AUTH)
    assert await again.json() == {"stored": 0, "duplicate": True}


@sqlite_only
async def test_ingest_takes_a_whole_round_document(api_client: Client) -> None:
    """What `egresswatch check --json` prints is a valid round: derived fields are ignored."""
    at = NOW - timedelta(seconds=5)
    failing = make_round("api", NODE, at, Step.TCP_CONNECT, None)
    document = round_document(failing, Endpoint.parse("https://api.example.test/health"))
    assert {"url", "ok", "first_failing_step", "next_command"} <= set(document)
    response = await api_client.post(
        "/api/v1/results", json=batch_of(document, batch_id="doc"), headers=AUTH
    )
    assert response.status == 200, await response.text()


async def test_ingest_records_the_source_kind(api_client: Client, api_world: ApiWorld) -> None:
    body = batch_of(round_of(source="pod-new"), source="pod-new") | {"source_kind": "pod"}
    response = await api_client.post("/api/v1/results", json=body, headers=AUTH)
    assert response.status == 200
    kinds = {s.name: s.kind for s in await api_world.store.sources()}
    assert kinds["pod-new"] is not None and kinds["pod-new"].value == "pod"


def _with(path: str, value: Any) -> dict[str, Any]:
    """A valid batch with the value at a dotted path replaced (`...=DELETE` removes it)."""
    body = batch_of(round_of(), round_of(minutes_ago=1))
    *parents, last = path.split(".")
    node: Any = body
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    key: Any = int(last) if last.isdigit() else last
    if value == "DELETE":
        del node[key]
    else:
        node[key] = value
    return body


INVALID_BATCHES = [
    ("rounds.0.steps.0.step", "ping", "rounds[0].steps[0].step"),
    ("rounds.0.steps.0.step", "source_compare", "rounds[0].steps[0].step"),  # derived
    ("rounds.0.steps.1.status", "broken", "rounds[0].steps[1].status"),
    ("rounds.0.steps.2.reason", "gremlins", "rounds[0].steps[2].reason"),
    ("rounds.0.steps.2.duration_ms", -1, "rounds[0].steps[2].duration_ms"),
    ("rounds.0.steps.2.duration_ms", "12", "rounds[0].steps[2].duration_ms"),
    ("rounds.0.steps.2.detail", "a\u0000b", "rounds[0].steps[2].detail"),
    ("rounds.0.steps.2.evidence", {"k": ["\u0000"]}, "rounds[0].steps[2].evidence"),
    ("rounds.0.steps.2.extra", 1, "rounds[0].steps[2].extra"),
    ("rounds.0.steps.0.status", "DELETE", "rounds[0].steps[0].status"),
    ("rounds.1.started_at", "2026-03-01T11:58:00", "rounds[1].started_at"),  # naive
    ("rounds.1.started_at", 1772366280, "rounds[1].started_at"),
    ("rounds.1.started_at", "2026-03-01T14:00:00Z", "rounds[1].started_at"),  # future
    ("rounds.1.source", "pod-x", "rounds[1].source"),  # another source than the batch's
    ("rounds.1.steps", [], "rounds[1].steps"),
    ("rounds.0.target", "", "rounds[0].target"),
    ("rounds", [], "rounds"),
    ("batch_id", "DELETE", "batch_id"),
    ("batch_id", "x" * 129, "batch_id"),
    ("source", 7, "source"),
    ("source_kind", "vm", "source_kind"),
    ("surprise", True, "surprise"),
]


@sqlite_only
async def test_ingest_validation_names_the_field(api_client: Client, api_world: ApiWorld) -> None:
    for path, value, name in INVALID_BATCHES:
        response = await api_client.post("/api/v1/results", json=_with(path, value), headers=AUTH)
        await problem(response, 400, name)
    assert api_world.ingested == []


# (step index in round_of's steps, evidence, the field named): evidence that is not its step's
# type, checked field by field (steps 0-5 are dns_cluster ... path_trace).
INVALID_EVIDENCE = [
    (0, {"resolver": "10.0.0.10", "answers": ["1.2.3.4"]}, "evidence.answers"),
    (0, {"tried": [{"name": "x.", "type": "A", "server": "s", "rcode": 0}]}, ".tried[0].rcode"),
    (0, {"tried": [{"name": "x.", "type": "A", "server": "s"}]}, "evidence.tried[0].rcode"),
    (2, {"port": "443"}, "rounds[0].steps[2].evidence.port"),
    (2, {"port": True}, "rounds[0].steps[2].evidence.port"),
    (2, {"attempts": [{"address": "1.2.3.4", "outcome": "ok", "ms": "1"}]}, ".attempts[0].ms"),
    (2, {"attempts": {"address": "1.2.3.4"}}, "rounds[0].steps[2].evidence.attempts"),
    (3, {"issuer": ["CN=x"]}, "rounds[0].steps[3].evidence.issuer"),
    (4, {"status": 200.5}, "rounds[0].steps[4].evidence.status"),
    (4, {"resolver": "10.0.0.10"}, "rounds[0].steps[4].evidence.resolver"),  # dns_cluster's
    (5, {"hops": [{"ttl": 1, "addr": "10.0.0.1"}]}, "rounds[0].steps[5].evidence.hops[0].addr"),
    (5, {"blocked_by": 7}, "rounds[0].steps[5].evidence.blocked_by"),
    (1, ["not", "an", "object"], "rounds[0].steps[1].evidence"),
]


@sqlite_only
async def test_ingest_refuses_evidence_that_is_not_its_steps_type(
    api_client: Client, api_world: ApiWorld
) -> None:
    for index, evidence, name in INVALID_EVIDENCE:
        body = batch_of(round_of())
        body["rounds"][0]["steps"][index]["evidence"] = evidence
        response = await api_client.post("/api/v1/results", json=body, headers=AUTH)
        answer = await problem(response, 400)
        [named] = [p["name"] for p in answer["invalid_params"]]
        assert named.startswith(f"rounds[0].steps[{index}].") and named.endswith(name), named
    assert api_world.ingested == []


@sqlite_only
async def test_ingest_takes_each_steps_own_evidence(
    api_client: Client, api_world: ApiWorld
) -> None:
    """What probes write is taken as it is, and `{}` or what stopped a step (NotRun) too."""
    body = batch_of(round_of(), batch_id="typed")
    steps = body["rounds"][0]["steps"]
    steps[0]["evidence"] = {"resolver": "10.0.0.10", "addresses": ["203.0.113.10"], "name": "x."}
    steps[1]["evidence"] = {}
    steps[3]["evidence"] = {"blocked_by": "tcp_connect"}
    steps[4]["evidence"] = {"exception": "KeyError"}
    response = await api_client.post("/api/v1/results", json=body, headers=AUTH)
    assert response.status == 200, await response.text()
    [(_, _, [stored])] = api_world.ingested
    assert stored.steps[0].evidence == DnsEvidence(
        resolver="10.0.0.10", addresses=("203.0.113.10",), name="x."
    )
    assert stored.steps[1].evidence == NotRun()
    assert stored.steps[3].evidence == NotRun(blocked_by="tcp_connect")
    assert stored.steps[4].evidence == NotRun(exception="KeyError")


@sqlite_only
async def test_ingest_refuses_a_step_twice(api_client: Client) -> None:
    body = batch_of(round_of())
    body["rounds"][0]["steps"].append(dict(body["rounds"][0]["steps"][0]))
    await problem(await api_client.post("/api/v1/results", json=body, headers=AUTH), 400)


async def test_ingest_refuses_unknown_targets(api_client: Client, api_world: ApiWorld) -> None:
    body = batch_of(round_of("api"), round_of("made-up"), round_of("evil.example"))
    response = await api_client.post("/api/v1/results", json=body, headers=AUTH)
    await problem(response, 422, "rounds[1].target", "rounds[2].target")
    assert api_world.ingested == []
    # A target the config dropped still takes the rounds agents buffered before the reload.
    api_world.settings = config(targets=[])
    stored = batch_of(round_of("api"), round_of(STORED_ONLY), batch_id="after-reload")
    response = await api_client.post("/api/v1/results", json=stored, headers=AUTH)
    assert response.status == 200 and (await response.json())["stored"] == 2


@sqlite_only
async def test_ingest_refuses_bodies_that_are_not_a_batch(api_client: Client) -> None:
    for data, content_type, status in [
        (b"{not json", "application/json", 400),
        (b"[]", "application/json", 400),
        (b"", "application/json", 400),
        (b'{"source": "x"}', "text/plain", 415),
        (b"source=x", "application/x-www-form-urlencoded", 415),
    ]:
        headers = AUTH | {"Content-Type": content_type}
        answer = await api_client.post("/api/v1/results", data=data, headers=headers)
        body = await problem(answer, status)
        if status == 400:
            assert [p["name"] for p in body["invalid_params"]] == ["body"]


@sqlite_only
async def test_ingest_size_limit(api_client: Client, api_world: ApiWorld) -> None:
    big = batch_of(round_of())
    big["rounds"][0]["steps"][0]["evidence"] = {"candidates": ["x" * (5 * 1024 * 1024)]}
    response = await api_client.post("/api/v1/results", json=big, headers=AUTH)
    await problem(response, 413)

    async def chunks() -> Any:  # no Content-Length: the limit holds on the stream too
        yield b'{"source": "node-a", "batch_id": "z", "rounds": ['
        for _ in range(6 * 16):
            yield b" " * 65536
        yield b"]}"

    headers = AUTH | {"Content-Type": "application/json"}
    streamed = await api_client.post("/api/v1/results", data=chunks(), headers=headers)
    await problem(streamed, 413)
    assert api_world.ingested == []
    # Just under the limit is fine.
    fits = batch_of(round_of(), batch_id="fits")
    fits["rounds"][0]["steps"][0]["evidence"] = {"candidates": ["x" * (4 * 1024 * 1024)]}
    response = await api_client.post("/api/v1/results", json=fits, headers=AUTH)
    assert response.status == 200, await response.text()


# -- the store seen through the API ------------------------------------------------------------


async def test_ingested_rounds_show_in_the_timeline(api_client: Client) -> None:
    body = batch_of(round_of(STORED_ONLY), batch_id="seen")
    assert (await api_client.post("/api/v1/results", json=body, headers=AUTH)).status == 200
    timeline = await ok_json(api_client, f"/api/v1/targets/{STORED_ONLY}/timeline")
    assert len(timeline["points"]) == 2 * len(PROBE_STEPS)
