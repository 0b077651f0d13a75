"""The OpenAPI 3.1 document: valid, complete, generated from the vocabularies, and true.

"True" is schemathesis's job: it generates requests from the document (valid ones and
invalid ones) against the live, seeded server on 127.0.0.1 and checks every answer: no 5xx,
status codes, content types and bodies as documented, invalid input refused, ingest not
answered without the token.
"""

from __future__ import annotations

from collections.abc import Iterator
from enum import Enum
from typing import Any

import pytest
import requests
import schemathesis
from openapi_spec_validator import validate

from egresswatch.controller.api.openapi import openapi_document
from egresswatch.model import (
    PROBE_STEPS,
    Reason,
    Role,
    SourceKind,
    Status,
    Step,
    StepState,
    Suspect,
)
from egresswatch.storage import Resolution
from tests.support.apiserver import RUN_TOKEN, TOKEN, ThreadedApi
from tests.support.databases import sqlite_url

MAX_EXAMPLES = 15  # per operation and phase: the whole run stays well under a minute


@pytest.fixture(name="live_api", scope="module")
def live_api_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadedApi]:
    with ThreadedApi(sqlite_url(tmp_path_factory.mktemp("openapi"))) as api:
        yield api


def test_the_document_is_valid_openapi_31() -> None:
    document = openapi_document()
    assert document["openapi"] == "3.1.0"
    validate(document)


