"""The OpenAPI 3.1 document of the HTTP API, served at /openapi.json.

Built, not written: the closed vocabularies come from model.py's StrEnums, the limits from the
modules that enforce them, so the document cannot drift from what the handlers do (and
tests/test_openapi.py runs schemathesis against the live server to prove it).
"""

from __future__ import annotations

import copy
from typing import Any

from egresswatch import __version__
from egresswatch.controller.api import openapi_schemas as schemas
from egresswatch.controller.api.query import LIMIT_DEFAULT, LIMIT_MAX, NAME_MAX, NAME_PATTERN
from egresswatch.controller.ingest.batch_body import MAX_BODY_BYTES
from egresswatch.health import METRIC_NAME

METRIC_PATTERN = f"^{METRIC_NAME.pattern}$"  # /metrics?name[]=

Doc = dict[str, Any]

DESCRIPTION = f"""\
egresswatch watches a cluster's egress with the manual troubleshooting checklist and answers
*when did connectivity break, from where, and which step of the checklist started failing?*

- Times are RFC 3339. Parameters must carry a timezone (`Z` or `+hh:mm`); answers are UTC
  with `Z`.
- Errors are `application/problem+json` (RFC 9457). A bad parameter is named in the
  `invalid_params` member: `[{{"name": "since", "reason": "..."}}]`.
- Under /api/v1, unknown query parameters, and parameters given more than once, are
  refused with 400 naming them, so a misspelled filter never returns unfiltered data.
- Lists are pages, newest first: pass `next_cursor` back as `cursor`, with the same filters,
  until it is null. Nothing is lost or repeated while new rows arrive.
- `POST /api/v1/results` (agent ingest) takes the agents' bearer token, at most
  {MAX_BODY_BYTES} bytes, and is idempotent per `batch_id`.
- Who may do what: `/healthz`, `/readyz` and this document are open. Ingest and the plan need
  the agents' token (`agentToken`); on-demand rounds need the run token (`runToken`, closed
  when none is configured) and are rate-limited per target (429 with `Retry-After`); the
  other `GET /api/v1/*` and `/metrics` need the read token or the run token when a read token
  is configured (`readToken`), and are open otherwise. No token: 401; a token without the
  right: 403.
- While the database is away, what needs it answers 503 with `Retry-After`, and `/readyz`
  answers 503 with the reason.
"""

_PROBLEM = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}


def _ref(name: str) -> Doc:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: Doc) -> Doc:
    return {"application/json": {"schema": schema}}


def _ok(description: str, schema: Doc) -> Doc:
    return {"description": description, "content": _json(schema)}


def _problem(description: str) -> Doc:
    return {"description": description, "content": _PROBLEM}


BAD_PARAMETER = _problem("a parameter is invalid, unknown or repeated: `invalid_params` names it")
NO_TOKEN = _problem("no bearer token (`WWW-Authenticate` says the scheme)")
UNAVAILABLE = _problem("the database is unreachable: retry after `Retry-After` seconds")
# The agents' routes (docs/kubernetes.md, "Agent identity").
AGENT_REFUSED = _problem(
    "the token is neither the agents' token nor a projected service-account token accepted "
    "by TokenReview, or it is good for another source (`invalid_params` names `source`), "
    "or ingest is disabled"
)
AGENT_UNAVAILABLE = _problem(
    "the database is unreachable, or the API server cannot check a projected token now: "
    "retry after `Retry-After` seconds"
)
# Reading needs a token only when the controller has a read token (`{}`: none needed then).
READ_SECURITY: list[Doc] = [{}, {"readToken": []}, {"runToken": []}]
NO_TARGET = _problem("the target is not configured and has no history")


def _query(name: str, schema: Doc, description: str, *, required: bool = False) -> Doc:
    return {
        "name": name,
        "in": "query",
        "required": required,
        "description": description,
        "schema": schema,
    }


def _name_filter(name: str, description: str, *, required: bool = False) -> Doc:
    schema = {"type": "string", "minLength": 1, "maxLength": NAME_MAX, "pattern": NAME_PATTERN}
    return _query(name, schema, description, required=required)


def _time(name: str, description: str) -> Doc:
    return _query(name, {"type": "string", "format": "date-time"}, description)


