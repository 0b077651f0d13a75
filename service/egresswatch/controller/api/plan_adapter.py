"""The plan as the controller serves and documents it: pydantic over plan.py's dataclasses.

The plan's classes are plain frozen dataclasses so that an agent reads them without pydantic
(egresswatch/wire.py); the controller, which has pydantic for its config anyway, writes them
with a `TypeAdapter`, whose JSON and schema read the same declarations (bounds, patterns and
descriptions in the fields' metadata, `__pydantic_config__`).
"""

from __future__ import annotations

from typing import Any

from pydantic import TypeAdapter

from egresswatch.plan import Plan

__all__ = ["PlanAdapter"]


class PlanAdapter:
    """Builds pydantic's validator and serializer for the plan once, at construction: keep one."""

    def __init__(self) -> None:
        self._adapter: TypeAdapter[Plan] = TypeAdapter(Plan)

    def to_json(self, plan: Plan) -> dict[str, Any]:
        """The plan's JSON object as served at `GET /api/v1/plan` (times with a `Z`)."""
        found: dict[str, Any] = self._adapter.dump_python(plan, mode="json")
        return found

    def schemas(self, ref_template: str) -> dict[str, Any]:
        """The JSON Schemas of the plan and the types it holds, as served, by name."""
        _, top = TypeAdapter.json_schemas(
            [("plan", "serialization", self._adapter)], ref_template=ref_template
        )
        found: dict[str, Any] = top["$defs"]
        return found