def test_the_served_document_is_the_built_one(live_api: ThreadedApi) -> None:
    response = requests.get(f"{live_api.base_url}/openapi.json", timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.json() == openapi_document()


def test_every_route_is_documented_and_nothing_else(live_api: ThreadedApi) -> None:
    assert live_api.world is not None
    served = {
        (route.method.lower(), route.resource.canonical)
        for route in live_api.world.app.router.routes()
        if route.method != "HEAD" and route.resource is not None
    }
    documented = {
        (method, path)
        for path, operations in openapi_document()["paths"].items()
        for method in operations
    }
    assert served == documented


def test_vocabularies_come_from_the_model() -> None:
    schemas = openapi_document()["components"]["schemas"]
    vocabularies: list[tuple[str, list[Enum]]] = [
        ("Step", list(Step)),
        ("ProbeStep", list(PROBE_STEPS)),
        ("Status", list(Status)),
        ("Reason", list(Reason)),
        ("Suspect", list(Suspect)),
        ("Role", list(Role)),
        ("SourceKind", list(SourceKind)),
        ("StepState", list(StepState)),
        ("Resolution", list(Resolution)),
    ]
    for name, vocabulary in vocabularies:
        assert schemas[name]["enum"] == [member.value for member in vocabulary], name


def test_times_are_date_time_parameters() -> None:
    document = openapi_document()
    shared = document["components"]["parameters"]
    inline = [
        p
        for operations in document["paths"].values()
        for operation in operations.values()
        for p in operation.get("parameters", [])
        if "$ref" not in p
    ]
    by_name = {p["name"]: p for p in [*shared.values(), *inline]}
    for name in ("since", "until", "from", "to", "at"):
        assert by_name[name]["schema"] == {"type": "string", "format": "date-time"}, name


# -- schemathesis -----------------------------------------------------------------------------


@pytest.fixture(name="api_schema", scope="module")
def api_schema_fixture(live_api: ThreadedApi) -> Any:
    config = schemathesis.Config.from_dict(
        {
            "base-url": live_api.base_url,
            "generation": {"max-examples": MAX_EXAMPLES, "mode": "all", "deterministic": True},
            "auth": {
                "openapi": {"agentToken": {"bearer": TOKEN}, "runToken": {"bearer": RUN_TOKEN}}
            },
            "checks": {
                # Valid per the document is not always acceptable: rules across parameters
                # (from before to), a round's source against its batch's, a step twice in a
                # round, a target that must be configured cannot be said in JSON Schema.
                # Those answers are 400 or 422 naming the parameter (tests/test_api.py).
                "positive_data_acceptance": {
                    "expected-statuses": ["2xx", "400", "401", "403", "404", "422"]
                },
            },
        }
    )
    return schemathesis.openapi.from_url(f"{live_api.base_url}/openapi.json", config=config)


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
def test_the_api_does_what_the_document_says(case: Any) -> None:
    case.call_and_validate(timeout=10)


def _batch(target: str, source: str = "node-a", batch_id: str = "st-1") -> dict[str, Any]:
    step = {"step": "dns_cluster", "status": "ok", "reason": None, "duration_ms": 1.5}
    started = "2026-03-01T11:59:30Z"
    return {
        "source": source,
        "batch_id": batch_id,
        "rounds": [{"target": target, "source": source, "started_at": started, "steps": [step]}],
    }


AUTH = {"Authorization": f"Bearer {TOKEN}"}
RUN = {"Authorization": f"Bearer {RUN_TOKEN}"}
# (method, path, path parameters, query, headers, body, expected status): requests that reach
# the seeded data, which random generation rarely does, checked the same way.
SEEDED: list[tuple[str, str, dict[str, str], dict[str, str], dict[str, str], Any, int]] = [
    ("GET", "/api/v1/status", {}, {}, {}, None, 200),
    ("GET", "/api/v1/incidents", {}, {"limit": "2"}, {}, None, 200),
    ("GET", "/api/v1/incidents", {}, {"open": "true", "target": "api"}, {}, None, 200),
    ("GET", "/api/v1/incidents", {}, {"cursor": "nope"}, {}, None, 400),
    ("GET", "/api/v1/incidents/{id}", {"id": "inc-api-now"}, {}, {}, None, 200),
    ("GET", "/api/v1/incidents/{id}", {"id": "inc-db-1d"}, {}, {}, None, 200),
    ("GET", "/api/v1/incidents/{id}", {"id": "nope"}, {}, {}, None, 404),
    ("GET", "/api/v1/changes", {}, {"limit": "1000"}, {}, None, 200),
    ("GET", "/api/v1/changes", {}, {"since": "yesterday"}, {}, None, 400),
    ("GET", "/api/v1/targets/{target}/timeline", {"target": "api"}, {}, {}, None, 200),
    (
        "GET",
        "/api/v1/targets/{target}/timeline",
        {"target": "db"},
        {"from": "2026-01-01T00:00:00Z", "to": "2026-03-01T12:00:00Z"},
        {},
        None,
        200,
    ),
    ("GET", "/api/v1/targets/{target}/diagnosis", {"target": "api"}, {}, {}, None, 200),
    ("GET", "/api/v1/targets/{target}/diagnosis", {"target": "legacy"}, {}, {}, None, 200),
    ("GET", "/api/v1/targets/{target}/diagnosis", {"target": "nope"}, {}, {}, None, 404),
    ("GET", "/api/v1/plan", {}, {"source": "node-a"}, AUTH, None, 200),
    ("GET", "/api/v1/plan", {}, {"source": "node-a"}, {}, None, 401),
    ("GET", "/api/v1/plan", {}, {"source": "node-a"}, RUN, None, 403),
    ("POST", "/api/v1/targets/{target}/run", {"target": "api"}, {}, RUN, None, 200),
    ("POST", "/api/v1/targets/{target}/run", {"target": "example.com"}, {}, RUN, None, 404),
    ("POST", "/api/v1/targets/{target}/run", {"target": "api"}, {}, {}, None, 401),
    ("POST", "/api/v1/targets/{target}/run", {"target": "api"}, {}, AUTH, None, 403),
    ("POST", "/api/v1/results", {}, {}, AUTH, _batch("api"), 200),
    ("POST", "/api/v1/results", {}, {}, AUTH, _batch("api"), 200),  # the duplicate
    ("POST", "/api/v1/results", {}, {}, AUTH, _batch("made-up", batch_id="st-2"), 422),
    ("POST", "/api/v1/results", {}, {}, {"Authorization": "Bearer x"}, _batch("api"), 403),
    ("POST", "/api/v1/results", {}, {}, {}, _batch("api"), 401),
]


def test_seeded_answers_match_the_document(api_schema: Any, live_api: ThreadedApi) -> None:
    for method, path, path_parameters, query, headers, body, status in SEEDED:
        operation = api_schema[path][method]
        case = operation.Case(
            path_parameters=path_parameters,
            query=query,
            headers=headers,
            **({} if body is None else {"body": body}),
        )
        response = case.call_and_validate(base_url=live_api.base_url, timeout=10)
        assert response.status_code == status, (method, path, query, response.text[:300])