PARAMETERS: Doc = {
    "target": _name_filter("target", "only this target"),
    "source": _name_filter("source", "only this source"),
    "since": _time("since", "from this moment on (RFC 3339 with a timezone)"),
    "until": _time("until", "before this moment (RFC 3339 with a timezone); after `since`"),
    "limit": _query(
        "limit",
        {"type": "integer", "minimum": 1, "maximum": LIMIT_MAX, "default": LIMIT_DEFAULT},
        "items per page",
    ),
    "cursor": _query(
        "cursor",
        {"type": "string", "minLength": 1, "maxLength": 1024, "pattern": NAME_PATTERN},
        "`next_cursor` of the previous page (same filters); 400 for any other",
    ),
    "step": _query("step", _ref("Step"), "only this step of the checklist"),
    "targetPath": {
        "name": "target",
        "in": "path",
        "required": True,
        "description": "a target's name",
        "schema": {"type": "string", "minLength": 1},
    },
}


def _param(name: str) -> Doc:
    return {"$ref": f"#/components/parameters/{name}"}


def _operation(
    operation_id: str,
    summary: str,
    ok: Doc,
    *,
    parameters: list[Doc] | None = None,
    problems: dict[str, Doc] | None = None,
    security: list[Doc] | None = None,
    database: bool = True,
) -> Doc:
    """An operation; `security` defaults to reading's, `database`: it answers 503 while the
    database is away."""
    responses: Doc = {"200": ok}
    if parameters:
        responses["400"] = BAD_PARAMETER
    responses["401"] = NO_TOKEN
    responses["403"] = _problem("the token does not give this right, or the right is closed")
    responses.update(problems or {})
    responses["500"] = _problem("the controller failed; its log says why")
    if database:
        responses["503"] = UNAVAILABLE
    operation: Doc = {
        "operationId": operation_id,
        "summary": summary,
        "parameters": parameters or [],
        "responses": responses,
        "security": security if security is not None else READ_SECURITY,
    }
    return operation


