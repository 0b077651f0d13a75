"""Reading a step's typed evidence in tests, and checking it survives the trip to the API."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from egresswatch.evidence import Evidence
from egresswatch.model import StepResult
from egresswatch.steps import evidence_from_json

E = TypeVar("E", bound=Evidence)


def typed(result: StepResult, kind: type[E]) -> E:
    """`result`'s evidence, which must be a `kind`."""
    assert isinstance(result.evidence, kind), (result.step, result.evidence)
    return result.evidence


def assert_round_trips(result: StepResult) -> None:
    """The evidence is JSON (no NaN), and ingest's strict decoding gives it back unchanged."""
    data = json.loads(json.dumps(result.evidence.to_json(), allow_nan=False))
    assert evidence_from_json(result.step, data) == result.evidence


def written(result: StepResult, kind: type[Evidence]) -> dict[str, Any]:
    """The evidence as the API carries it (after checking its type and that it round-trips),
    for tests about what a probe writes on the wire."""
    typed(result, kind)
    assert_round_trips(result)
    return result.evidence.to_json()
