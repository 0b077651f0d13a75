"""The JSON Schemas (2020-12, as OpenAPI 3.1 uses) of the API's documents: documents.py,
ingest/batch_body.py and diagnosis_document.py build exactly these.

Vocabularies are generated from model.py's StrEnums; limits come from the modules that
enforce them; the plan's schemas are generated from its model (plan.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any

from egresswatch.controller.api.plan_adapter import PlanAdapter
from egresswatch.controller.api.query import NAME_MAX, NAME_PATTERN
from egresswatch.controller.ingest.batch_body import (
    BATCH_ID_MAX,
    DETAIL_MAX,
    DURATION_MS_MAX,
    TEXT_PATTERN,
)
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
from egresswatch.steps import evidence_schemas
from egresswatch.storage import Resolution

Schema = dict[str, Any]

STRING: Schema = {"type": "string"}
TIME: Schema = {"type": "string", "format": "date-time"}
BOOLEAN: Schema = {"type": "boolean"}
COUNT: Schema = {"type": "integer", "minimum": 0}
SECONDS: Schema = {"type": "number", "minimum": 0}
OBJECT: Schema = {"type": "object"}
NAME: Schema = {"type": "string", "minLength": 1, "maxLength": NAME_MAX, "pattern": NAME_PATTERN}


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def nullable(schema: Schema) -> Schema:
    """`schema` or null (3.1 has no `nullable`)."""
    if "type" in schema and "$ref" not in schema and isinstance(schema["type"], str):
        return {**schema, "type": [schema["type"], "null"]}
    return {"anyOf": [schema, {"type": "null"}]}


def array(items: Schema, **limits: int) -> Schema:
    return {"type": "array", "items": items, **limits}


def vocabulary(members: type[StrEnum] | tuple[StrEnum, ...], description: str) -> Schema:
    return {"type": "string", "enum": [m.value for m in members], "description": description}


def obj(
    properties: dict[str, Schema],
    *,
    optional: tuple[str, ...] = (),
    closed: bool = True,
    description: str | None = None,
) -> Schema:
    """An object with these properties, all required but `optional`; no others if `closed`."""
    schema: Schema = {
        "type": "object",
        "properties": properties,
        "required": [name for name in properties if name not in optional],
    }
    if closed:
        schema["additionalProperties"] = False
    if description:
        schema["description"] = description
    return schema


def _vocabularies() -> dict[str, Schema]:
    return {
        "Step": vocabulary(Step, "a step of the checklist, in checklist order"),
        "ProbeStep": vocabulary(PROBE_STEPS, "a step an agent runs (the others are derived)"),
        "Status": vocabulary(Status, "a step result's status (`error`: the probe broke)"),
        "Reason": vocabulary(Reason, "why a step did not succeed"),
        "Suspect": vocabulary(Suspect, "the diagnosed cause"),
        "Role": vocabulary(Role, "a target's role"),
        "SourceKind": vocabulary(SourceKind, "where a source's probes run"),
        "StepState": vocabulary(StepState, "a step's state after hysteresis"),
        "Resolution": vocabulary(Resolution, "raw results, or minute or hour rollups"),
    }


def _results() -> dict[str, Schema]:
    step_result = obj(
        {
            "step": ref("Step"),
            "status": ref("Status"),
            "reason": nullable(ref("Reason")),
            "duration_ms": {"type": "number", "minimum": 0},
            "detail": STRING,
            "evidence": ref("Evidence"),
        }
    )
    return {
        **evidence_schemas(),
        "StepResult": step_result,
        "Round": obj(
            {
                "target": STRING,
                "source": STRING,
                "started_at": TIME,
                "first_failing_step": nullable(ref("Step")),
                "steps": array(ref("StepResult")),
            },
            description="a stored round",
        ),
        "RoundDocument": obj(
            {
                "target": STRING,
                "url": STRING,
                "source": STRING,
                "started_at": TIME,
                "ok": BOOLEAN,
                "first_failing_step": nullable(ref("Step")),
                "first_failing_reason": nullable(ref("Reason")),
                "next_command": nullable(STRING),
                "steps": array(ref("StepResult")),
            },
            description="a round as `egresswatch check --json` prints it",
        ),
    }


def _history() -> dict[str, Schema]:
    return {
        "Change": obj(
            {
                "source": STRING,
                "target": STRING,
                "step": {**nullable(ref("Step")), "description": "null: the whole source"},
                "previous": ref("StepState"),
                "current": ref("StepState"),
                "started_at": {**TIME, "description": "when the flip really began"},
                "detected_at": {**TIME, "description": "when hysteresis confirmed it"},
                "reason": nullable(ref("Reason")),
                "detail": STRING,
            }
        ),
        "ChangePage": obj({"items": array(ref("Change")), "next_cursor": nullable(STRING)}),
        "Incident": obj(
            {
                "id": STRING,
                "target": STRING,
                "started_at": {**TIME, "description": "the first failed probe"},
                "detected_at": TIME,
                "ended_at": nullable(TIME),
                "open": BOOLEAN,
                "sources": array(STRING),
                "first_failing_step": nullable(ref("Step")),
                "suspect": ref("Suspect"),
                "evidence": array(STRING),
                "next_command": nullable(STRING),
                "history": array(OBJECT),
                "cluster_changes": {
                    **array(ref("ClusterChange")),
                    "description": "Kubernetes changes seen before the first failed round that "
                    "concern its sources (attached when it opened)",
                },
            }
        ),
        "ClusterChange": obj(
            {
                "seen_at": TIME,
                "kind": {**STRING, "description": "NetworkPolicy, Node, Pod (CoreDNS), ConfigMap"},
                "namespace": nullable(STRING),
                "name": STRING,
                "action": {**STRING, "description": "created, changed, deleted, restarted, ..."},
                "details": array(STRING),
                "summary": STRING,
            }
        ),
        "IncidentPage": obj({"items": array(ref("Incident")), "next_cursor": nullable(STRING)}),
    }


def _views() -> dict[str, Schema]:
    step_state = obj(
        {
            "step": nullable(ref("Step")),
            "state": ref("StepState"),
            "reason": nullable(ref("Reason")),
            "since": TIME,
            "updated_at": TIME,
        }
    )
    return {
        "StepStatus": step_state,
        "SourceStatus": obj(
            {
                "source": STRING,
                "healthy": {**BOOLEAN, "description": "no step is failing"},
                "state": ref("StepState"),
                "first_failing_step": nullable(ref("Step")),
                "reason": nullable(ref("Reason")),
                "since": {**nullable(TIME), "description": "when the current state began"},
                "steps": array(ref("StepStatus")),
            }
        ),
        "TargetStatus": obj(
            {
                "target": STRING,
                "role": ref("Role"),
                "url": STRING,
                "healthy": BOOLEAN,
                "sources": array(ref("SourceStatus")),
            }
        ),
        "DesignatedSource": obj(
            {
                "source": STRING,
                "kind": ref("SourceKind"),
                "state": {
                    "type": "string",
                    "enum": ["reporting", "unknown", "missing"],
                    "description": "missing: never reported; unknown: silent (stale); "
                    "neither is a connectivity failure",
                },
                "node": STRING,
                "workload": nullable(obj({"namespace": STRING, "kind": STRING, "name": STRING})),
                "pods": array(obj({"name": STRING, "ip": nullable(STRING)})),
            }
        ),
        "Designated": obj(
            {
                "synced": {**BOOLEAN, "description": "every watch has listed once"},
                "sources": array(ref("DesignatedSource")),
                "retired": array(STRING),
            },
            description="the sources the Kubernetes cluster designates (kubernetes.enabled)",
        ),
        "StatusReport": obj(
            {
                "generated_at": TIME,
                "healthy": BOOLEAN,
                "designated": ref("Designated"),
                "targets": array(ref("TargetStatus")),
            },
            optional=("designated",),
        ),
        "TimelinePoint": obj(
            {
                "time": TIME,
                "source": STRING,
                "step": ref("Step"),
                "count": {**COUNT, "description": "results that ran (ok or fail)"},
                "failures": COUNT,
                "skipped": COUNT,
                "errors": COUNT,
                "p50_s": nullable(SECONDS),
                "p95_s": nullable(SECONDS),
                "p99_s": nullable(SECONDS),
                "max_s": nullable(SECONDS),
                "status": {**nullable(ref("Status")), "description": "raw points only"},
                "reason": nullable(ref("Reason")),
            }
        ),
        "Timeline": obj(
            {
                "target": STRING,
                "from": TIME,
                "to": TIME,
                "resolution": ref("Resolution"),
                "points": array(ref("TimelinePoint")),
            }
        ),
        "Verdict": obj(
            {
                "suspect": ref("Suspect"),
                "first_failing_step": nullable(ref("Step")),
                "evidence": array(STRING),
                "next_command": nullable(STRING),
                "facts": OBJECT,
            }
        ),
        "SourceDiagnosis": obj(
            {
                "source": STRING,
                "source_kind": nullable(ref("SourceKind")),
                "first_failing_step": nullable(ref("Step")),
                "round": ref("Round"),
                "verdict": {
                    **nullable(ref("Verdict")),
                    "description": "null for a target only stored, whose URL is not known",
                },
            }
        ),
        "Diagnosis": obj(
            {
                "target": STRING,
                "role": ref("Role"),
                "url": STRING,
                "at": TIME,
                "incident": nullable(ref("Incident")),
                "sources": array(ref("SourceDiagnosis")),
            }
        ),
    }


def _agents() -> dict[str, Schema]:
    ingest_step = obj(
        {
            "step": ref("ProbeStep"),
            "status": ref("Status"),
            "reason": nullable(ref("Reason")),
            "duration_ms": {"type": "number", "minimum": 0, "maximum": DURATION_MS_MAX},
            "detail": {"type": "string", "maxLength": DETAIL_MAX, "pattern": TEXT_PATTERN},
            "evidence": {
                **ref("Evidence"),
                "description": "the step's own evidence type, or NotRun; no NUL in any text",
            },
        },
        optional=("reason", "detail", "evidence"),
    )
    derived = "derived by report.round_document; accepted and ignored"
    ingest_round = obj(
        {
            "target": {**NAME, "description": "a configured (or stored) target"},
            "source": {**NAME, "description": "the batch's source"},
            "started_at": TIME,
            "steps": array(ref("IngestStep"), minItems=1, maxItems=len(PROBE_STEPS)),
            "url": {**nullable(STRING), "description": derived},
            "ok": {**nullable(BOOLEAN), "description": derived},
            "first_failing_step": {**nullable(ref("Step")), "description": derived},
            "first_failing_reason": {**nullable(ref("Reason")), "description": derived},
            "next_command": {**nullable(STRING), "description": derived},
        },
        optional=("url", "ok", "first_failing_step", "first_failing_reason", "next_command"),
        description="a round; each step at most once",
    )
    batch = obj(
        {
            "source": NAME,
            "source_kind": {
                **nullable(ref("SourceKind")),
                "description": "recorded for the source when given (the diagnosis needs it)",
            },
            "source_node": {
                **nullable(NAME),
                "description": "the node the source runs on (a pod's NODE_NAME)",
            },
            "batch_id": {**NAME, "maxLength": BATCH_ID_MAX, "description": "unique per batch"},
            "rounds": array(ref("IngestRound"), minItems=1),
        },
        optional=("source_kind", "source_node"),
    )
    return {
        "IngestStep": ingest_step,
        "IngestRound": ingest_round,
        "IngestBatch": batch,
        "IngestResult": obj({"stored": COUNT, "duplicate": BOOLEAN}),
        # The plan's schemas are its model's (egresswatch/plan.py), so that they cannot drift.
        **served_schemas(PlanAdapter(), vocabularies=_vocabularies()),
    }


def served_schemas(plan: PlanAdapter, *, vocabularies: Mapping[str, Schema]) -> dict[str, Schema]:
    """The plan and the types it holds, as served (`PlanAdapter.to_json`), by name.

    A vocabulary it refers to is the one in `vocabularies` (checked to have the same values),
    and pydantic's generated titles are left out: the names say it.
    """
    schemas: dict[str, Schema] = {}
    for name, schema in plan.schemas("#/components/schemas/{model}").items():
        if name in vocabularies:
            if schema.get("enum") != vocabularies[name]["enum"]:
                raise ValueError(f"the plan uses a {name} that is not the vocabulary's")
            continue
        schemas[name] = _untitled(schema)
    return schemas


def _untitled(schema: Any) -> Any:
    if isinstance(schema, dict):
        return {k: _untitled(v) for k, v in schema.items() if k != "title"}
    if isinstance(schema, list):
        return [_untitled(v) for v in schema]
    return schema


def _service() -> dict[str, Schema]:
    return {
        "Problem": obj(
            {
                "type": STRING,
                "title": STRING,
                "status": {"type": "integer", "minimum": 400, "maximum": 599},
                "detail": STRING,
                "invalid_params": array(obj({"name": STRING, "reason": STRING}), minItems=1),
            },
            optional=("type", "invalid_params"),
            closed=False,
            description="RFC 9457 problem details",
        ),
        "Health": obj({"status": {"type": "string", "enum": ["ok"]}}),
        "Readiness": obj(
            {
                "status": {"type": "string", "enum": ["ready", "not ready"]},
                "checks": {"type": "object", "additionalProperties": BOOLEAN},
                "reasons": {
                    "type": "object",
                    "additionalProperties": {"type": "string"},
                    "description": "why each failing probe fails, e.g. the database",
                },
            },
            optional=("reasons",),
        ),
    }


def components() -> dict[str, Schema]:
    """Every named schema; a name given twice is a bug (the second would hide the first)."""
    parts = (_vocabularies(), _results(), _history(), _views(), _agents(), _service())
    merged: dict[str, Schema] = {}
    for part in parts:
        clash = merged.keys() & part.keys()
        if clash:
            raise ValueError(f"schema names defined twice: {sorted(clash)}")
        merged.update(part)
    return merged