def _paths() -> Doc:
    lists = [_param(p) for p in ("since", "until", "limit", "cursor")]
    return {
        "/healthz": {
            "get": {
                "operationId": "healthz",
                "summary": "the process is alive",
                "responses": {"200": _ok("alive", _ref("Health"))},
            }
        },
        "/readyz": {
            "get": {
                "operationId": "readyz",
                "summary": "the database schema is checked and answers, and rounds are scheduled",
                "responses": {
                    "200": _ok("ready", _ref("Readiness")),
                    "503": _ok(
                        "not ready: `checks` says which part, `reasons` why", _ref("Readiness")
                    ),
                },
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus metrics (the read token, when one is configured)",
                "security": READ_SECURITY,
                "parameters": [
                    _query(
                        "name[]",
                        {"type": "array", "items": {"type": "string", "pattern": METRIC_PATTERN}},
                        "only these samples (e.g. `egresswatch_rounds_shed_total`); none: all",
                    )
                ],
                "responses": {
                    "200": {
                        "description": "the Prometheus text exposition format",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    "400": _problem("a `name[]` that is not a metric name"),
                    "401": NO_TOKEN,
                    "403": _problem("the token is neither the read token nor the run token"),
                },
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "this document",
                "responses": {"200": _ok("the OpenAPI 3.1 document", {"type": "object"})},
            }
        },
        "/api/v1/status": {
            "get": _operation(
                "status",
                "per configured target and per source: healthy or not, first failing step, "
                "since when",
                _ok("the status of every configured target", _ref("StatusReport")),
                problems={"400": BAD_PARAMETER},
            )
        },
        "/api/v1/incidents": {
            "get": _operation(
                "listIncidents",
                "incidents overlapping [since, until), newest first",
                _ok("a page of incidents", _ref("IncidentPage")),
                parameters=[
                    _param("target"),
                    _param("source"),
                    *lists[:2],
                    _query("open", {"type": "boolean"}, "only open (true) or closed (false)"),
                    *lists[2:],
                ],
            )
        },
        "/api/v1/incidents/{id}": {
            "get": _operation(
                "getIncident",
                "one incident",
                _ok("the incident", _ref("Incident")),
                parameters=[
                    {
                        "name": "id",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "minLength": 1},
                    }
                ],
                problems={"404": _problem("no incident has this id")},
            )
        },
        "/api/v1/changes": {
            "get": _operation(
                "listChanges",
                "the per-step change log (changes that started in [since, until)), newest "
                "detected first",
                _ok("a page of changes", _ref("ChangePage")),
                parameters=[_param("target"), _param("source"), _param("step"), *lists],
            )
        },
        "/api/v1/targets/{target}/timeline": {
            "get": _operation(
                "timeline",
                "a target's results over [from, to): raw results, or minute or hour rollups",
                _ok("the points, by time, source and step", _ref("Timeline")),
                parameters=[
                    _param("targetPath"),
                    _time("from", "start (default: `to` minus one hour); before `to`"),
                    _time("to", "end, excluded (default: now)"),
                    _param("step"),
                    _param("source"),
                ],
                problems={"404": NO_TARGET},
            )
        },
        "/api/v1/targets/{target}/diagnosis": {
            "get": _operation(
                "diagnosis",
                "the checklist of a target as it stood at a moment, per source, with the "
                "verdict and the incident then open",
                _ok("the diagnosis", _ref("Diagnosis")),
                parameters=[_param("targetPath"), _time("at", "the moment (default: now)")],
                problems={"404": NO_TARGET},
            )
        },
        "/api/v1/targets/{target}/run": {
            "post": _operation(
                "runRound",
                "run one round of a configured target now (never of any other host)",
                _ok("the round, step by step", _ref("RoundDocument")),
                parameters=[_param("targetPath")],
                problems={
                    "403": _problem("the token is not the run token, or none is configured"),
                    "404": _problem("the target is not configured"),
                    "409": _problem("a controller that runs no rounds itself (its agents do)"),
                    "429": _problem(
                        "too many on-demand rounds of this target: retry after `Retry-After`"
                    ),
                    "504": _problem("the round did not finish within its timeout"),
                },
                security=[{"runToken": []}],
                database=False,
            )
        },
        "/api/v1/results": {"post": _ingest()},
        "/api/v1/plan": {
            "get": _operation(
                "plan",
                "what an agent should probe: targets with every default filled in, the "
                "upstream resolver and the proxy (never a secret)",
                _ok("the plan", _ref("Plan")),
                parameters=[_name_filter("source", "the asking agent's source", required=True)],
                problems={"403": AGENT_REFUSED, "503": AGENT_UNAVAILABLE},
                security=[{"agentToken": []}],
                database=False,
            )
        },
    }


def _ingest() -> Doc:
    operation = _operation(
        "ingestResults",
        "agent ingest: a batch of rounds, idempotent per batch_id",
        _ok(
            "stored; `duplicate` true (and `stored` 0) when this batch_id was stored before",
            _ref("IngestResult"),
        ),
        problems={
            "400": _problem("the batch is invalid: `invalid_params` names each bad field"),
            "403": AGENT_REFUSED,
            "413": _problem(f"the body is larger than {MAX_BODY_BYTES} bytes"),
            "415": _problem("the body is not application/json"),
            "422": _problem(
                "a round names a target that is neither configured nor stored: "
                "`invalid_params` names it"
            ),
        },
        security=[{"agentToken": []}],
    )
    operation["requestBody"] = {"required": True, "content": _json(_ref("IngestBatch"))}
    operation["responses"]["503"] = AGENT_UNAVAILABLE
    return operation


def openapi_document() -> Doc:
    """The whole document (a new one each call: the caller may change it)."""
    document = {
        "openapi": "3.1.0",
        "jsonSchemaDialect": "https://spec.openapis.org/oas/3.1/dialect/base",
        "info": {
            "title": "egresswatch",
            "version": __version__,
            "summary": "the egress troubleshooting checklist, continuously",
            "description": DESCRIPTION,
        },
        "paths": _paths(),
        "components": {
            "schemas": schemas.components(),
            "parameters": PARAMETERS,
            "securitySchemes": {
                "agentToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "the token agents share with the controller (agent_token_env):"
                    " ingest and the plan",
                },
                "readToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "the read token (read_token_env): GET /api/v1/* but the plan, "
                    "and /metrics",
                },
                "runToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "the run token (run_token_env): on-demand rounds, and reading",
                },
            },
        },
    }
    return copy.deepcopy(document)
